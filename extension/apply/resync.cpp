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

uint64 resync_finish(const char *sub_name, const char *peer, XLogRecPtr snapshot_lsn) {
    /*
     * The tables the peer's rows can be in: those of the snapshot, and this
     * node's published ones (a table the peer emptied has no row in the
     * snapshot). Only tables with a key: without one, no row can be told
     * from another.
     */
    Oid types[2] = {TEXTOID, TEXTOID};
    Datum args[2] = {CStringGetTextDatum(sub_name), CStringGetTextDatum(peer)};
    int rc = SPI_execute_with_args(
        "SELECT r.oid, format('%I.%I', n.nspname, r.relname) FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace "
        "WHERE (r.oid IN (SELECT k.relid FROM kafka_sync.resync_keys k WHERE k.sub_name = $1) "
        "       OR r.oid IN (SELECT (format('%I.%I', p.schemaname, p.tablename))::regclass::oid "
        "                      FROM pg_publication_tables p JOIN kafka_sync.node nd ON p.pubname = nd.publication)) "
        "  AND r.relkind IN ('r', 'p') "
        "  AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = r.oid AND (i.indisprimary OR i.indisreplident)) "
        "ORDER BY 2",
        1, types, args, nullptr, false, 0);
    if (rc != SPI_OK_SELECT)
        elog(ERROR, "kafka_sync could not list the tables to resynchronise");
    const uint64 ntables = SPI_processed;
    Oid *relids = static_cast<Oid *>(palloc(sizeof(Oid) * (ntables + 1)));
    char **names = static_cast<char **>(palloc(sizeof(char *) * (ntables + 1)));
    for (uint64 i = 0; i < ntables; i++) {
        bool isnull;
        relids[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
        names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
    }

    uint64 deleted = 0;
    for (uint64 i = 0; i < ntables; i++) {
        StringInfoData sql;
        initStringInfo(&sql);
        /* names[i] is format('%I.%I') of the catalog's names */
        appendStringInfo(&sql,
                         "DELETE FROM %s t WHERE kafka_sync._last_written_by(t.xmin, $2) AND NOT EXISTS "
                         "(SELECT 1 FROM kafka_sync.resync_keys k WHERE k.sub_name = $1 AND k.relid = $3 "
                         "AND k.key = kafka_sync._row_key($3, t))",
                         names[i]);
        Oid del_types[3] = {TEXTOID, TEXTOID, OIDOID};
        Datum del_args[3] = {args[0], args[1], ObjectIdGetDatum(relids[i])};
        if (SPI_execute_with_args(sql.data, 3, del_types, del_args, nullptr, false, 0) != SPI_OK_DELETE)
            elog(ERROR, "kafka_sync could not delete the rows of %s that the snapshot of %s does not have", names[i],
                 peer);
        if (SPI_processed > 0)
            ereport(LOG, (errmsg("kafka_sync subscription %s: deleted " UINT64_FORMAT " rows of %s that node %s no "
                                 "longer has",
                                 sub_name, (uint64)SPI_processed, names[i], peer)));
        deleted += SPI_processed;
    }

    rc = SPI_execute_with_args("DELETE FROM kafka_sync.resync_keys WHERE sub_name = $1", 1, types, args, nullptr,
                               false, 0);
    if (rc != SPI_OK_DELETE)
        elog(ERROR, "kafka_sync could not clear kafka_sync.resync_keys");
    rc = SPI_execute_with_args("UPDATE kafka_sync.subscription SET resync_lsn = NULL, resync_from = NULL, "
                               "resync_note = NULL, last_resync_at = now() WHERE sub_name = $1",
                               1, types, args, nullptr, false, 0);
    if (rc != SPI_OK_UPDATE)
        elog(ERROR, "kafka_sync could not record the end of a resynchronisation");
    ereport(LOG, (errmsg("kafka_sync subscription %s: resynchronised from the snapshot of node %s at %X/%X; "
                         UINT64_FORMAT " rows the peer no longer has were deleted",
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
