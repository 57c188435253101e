// C halves of the node SQL API (the SQL halves are in kafka_sync--*.sql):
// server requirement checks, kafka_config validation, worker coordination
// with the launcher, and the worker status behind kafka_sync.node_status.
#include "common/settings.hpp"
#include "common/shared_state.hpp"
#include "decode/relation_info.hpp"
#include "produce/kafka_config.hpp"
#include "produce/launcher.hpp"
#include "produce/node_worker.hpp"

#include "boundary/pg_boundary.hpp"

extern "C" {
#include "access/commit_ts.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/varlena.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(kafka_sync_check_requirements);
PG_FUNCTION_INFO_V1(kafka_sync_validate_kafka_config);
PG_FUNCTION_INFO_V1(kafka_sync_check_publication);
PG_FUNCTION_INFO_V1(kafka_sync_node_created);
PG_FUNCTION_INFO_V1(kafka_sync_stop_node_worker);
PG_FUNCTION_INFO_V1(kafka_sync_worker_status);
}

namespace {

/* Stopping the worker for drop_node() can take this long. */
constexpr int kStopTimeoutMs = 30000;

bool xact_callback_registered = false;
bool wake_at_commit = false;
bool stopping_worker = false;

void at_transaction_end(XactEvent event, void *) {
    if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT && event != XACT_EVENT_PARALLEL_COMMIT &&
        event != XACT_EVENT_PARALLEL_ABORT)
        return;
    const bool committed = event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT;
    if (stopping_worker) {
        if (committed) {
            node_slot_release(MyDatabaseId);
        } else {
            NodeSlot *slot = node_slot_for(MyDatabaseId, false);
            if (slot) {
                SpinLockAcquire(&slot->mutex);
                slot->stop_requested = false;
                SpinLockRelease(&slot->mutex);
            }
        }
        wake_at_commit = true; /* aborted: bring the worker back */
    }
    if (wake_at_commit)
        wake_launcher(committed);
    wake_at_commit = false;
    stopping_worker = false;
}

void ensure_xact_callback() {
    if (!xact_callback_registered) {
        RegisterXactCallback(at_transaction_end, nullptr);
        xact_callback_registered = true;
    }
}

} // namespace

extern "C" {

static bool list_member_name(List *names, const char *wanted) {
    ListCell *lc;
    foreach (lc, names)
        if (strcmp(static_cast<const char *>(lfirst(lc)), wanted) == 0)
            return true;
    return false;
}

Datum kafka_sync_check_requirements(PG_FUNCTION_ARGS) {
    List *approved_list = NIL;
    if (!kafka_sync_preloaded)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("kafka_sync is not loaded through shared_preload_libraries"),
                        errdetail("The producer worker of a node can only run when the library is preloaded."),
                        errhint("Add kafka_sync to shared_preload_libraries in postgresql.conf and restart the "
                                "server.")));
    if (wal_level < WAL_LEVEL_LOGICAL)
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg("kafka_sync needs wal_level = logical"),
                 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
    /*
     * Debian's PostgreSQL 15.20 and later only let approved libraries act as
     * output plugins; without it the worker could never decode.
     */
    const char *approved = GetConfigOption("output_plugin_libraries", true, false);
    if (approved && !SplitIdentifierString(pstrdup(approved), ',', &approved_list))
        approved_list = NIL;
    if (approved && !list_member_name(approved_list, "kafka_sync"))
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("kafka_sync is not an approved output plugin library"),
                        errhint("Add kafka_sync to output_plugin_libraries in postgresql.conf (currently \"%s\") and "
                                "reload the server configuration.",
                                approved)));
    if (!track_commit_timestamp)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("kafka_sync needs track_commit_timestamp = on"),
                        errdetail("Conflict resolution compares the commit times of rows on different nodes."),
                        errhint("Set track_commit_timestamp = on in postgresql.conf and restart the server.")));
    PG_RETURN_VOID();
}

/* (keys text[], vals text[]): kafka_config flattened by the SQL caller. */
Datum kafka_sync_validate_kafka_config(PG_FUNCTION_ARGS) {
    ArrayType *keys = PG_GETARG_ARRAYTYPE_P(0);
    ArrayType *vals = PG_GETARG_ARRAYTYPE_P(1);
    Datum *kd, *vd;
    bool *kn, *vn;
    int nk, nv;
    deconstruct_array(keys, TEXTOID, -1, false, TYPALIGN_INT, &kd, &kn, &nk);
    deconstruct_array(vals, TEXTOID, -1, false, TYPALIGN_INT, &vd, &vn, &nv);
    if (nk != nv)
        elog(ERROR, "kafka_config keys and values do not match");
    auto **k = static_cast<char **>(palloc(sizeof(char *) * Max(nk, 1)));
    auto **v = static_cast<char **>(palloc(sizeof(char *) * Max(nk, 1)));
    for (int i = 0; i < nk; i++) {
        k[i] = kn[i] ? pstrdup("") : TextDatumGetCString(kd[i]);
        v[i] = vn[i] ? pstrdup("") : TextDatumGetCString(vd[i]);
    }
    kafka_sync::ks_guard([&]() {
        kafka_sync::ConfigPairs pairs;
        for (int i = 0; i < nk; i++)
            pairs.emplace_back(k[i], v[i]);
        kafka_sync::NodeKafkaSettings settings;
        std::string e, h;
        if (!kafka_sync::parse_node_kafka_config(
                pairs, settings, e, h,
                kafka_sync::allowed_kafka_properties ? kafka_sync::allowed_kafka_properties : ""))
            throw kafka_sync::Error(ERRCODE_INVALID_PARAMETER_VALUE, "invalid kafka_config: " + e, std::string(), h);
    });
    PG_RETURN_VOID();
}

Datum kafka_sync_check_publication(PG_FUNCTION_ARGS) {
    relation_info_check_publication(NameStr(*PG_GETARG_NAME(0)));
    PG_RETURN_VOID();
}

/* Called by create_node(): start the worker as soon as the row is committed. */
Datum kafka_sync_node_created(PG_FUNCTION_ARGS) {
    ensure_xact_callback();
    wake_at_commit = true;
    PG_RETURN_VOID();
}

/*
 * Called by drop_node() before it drops the slot, and by pause_node(): stop
 * this database's worker and keep the launcher from starting it again until
 * the transaction ends (committed: the node is gone or paused; aborted: the
 * worker comes back).
 */
Datum kafka_sync_stop_node_worker(PG_FUNCTION_ARGS) {
    const bool for_drop = PG_GETARG_BOOL(0);
    /* the stop is undone at the end of the top transaction only */
    if (IsSubTransaction())
        ereport(ERROR,
                (errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
                 errmsg("kafka_sync.%s() cannot run inside a subtransaction", for_drop ? "drop_node" : "pause_node")));
    if (for_drop && IsTransactionBlock())
        ereport(ERROR, (errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
                        errmsg("kafka_sync.drop_node() cannot run inside a transaction block"),
                        errdetail("Dropping the replication slot cannot be rolled back.")));
    ensure_xact_callback();
    NodeSlot *slot = node_slot_for(MyDatabaseId, true);
    if (!slot)
        PG_RETURN_VOID();
    stopping_worker = true;
    SpinLockAcquire(&slot->mutex);
    slot->stop_requested = true;
    SpinLockRelease(&slot->mutex);

    TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), kStopTimeoutMs);
    for (;;) {
        SpinLockAcquire(&slot->mutex);
        pid_t pid = slot->worker_pid;
        SpinLockRelease(&slot->mutex);
        if (pid == 0)
            break;
        if (GetCurrentTimestamp() > deadline)
            ereport(ERROR, (errcode(ERRCODE_LOCK_NOT_AVAILABLE),
                            errmsg("the kafka_sync producer worker (PID %d) did not stop", (int)pid),
                            errhint("Try again, or stop it with pg_terminate_backend(%d).", (int)pid)));
        kill(pid, SIGTERM);
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 50, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        CHECK_FOR_INTERRUPTS();
    }
    PG_RETURN_VOID();
}

/* OUT state text, last_error text, records_produced bigint, records_acknowledged bigint,
 *     last_ack_time timestamptz, worker_pid int */
Datum kafka_sync_worker_status(PG_FUNCTION_ARGS) {
    TupleDesc tupdesc;
    if (get_call_result_type(fcinfo, nullptr, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    Datum values[6];
    bool nulls[6] = {false, false, false, false, false, false};
    NodeSlot *slot = node_slot_for(MyDatabaseId, false);
    if (!slot) {
        values[0] = CStringGetTextDatum("stopped");
        for (int i = 1; i < 6; i++)
            nulls[i] = true;
    } else {
        SpinLockAcquire(&slot->mutex);
        NodeWorkerState state = slot->state;
        char error[KS_ERROR_LEN];
        strlcpy(error, slot->last_error, sizeof(error));
        uint64 produced = slot->records_produced;
        uint64 acked = slot->records_acknowledged;
        TimestampTz last_ack = slot->last_ack_time;
        pid_t pid = slot->worker_pid;
        SpinLockRelease(&slot->mutex);
        values[0] = CStringGetTextDatum(node_state_name(state));
        values[1] = CStringGetTextDatum(error);
        nulls[1] = error[0] == '\0';
        values[2] = Int64GetDatum((int64)produced);
        values[3] = Int64GetDatum((int64)acked);
        values[4] = TimestampTzGetDatum(last_ack);
        nulls[4] = last_ack == 0;
        values[5] = Int32GetDatum((int32)pid);
        nulls[5] = pid == 0;
    }
    PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
}
