// Table snapshots: every row the published tables hold, as op "r" records
// of one pseudo-transaction.
//
// The node's initial snapshot and every later kafka_sync.resnapshot() go
// through here alike (publish_resnapshot in resnapshot.cpp): the stream
// publishes them between two decoded transactions, read under a fresh
// snapshot, with an LSN just above the last one published (serve_resnapshot
// in wal_stream.cpp).
//
// A snapshot record is published long after the row was written, so its
// commit time says nothing about the row. Each record therefore carries the
// row's own version in source.row_ts_ms / row_origin: the commit timestamp
// and replication origin of the tuple's xmin, which is what a receiver that
// resolves conflicts by last update compares.
#include "decode/change_encoding.hpp"
#include "decode/relation_info.hpp"
#include "produce/node_worker.hpp"

#include "boundary/pg_boundary.hpp"
#include "common/origin_names.hpp"
#include "common/unix_time.hpp"

extern "C" {
#include "access/commit_ts.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "replication/origin.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
}

namespace kafka_sync {

namespace {

/* Candidate tables; relation_info decides which ones the publication has. */
List *user_tables() {
    List *relids = NIL;
    SPI_connect();
    int rc =
        SPI_execute("SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind = 'r' AND c.relpersistence = 'p' "
                    "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'kafka_sync') "
                    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY c.oid",
                    true, 0);
    if (rc != SPI_OK_SELECT)
        elog(ERROR, "could not list the tables for the snapshot");
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

/*
 * Names the node behind replication origins; the last answer is kept, as
 * rows of one table mostly come from one place.
 */
struct OriginNames {
    const char *local_node;
    MemoryContext context; /* lives as long as the snapshot */
    RepOriginId last_id;
    const char *last_node; /* NULL: not a kafka_sync origin */
    bool have_last;
};

const char *origin_node(OriginNames *names, RepOriginId id) {
    if (id == InvalidRepOriginId)
        return names->local_node; /* written here, not applied from a peer */
    if (names->have_last && names->last_id == id)
        return names->last_node;
    char *roname = nullptr;
    const char *node = nullptr;
    const char *peer = replorigin_by_oid(id, true, &roname) ? peer_of_origin_name(roname) : nullptr;
    if (peer)
        node = MemoryContextStrdup(names->context, peer);
    names->last_id = id;
    names->last_node = node;
    names->have_last = true;
    return node;
}

/*
 * The row's version: commit time and origin of the transaction that wrote
 * this tuple. Unknown (left out of the record) for frozen tuples, rows older
 * than the commit-timestamp history, or with track_commit_timestamp off.
 */
SnapshotRowVersion row_version(HeapTuple tuple, OriginNames *names) {
    SnapshotRowVersion v{false, 0, nullptr};
    TransactionId xmin = HeapTupleHeaderGetXmin(tuple->t_data);
    if (!track_commit_timestamp || !TransactionIdIsNormal(xmin))
        return v;
    TimestampTz ts;
    RepOriginId origin;
    if (!TransactionIdGetCommitTsData(xmin, &ts, &origin))
        return v;
    v.has_ts = true;
    v.ts_ms = timestamptz_to_unix_ms(ts);
    v.origin = origin_node(names, origin);
    return v;
}

} // namespace

uint64 publish_table_snapshot(NodeWorker *w, XLogRecPtr header_lsn, XLogRecPtr confirm_lsn, const char *what) {
    RelationInfoSettings settings;
    settings.node_name = node_worker_node_name(w);
    settings.publication = node_worker_publication(w);
    settings.include_schema = node_worker_schemas(w);
    settings.include_xids = true;
    settings.include_lsn = true;
    settings.include_timestamps = true;

    MemoryContext snapshot_context =
        AllocSetContextCreate(CurrentMemoryContext, "kafka_sync snapshot", ALLOCSET_DEFAULT_SIZES);
    MemoryContext row_context =
        AllocSetContextCreate(snapshot_context, "kafka_sync snapshot row", ALLOCSET_DEFAULT_SIZES);
    RelationInfoCache *relations = relation_info_cache_create(&settings, snapshot_context);
    OriginNames names{settings.node_name, snapshot_context, InvalidRepOriginId, nullptr, false};

    PushActiveSnapshot(GetTransactionSnapshot());
    List *relids = user_tables();
    EncodedRecord *rec = ks_guard([]() { return new EncodedRecord(); });

    ChangeSource source;
    source.commit_ts_ms = unix_ms_now();
    source.xid = 0;
    source.commit_lsn = header_lsn;
    source.snapshot = "true";
    source.txn_seq = 1;
    node_worker_begin_snapshot_txn(w, header_lsn, confirm_lsn, source.commit_ts_ms);

    uint64 nrecords = 0;
    ListCell *lc;
    foreach (lc, relids) {
        Relation rel = table_open(lfirst_oid(lc), AccessShareLock);
        RelationInfo *info = relation_info_get(relations, rel);
        if (info->published && info->pub_insert) {
            uint64 table_rows = 0;
            TupleTableSlot *slot = table_slot_create(rel, nullptr);
            TableScanDesc scan = table_beginscan(rel, GetActiveSnapshot(), 0, nullptr);
            while (table_scan_getnextslot(scan, ForwardScanDirection, slot)) {
                MemoryContext old = MemoryContextSwitchTo(row_context);
                bool should_free;
                HeapTuple tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);
                SnapshotRowVersion version = row_version(tuple, &names);
                encode_row_change(info, rel, 'r', nullptr, tuple, &source, nrecords + 1, rec, &version);
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
            ereport(LOG, (errmsg("kafka_sync node %s: %s of %s: " UINT64_FORMAT " rows", settings.node_name, what,
                                 RelationGetRelationName(rel), table_rows)));
        }
        table_close(rel, AccessShareLock);
    }
    node_worker_end_txn(w, nrecords);
    PopActiveSnapshot();
    delete rec;
    MemoryContextDelete(snapshot_context); /* with the relation cache */
    return nrecords;
}

} // namespace kafka_sync
