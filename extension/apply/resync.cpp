// Resynchronising a subscription from its peer's snapshot after a gap in the
// peer's topic (README, Troubleshooting). The sidecar finds the first
// complete snapshot after the gap and calls kafka_sync._begin_resync(); the
// snapshot's rows then apply as any snapshot rows do (by version), and their
// keys are noted in kafka_sync.resync_keys, in the local transactions that
// apply them. With the snapshot's last record, the rows the peer wrote last
// whose key the snapshot did not have (the peer deleted them while its
// records were missing) are deleted, under the peer's replication origin,
// in the same local transaction that completes the snapshot.
#include "apply/resync.hpp"

#include "apply/conflicts.hpp"
#include "apply/run_as_owner.hpp"

extern "C" {
#include "access/relation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(kafka_sync_row_key);
}

void resync_note_key(const char *sub_name, Oid relid, bytea *key) {
    static SPIPlanPtr plan = nullptr;
    if (!plan) {
        Oid types[3] = {TEXTOID, OIDOID, BYTEAOID};
        plan = keep_plan("INSERT INTO kafka_sync.resync_keys (sub_name, relid, key) VALUES ($1, $2, $3) "
                         "ON CONFLICT DO NOTHING",
                         3, types);
    }
    Datum args[3] = {CStringGetTextDatum(sub_name), ObjectIdGetDatum(relid), PointerGetDatum(key)};
    if (SPI_execute_plan(plan, args, nullptr, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "kafka_sync could not note a key of the snapshot subscription %s resynchronises from", sub_name);
}

void resync_mark_incomplete(const char *sub_name) {
    Oid types[1] = {TEXTOID};
    Datum args[1] = {CStringGetTextDatum(sub_name)};
    if (SPI_execute_with_args("UPDATE kafka_sync.subscription SET resync_incomplete = true WHERE sub_name = $1", 1,
                              types, args, nullptr, false, 0) != SPI_OK_UPDATE)
        elog(ERROR, "kafka_sync could not record an incomplete resynchronisation");
}

uint64 resync_finish(const char *sub_name, const char *peer, XLogRecPtr snapshot_lsn) {
    /*
     * The tables the peer's rows can be in: those of the snapshot, and this
     * node's published ones (a table the peer emptied has no row in the
     * snapshot). Only tables with a key: without one, no row can be told
     * from another.
     */
    Oid types[2] = {TEXTOID, TEXTOID};
    Datum args[2] = {CStringGetTextDatum(sub_name), CStringGetTextDatum(peer)};
    int rc = SPI_execute_with_args("SELECT resync_incomplete FROM kafka_sync.subscription WHERE sub_name = $1", 1,
                                   types, args, nullptr, true, 1);
    if (rc != SPI_OK_SELECT || SPI_processed != 1)
        elog(ERROR, "kafka_sync could not read subscription %s", sub_name);
    bool isnull;
    const bool incomplete = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    if (incomplete) {
        ereport(WARNING,
                (errmsg("kafka_sync subscription %s: rows of the snapshot of node %s were not applied (see "
                        "kafka_sync.dead_letters): rows the peer deleted are not deleted here",
                        sub_name, peer),
                 errhint("Fix the cause, then run SELECT kafka_sync.resnapshot() on node %s once more.", peer)));
    }
    /*
     * The tables the peer's rows can be in: those the subscription may write
     * (its own list, or this node's publication, which also holds tables the
     * peer emptied) and those of the snapshot; only tables with a key. A
     * partitioned table is scanned from its root when the keys were noted
     * there (records named the root), a partition on its own otherwise; a
     * tree whose keys were noted on the other level is left alone.
     */
    rc =
        incomplete
            ? SPI_OK_SELECT
            : SPI_execute_with_args(
                  "WITH scope AS ("
                  "  SELECT k.relid FROM kafka_sync.resync_keys k WHERE k.sub_name = $1"
                  "  UNION SELECT unnest(s.tables::oid[]) FROM kafka_sync.subscription s WHERE s.sub_name = $1"
                  "  UNION SELECT g.relid FROM kafka_sync.subscription s, kafka_sync.node nd,"
                  "        pg_get_publication_tables(nd.publication) g WHERE s.sub_name = $1 AND s.tables IS NULL) "
                  "SELECT r.oid, format('%I.%I', n.nspname, r.relname), r.relkind = 'p', "
                  "       r.relkind = 'p' AND EXISTS (SELECT 1 FROM kafka_sync.resync_keys k, pg_partition_tree(r.oid) "
                  "t"
                  "                                   WHERE k.sub_name = $1 AND k.relid = t.relid AND t.relid <> r.oid)"
                  "       OR r.relispartition AND EXISTS (SELECT 1 FROM kafka_sync.resync_keys k, "
                  "pg_partition_ancestors(r.oid) a"
                  "                                   WHERE k.sub_name = $1 AND k.relid = a.relid AND a.relid <> "
                  "r.oid) "
                  "  FROM scope JOIN pg_class r ON r.oid = scope.relid JOIN pg_namespace n ON n.oid = r.relnamespace "
                  " WHERE r.relkind IN ('r', 'p') "
                  "   AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = r.oid AND (i.indisprimary OR "
                  "i.indisreplident)) "
                  " ORDER BY 2",
                  1, types, args, nullptr, false, 0);
    if (rc != SPI_OK_SELECT)
        elog(ERROR, "kafka_sync could not list the tables to resynchronise");
    const uint64 ntables = incomplete ? 0 : SPI_processed;
    Oid *relids = static_cast<Oid *>(palloc(sizeof(Oid) * (ntables + 1)));
    char **names = static_cast<char **>(palloc(sizeof(char *) * (ntables + 1)));
    bool *partitioned = static_cast<bool *>(palloc(sizeof(bool) * (ntables + 1)));
    bool *mixed = static_cast<bool *>(palloc(sizeof(bool) * (ntables + 1)));
    for (uint64 i = 0; i < ntables; i++) {
        HeapTuple row = SPI_tuptable->vals[i];
        TupleDesc desc = SPI_tuptable->tupdesc;
        relids[i] = DatumGetObjectId(SPI_getbinval(row, desc, 1, &isnull));
        names[i] = SPI_getvalue(row, desc, 2);
        partitioned[i] = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));
        Datum m = SPI_getbinval(row, desc, 4, &isnull);
        mixed[i] = !isnull && DatumGetBool(m);
    }

    uint64 deleted = 0;
    for (uint64 i = 0; i < ntables; i++) {
        if (mixed[i]) {
            ereport(WARNING, (errmsg("kafka_sync subscription %s: %s is not resynchronised: the snapshot of node %s "
                                     "names its rows on another level of its partition tree",
                                     sub_name, names[i], peer),
                              errhint("Publish partitioned tables the same way (publish_via_partition_root) on every "
                                      "node.")));
            continue;
        }
        /* names[i] is format('%I.%I') of the catalog's names; ONLY: a parent by inheritance is not its children */
        const char *only = partitioned[i] ? "" : "ONLY ";
        StringInfoData sql;
        initStringInfo(&sql);
        appendStringInfo(&sql,
                         "SELECT coalesce(array_agg(t.tableoid), '{}'), coalesce(array_agg(t.ctid), '{}') FROM %s%s t "
                         "WHERE kafka_sync._last_written_by(t.xmin, $2) AND NOT EXISTS "
                         "(SELECT 1 FROM kafka_sync.resync_keys k WHERE k.sub_name = $1 AND k.relid = $3 "
                         "AND k.key = kafka_sync._row_key($3, t))",
                         only, names[i]);
        Oid sel_types[3] = {TEXTOID, TEXTOID, OIDOID};
        Datum sel_args[3] = {args[0], args[1], ObjectIdGetDatum(relids[i])};
        if (SPI_execute_with_args(sql.data, 3, sel_types, sel_args, nullptr, true, 0) != SPI_OK_SELECT ||
            SPI_processed != 1)
            elog(ERROR, "kafka_sync could not find the rows of %s that the snapshot of %s does not have", names[i],
                 peer);
        Datum rows[2];
        rows[0] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
        rows[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
        /* the delete, like every change of a peer, runs as the table's owner (its triggers with its rights) */
        resetStringInfo(&sql);
        appendStringInfo(
            &sql,
            "DELETE FROM %s%s t WHERE (t.tableoid, t.ctid) IN (SELECT * FROM unnest($1::oid[], $2::tid[])) "
            "AND kafka_sync._last_written_by(t.xmin, $3)",
            only, names[i]);
        Oid del_types[3] = {OIDARRAYOID, TIDARRAYOID, TEXTOID};
        OwnerContext owner;
        switch_to_owner(table_owner(relids[i]), names[i], &owner);
        Datum del_args[3] = {rows[0], rows[1], args[1]};
        int drc = SPI_execute_with_args(sql.data, 3, del_types, del_args, nullptr, false, 0);
        restore_user(&owner);
        if (drc != SPI_OK_DELETE)
            elog(ERROR, "kafka_sync could not delete the rows of %s that the snapshot of %s does not have", names[i],
                 peer);
        if (SPI_processed > 0)
            ereport(LOG, (errmsg("kafka_sync subscription %s: deleted " UINT64_FORMAT " rows of %s that node %s no "
                                 "longer has",
                                 sub_name, (uint64)SPI_processed, names[i], peer)));
        deleted += SPI_processed;
    }

    rc = SPI_execute_with_args("DELETE FROM kafka_sync.resync_keys WHERE sub_name = $1", 1, types, args, nullptr, false,
                               0);
    if (rc != SPI_OK_DELETE)
        elog(ERROR, "kafka_sync could not clear kafka_sync.resync_keys");
    rc = SPI_execute_with_args("UPDATE kafka_sync.subscription SET resync_lsn = NULL, resync_from = NULL, "
                               "resync_note = NULL, resync_incomplete = false, last_resync_at = now() "
                               "WHERE sub_name = $1",
                               1, types, args, nullptr, false, 0);
    if (rc != SPI_OK_UPDATE)
        elog(ERROR, "kafka_sync could not record the end of a resynchronisation");
    ereport(LOG,
            (errmsg("kafka_sync subscription %s: resynchronised from the snapshot of node %s at %X/%X; " UINT64_FORMAT
                    " rows the peer no longer has were deleted",
                    sub_name, peer, (uint32)(snapshot_lsn >> 32), (uint32)snapshot_lsn, deleted)));
    return deleted;
}

extern "C" {

/* kafka_sync._row_key(relid oid, row_value record): the row's encoded key, NULL without one. */
Datum kafka_sync_row_key(PG_FUNCTION_ARGS) {
    const Oid relid = PG_GETARG_OID(0);
    HeapTupleHeader th = PG_GETARG_HEAPTUPLEHEADER(1);
    Relation rel = relation_open(relid, AccessShareLock);
    if (HeapTupleHeaderGetTypeId(th) != rel->rd_rel->reltype)
        ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
                        errmsg("kafka_sync._row_key: the row is not one of table %s", RelationGetRelationName(rel))));
    HeapTupleData tuple;
    tuple.t_len = HeapTupleHeaderGetDatumLength(th);
    ItemPointerSetInvalid(&tuple.t_self);
    tuple.t_tableOid = relid;
    tuple.t_data = th;
    bytea *key = row_key(rel, &tuple);
    relation_close(rel, AccessShareLock);
    if (!key)
        PG_RETURN_NULL();
    PG_RETURN_BYTEA_P(key);
}
}
