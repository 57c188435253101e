// Conflict detection: the version of a row (the commit time and node of the
// transaction that last wrote it) and of a delete (kafka_sync.tombstones).
// See conflicts.hpp; the policy is conflict_policy.cpp, the log conflict_log.cpp.
#include "apply/conflicts.hpp"
#include "apply/apply_state.hpp"
#include "common/identity_key.hpp"
#include "common/origin_names.hpp"
#include "common/settings.hpp"

extern "C" {
#include "access/commit_ts.h"
#include "access/genam.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "access/htup_details.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/bitmapset.h"
#include "port/pg_bswap.h"
#include "replication/origin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(kafka_sync_record_tombstone);
PG_FUNCTION_INFO_V1(kafka_sync_last_written_by);
}

SPIPlanPtr keep_plan(const char *sql, int nargs, Oid *types) {
    SPIPlanPtr plan = SPI_prepare(sql, nargs, types);
    if (!plan)
        elog(ERROR, "kafka_sync could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
    SPI_keepplan(plan);
    return plan;
}

ConflictStrategy conflict_strategy_from_name(const char *name) {
    if (strcmp(name, "first_update_wins") == 0)
        return ConflictStrategy::FirstUpdateWins;
    if (strcmp(name, "apply_remote") == 0)
        return ConflictStrategy::ApplyRemote;
    if (strcmp(name, "keep_local") == 0)
        return ConflictStrategy::KeepLocal;
    if (strcmp(name, "error") == 0)
        return ConflictStrategy::Error;
    return ConflictStrategy::LastUpdateWins;
}

RowVersion row_version_of_xid(TransactionId xid, const char *local_node) {
    RowVersion v;
    if (TransactionIdIsCurrentTransactionId(xid)) {
        v.current_xact = true;
        return v;
    }
    if (!TransactionIdIsNormal(xid))
        return v; /* frozen or bootstrap: older than anything we know */
    /*
     * The rows of one big transaction carry one xmin: its version is looked
     * up once (a committed transaction's commit time and origin never change;
     * kept for the current local transaction only).
     */
    kafka_sync::ApplyTxn &txn = kafka_sync::apply_txn();
    if (xid == txn.version_xid && strcmp(local_node ? local_node : "", txn.version_for_node) == 0)
        return txn.version;
    TimestampTz ts;
    RepOriginId origin;
    if (!TransactionIdGetCommitTsData(xid, &ts, &origin))
        return v; /* before track_commit_timestamp, or truncated away */
    v.known = true;
    v.ts = ts;
    if (origin == InvalidRepOriginId) {
        strlcpy(v.node, local_node ? local_node : "", sizeof(v.node));
    } else {
        char *name = nullptr;
        if (replorigin_by_oid(origin, true, &name) && name) {
            const char *peer = kafka_sync::peer_of_origin_name(name);
            strlcpy(v.node, peer ? peer : name, sizeof(v.node));
        }
    }
    txn.version = v;
    txn.version_xid = xid;
    strlcpy(txn.version_for_node, local_node ? local_node : "", sizeof(txn.version_for_node));
    return v;
}

kafka_sync::VersionRef version_ref(const RowVersion &v) {
    kafka_sync::VersionRef r;
    r.known = v.known;
    r.current_xact = v.current_xact;
    r.ts = v.ts;
    r.node = v.node;
    return r;
}

int compare_versions(const RowVersion &a, const RowVersion &b) {
    return kafka_sync::compare_versions(version_ref(a), version_ref(b));
}

bytea *encode_key(int nkeys, const Oid *types, const Datum *values) {
    StringInfoData buf;
    initStringInfo(&buf);
    appendStringInfoSpaces(&buf, VARHDRSZ);
    for (int i = 0; i < nkeys; i++) {
        Oid func;
        bool varlena;
        bytea *part;
        /* the binary form does not depend on session settings (TimeZone, DateStyle) */
        HeapTuple tp = SearchSysCache1(TYPEOID, ObjectIdGetDatum(types[i]));
        if (!HeapTupleIsValid(tp))
            elog(ERROR, "cache lookup failed for type %u", types[i]);
        const bool has_send = OidIsValid(((Form_pg_type)GETSTRUCT(tp))->typsend);
        ReleaseSysCache(tp);
        if (has_send) {
            getTypeBinaryOutputInfo(types[i], &func, &varlena);
            part = OidSendFunctionCall(func, values[i]);
        } else {
            getTypeOutputInfo(types[i], &func, &varlena);
            char *text = OidOutputFunctionCall(func, values[i]);
            part = cstring_to_text(text);
        }
        uint32 len = pg_hton32((uint32)VARSIZE_ANY_EXHDR(part));
        appendBinaryStringInfo(&buf, reinterpret_cast<char *>(&len), sizeof(len));
        appendBinaryStringInfo(&buf, VARDATA_ANY(part), VARSIZE_ANY_EXHDR(part));
    }
    bytea *result = reinterpret_cast<bytea *>(buf.data);
    SET_VARSIZE(result, buf.len);
    return result;
}

bytea *row_key(Relation rel, HeapTuple tuple) {
    /* the same key columns, in the same order, as the apply side (table_apply.cpp) */
    Bitmapset *keys = kafka_sync::identity_key_columns(rel);
    const int nkeys = bms_num_members(keys);
    if (nkeys == 0)
        return nullptr;
    Oid *types = static_cast<Oid *>(palloc(sizeof(Oid) * nkeys));
    Datum *values = static_cast<Datum *>(palloc(sizeof(Datum) * nkeys));
    TupleDesc desc = RelationGetDescr(rel);
    int k = 0, member = -1;
    while ((member = bms_next_member(keys, member)) >= 0) {
        AttrNumber attnum = member + FirstLowInvalidHeapAttributeNumber;
        bool isnull;
        values[k] = heap_getattr(tuple, attnum, desc, &isnull);
        types[k] = TupleDescAttr(desc, attnum - 1)->atttypid;
        if (isnull)
            return nullptr; /* not a key after all */
        k++;
    }
    return encode_key(nkeys, types, values);
}

RowVersion find_tombstone(Oid relid, bytea *key, const char *local_node, bool *found) {
    static SPIPlanPtr plan = nullptr;
    if (!plan) {
        Oid types[2] = {OIDOID, BYTEAOID};
        plan = keep_plan("SELECT xmin FROM kafka_sync.tombstones WHERE relid = $1 AND key = $2 FOR UPDATE", 2, types);
    }
    Datum args[2] = {ObjectIdGetDatum(relid), PointerGetDatum(key)};
    if (SPI_execute_plan(plan, args, nullptr, false, 1) != SPI_OK_SELECT)
        elog(ERROR, "kafka_sync could not read kafka_sync.tombstones");
    *found = SPI_processed > 0;
    if (!*found)
        return RowVersion();
    bool isnull;
    Datum xmin = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
    return row_version_of_xid(DatumGetTransactionId(xmin), local_node);
}

bool tombstones_exist(Oid relid) {
    /* one index probe, no SQL: apply asks this once per local transaction */
    Oid nsp = get_namespace_oid("kafka_sync", false);
    Oid tombstones = get_relname_relid("tombstones", nsp);
    if (!OidIsValid(tombstones))
        elog(ERROR, "kafka_sync.tombstones is missing; reinstall the extension");
    Relation rel = table_open(tombstones, AccessShareLock);
    ScanKeyData key;
    ScanKeyInit(&key, 1 /* relid */, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
    Snapshot snapshot = RegisterSnapshot(GetLatestSnapshot());
    SysScanDesc scan = systable_beginscan(rel, RelationGetPrimaryKeyIndex(rel), true, snapshot, 1, &key);
    const bool exist = HeapTupleIsValid(systable_getnext(scan));
    systable_endscan(scan);
    UnregisterSnapshot(snapshot);
    table_close(rel, AccessShareLock);
    return exist;
}

void write_tombstone(Oid relid, bytea *key) {
    static SPIPlanPtr plan = nullptr;
    if (!plan) {
        Oid types[2] = {OIDOID, BYTEAOID};
        plan = keep_plan("INSERT INTO kafka_sync.tombstones AS t (relid, key) VALUES ($1, $2) "
                         "ON CONFLICT (relid, key) DO UPDATE SET deleted_at = now()",
                         2, types);
    }
    Datum args[2] = {ObjectIdGetDatum(relid), PointerGetDatum(key)};
    if (SPI_execute_plan(plan, args, nullptr, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "kafka_sync could not record a deleted key");
}

void prune_tombstones_if_due() {
    static TimestampTz last = 0;
    static SPIPlanPtr plan = nullptr;
    const TimestampTz now = GetCurrentTimestamp();
    if (last != 0 && !TimestampDifferenceExceeds(last, now, 60 * 1000))
        return;
    last = now;
    if (!plan) {
        Oid types[1] = {INT4OID};
        plan = keep_plan("DELETE FROM kafka_sync.tombstones "
                         "WHERE deleted_at < now() - make_interval(secs => $1)",
                         1, types);
    }
    Datum arg = Int32GetDatum(tombstone_retention_s);
    if (SPI_execute_plan(plan, &arg, nullptr, false, 0) != SPI_OK_DELETE)
        elog(ERROR, "kafka_sync could not prune kafka_sync.tombstones");
}

extern "C" {

/*
 * _last_written_by(xmin xid, node text): whether the row version was written
 * by this transaction or committed under node's replication origin; the
 * apply side's one-statement update of a row its peer wrote last.
 */
Datum kafka_sync_last_written_by(PG_FUNCTION_ARGS) {
    TransactionId xid = DatumGetTransactionId(PG_GETARG_DATUM(0));
    char *node = text_to_cstring(PG_GETARG_TEXT_PP(1));
    RowVersion v = row_version_of_xid(xid, nullptr);
    PG_RETURN_BOOL(v.current_xact || (v.node[0] != '\0' && strcmp(v.node, node) == 0));
}

/* AFTER DELETE FOR EACH ROW on every published table of the node. */
Datum kafka_sync_record_tombstone(PG_FUNCTION_ARGS) {
    if (!CALLED_AS_TRIGGER(fcinfo))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("kafka_sync._record_tombstone() must be called as a trigger")));
    auto *trigdata = reinterpret_cast<TriggerData *>(fcinfo->context);
    if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
        !TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("kafka_sync._record_tombstone() must be an AFTER DELETE FOR EACH ROW trigger")));
    Relation rel = trigdata->tg_relation;
    bytea *key = row_key(rel, trigdata->tg_trigtuple);
    if (!key)
        return PointerGetDatum(nullptr);
    SPI_connect();
    write_tombstone(RelationGetRelid(rel), key);
    SPI_finish();
    return PointerGetDatum(nullptr);
}
}
