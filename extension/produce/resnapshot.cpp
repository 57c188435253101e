// kafka_sync.resnapshot(): publish every published row again, on request,
// while the node keeps streaming.
//
// The request is the node's row in kafka_sync.resnapshot_request. It is
// durable: a worker that stops (pause, crash, restart) before Kafka
// acknowledged every record of the snapshot finds it still pending and
// publishes the snapshot again; only then is completed_at set. The SQL
// function wakes the worker when its transaction commits; the worker also
// looks once a second. When, and under which lsn header, the snapshot goes
// out is the stream's decision (serve_resnapshot in wal_stream.cpp); this
// file holds the SQL-facing half and the transactions around the snapshot.
#include "produce/node_worker.hpp"

#include "common/shared_state.hpp"

extern "C" {
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(kafka_sync_wake_producer);
}

namespace kafka_sync {

namespace {

bool xact_callback_registered = false;
bool wake_at_commit = false;

/* Sets the latch of this database's producer worker, if it runs. */
void wake_worker() {
    NodeSlot *slot = node_slot_for(MyDatabaseId, false);
    if (!slot)
        return;
    SpinLockAcquire(&slot->mutex);
    pid_t pid = slot->worker_pid;
    slot->resnapshot_wake = pid != 0;
    SpinLockRelease(&slot->mutex);
    if (pid == 0)
        return;
    PGPROC *proc = BackendPidGetProc(pid);
    if (proc)
        SetLatch(&proc->procLatch);
}

/* The worker reads the request in its own transaction: wake it once ours is visible. */
void at_transaction_end(XactEvent event, void *) {
    if (event == XACT_EVENT_COMMIT && wake_at_commit)
        wake_worker();
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
        event == XACT_EVENT_PARALLEL_ABORT)
        wake_at_commit = false;
}

void begin_worker_transaction() {
    SetCurrentStatementStartTimestamp();
    StartTransactionCommand();
    PushActiveSnapshot(GetTransactionSnapshot());
    SPI_connect();
}

void end_worker_transaction() {
    SPI_finish();
    PopActiveSnapshot();
    CommitTransactionCommand();
}

/*
 * A transaction the stream has already handed to the producer has its commit
 * record flushed, but its backend may not have left the proc array yet; a
 * snapshot taken in that moment would not see it, and the resnapshot (whose
 * lsn header is above that transaction's) would carry the rows as they were
 * before it. Waiting for its xid lock closes that gap; it is only ever a
 * moment (or a synchronous standby's acknowledgement) long.
 */
void wait_until_visible(const TransactionId *xids, uint32 nxids) {
    for (uint32 i = 0; i < nxids; i++) {
        if (TransactionIdIsInProgress(xids[i]))
            XactLockTableWait(xids[i], nullptr, nullptr, XLTW_None);
        CHECK_FOR_INTERRUPTS();
    }
}

/*
 * A process that decodes WAL is flagged PROC_IN_LOGICAL_DECODING, and other
 * backends then ignore its xmin when they decide what dead row versions may
 * be pruned. The snapshot of a resnapshot must hold them back like any
 * reader's, or a row updated meanwhile can lose the version this snapshot
 * sees and be missing from it: the flag is off while the snapshot is taken
 * and read.
 */
void set_decoding_flag(bool on) {
    LWLockAcquire(ProcArrayLock, LW_EXCLUSIVE);
    if (on)
        MyProc->statusFlags |= PROC_IN_LOGICAL_DECODING;
    else
        MyProc->statusFlags &= ~PROC_IN_LOGICAL_DECODING;
    ProcGlobal->statusFlags[MyProc->pgxactoff] = MyProc->statusFlags;
    LWLockRelease(ProcArrayLock);
}

} // namespace

TimestampTz resnapshot_requested(bool *first_initial) {
    TimestampTz requested_at = 0;
    *first_initial = false;
    begin_worker_transaction();
    int rc = SPI_execute("SELECT r.requested_at, r.started_at IS NULL AND n.snapshot AND NOT n.snapshot_done "
                         "FROM kafka_sync.resnapshot_request r JOIN kafka_sync.node n USING (node_name) "
                         "WHERE r.completed_at IS NULL",
                         true, 1);
    if (rc != SPI_OK_SELECT)
        elog(ERROR, "could not read kafka_sync.resnapshot_request");
    if (SPI_processed == 1) {
        bool isnull;
        Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
        if (!isnull)
            requested_at = DatumGetTimestampTz(d);
        d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
        *first_initial = !isnull && DatumGetBool(d);
    }
    end_worker_transaction();
    return requested_at;
}

void resnapshot_mark_started(TimestampTz requested_at) {
    Oid types[1] = {TIMESTAMPTZOID};
    Datum values[1] = {TimestampTzGetDatum(requested_at)};
    begin_worker_transaction();
    int rc =
        SPI_execute_with_args("UPDATE kafka_sync.resnapshot_request SET started_at = now() WHERE requested_at = $1", 1,
                              types, values, nullptr, false, 0);
    if (rc != SPI_OK_UPDATE)
        elog(ERROR, "could not record the start of a resnapshot");
    end_worker_transaction();
}

uint64 publish_resnapshot(NodeWorker *w, XLogRecPtr header_lsn, XLogRecPtr confirm_lsn, const TransactionId *xids,
                          uint32 nxids) {
    SetCurrentStatementStartTimestamp();
    StartTransactionCommand();
    wait_until_visible(xids, nxids);
    CommitTransactionCommand();

    /* one snapshot for every table: set before the transaction takes its first */
    const bool decoding = (MyProc->statusFlags & PROC_IN_LOGICAL_DECODING) != 0;
    if (decoding)
        set_decoding_flag(false);
    SetCurrentStatementStartTimestamp();
    StartTransactionCommand();
    XactIsoLevel = XACT_REPEATABLE_READ;
    XactReadOnly = true;
    uint64 nrecords = publish_table_snapshot(w, header_lsn, confirm_lsn, "resnapshot");
    CommitTransactionCommand();
    if (decoding)
        set_decoding_flag(true); /* an error on the way ends the worker, and the flag with it */
    return nrecords;
}

void resnapshot_mark_done(TimestampTz requested_at, XLogRecPtr header_lsn, uint64 nrecords) {
    Oid types[3] = {TIMESTAMPTZOID, PG_LSNOID, INT8OID};
    Datum values[3] = {TimestampTzGetDatum(requested_at), LSNGetDatum(header_lsn), Int64GetDatum((int64)nrecords)};
    begin_worker_transaction();
    /* a newer request (requested_at moved on) stays pending */
    int rc = SPI_execute_with_args("UPDATE kafka_sync.resnapshot_request SET completed_at = now(), snapshot_lsn = $2, "
                                   "records = $3 WHERE requested_at = $1 AND completed_at IS NULL",
                                   3, types, values, nullptr, false, 0);
    if (rc != SPI_OK_UPDATE)
        elog(ERROR, "could not record the end of a resnapshot");
    /* the first one is the node's initial snapshot */
    if (SPI_execute("UPDATE kafka_sync.node SET snapshot_done = true WHERE snapshot AND NOT snapshot_done", false, 0) !=
        SPI_OK_UPDATE)
        elog(ERROR, "could not record the end of the initial snapshot");
    end_worker_transaction();
}

} // namespace kafka_sync

extern "C" {

/* kafka_sync._wake_producer(): called by kafka_sync.resnapshot(). */
Datum kafka_sync_wake_producer(PG_FUNCTION_ARGS) {
    if (!kafka_sync::xact_callback_registered) {
        RegisterXactCallback(kafka_sync::at_transaction_end, nullptr);
        kafka_sync::xact_callback_registered = true;
    }
    kafka_sync::wake_at_commit = true;
    PG_RETURN_VOID();
}
}
