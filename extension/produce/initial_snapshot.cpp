// The initial snapshot: every row a published table holds when the node is
// created, as op "r" records, read under the slot's exported snapshot.
//
// The caller (create_slot in node_worker.cpp) has imported the snapshot at
// which the new slot became consistent, so each row is here exactly when
// its last change is *not* in the stream that follows. All rows form one
// pseudo-transaction whose commit LSN is the consistent point: every streamed
// transaction commits after it, so a consumer ordering by LSN stays right.
#include "decode/change_encoding.hpp"
#include "decode/relation_info.hpp"
#include "produce/node_worker.hpp"

#include "boundary/pg_boundary.hpp"
#include "common/unix_time.hpp"

extern "C" {
#include "access/table.h"
#include "access/tableam.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
}

namespace {

/* Candidate tables; relation_info decides which ones the publication has. */
List *user_tables() {
    List *relids = NIL;
    SPI_connect();
    int rc = SPI_execute("SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
                         "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'kafka_sync') "
                         "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY c.oid",
                         true, 0);
    if (rc != SPI_OK_SELECT)
        elog(ERROR, "could not list the tables for the initial snapshot");
    for (uint64 i = 0; i < SPI_processed; i++) {
        bool isnull;
        Datum d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
        MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
        relids = lappend_oid(relids, DatumGetObjectId(d));
        MemoryContextSwitchTo(old);
    }
    SPI_finish();
    return relids;
}

} // namespace

void publish_initial_snapshot(NodeWorker *w, XLogRecPtr consistent_lsn) {
    RelationInfoSettings settings;
    settings.node_name = node_worker_node_name(w);
    settings.publication = node_worker_publication(w);
    settings.include_schema = node_worker_schemas(w);
    settings.include_xids = true;
    settings.include_lsn = true;
    settings.include_timestamps = true;
    relation_info_begin_session(&settings);

    PushActiveSnapshot(GetTransactionSnapshot());
    List *relids = user_tables();
    EncodedRecord *rec = kafka_sync::ks_guard([]() { return new EncodedRecord(); });
    MemoryContext row_context = AllocSetContextCreate(CurrentMemoryContext, "kafka_sync snapshot row", ALLOCSET_DEFAULT_SIZES);

    ChangeSource source;
    source.commit_ts_ms = unix_ms_now();
    source.xid = 0;
    source.commit_lsn = consistent_lsn;
    source.snapshot = "true";
    source.txn_seq = 1;
    node_worker_begin_txn(w, consistent_lsn, 0, source.commit_ts_ms);

    uint64 nrecords = 0;
    ListCell *lc;
    foreach (lc, relids) {
        Relation rel = table_open(lfirst_oid(lc), AccessShareLock);
        RelationInfo *info = relation_info_get(rel);
        if (info->published && info->pub_insert) {
            uint64 table_rows = 0;
            TupleTableSlot *slot = table_slot_create(rel, nullptr);
            TableScanDesc scan = table_beginscan(rel, GetActiveSnapshot(), 0, nullptr);
            while (table_scan_getnextslot(scan, ForwardScanDirection, slot)) {
                MemoryContext old = MemoryContextSwitchTo(row_context);
                bool should_free;
                HeapTuple tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);
                encode_row_change(info, rel, 'r', nullptr, tuple, &source, nrecords + 1, rec);
                node_worker_add_record(w, rec->key.data(), rec->key.size(), rec->has_key, rec->value.data(),
                                       rec->value.size(), true);
                nrecords++;
                table_rows++;
                MemoryContextSwitchTo(old);
                MemoryContextReset(row_context);
                CHECK_FOR_INTERRUPTS();
            }
            table_endscan(scan);
            ExecDropSingleTupleTableSlot(slot);
            ereport(LOG, (errmsg("kafka_sync node %s: initial snapshot of %s: " UINT64_FORMAT " rows",
                                 settings.node_name, RelationGetRelationName(rel), table_rows)));
        }
        table_close(rel, AccessShareLock);
    }
    node_worker_end_txn(w, nrecords);
    PopActiveSnapshot();
    MemoryContextDelete(row_context);
    delete rec;
    relation_info_reset();
}
