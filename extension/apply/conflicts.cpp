// Conflict detection and resolution helpers (see conflicts.hpp).
#include "apply/conflicts.hpp"
#include "apply/apply_state.hpp"
#include "common/identity_key.hpp"
#include "common/origin_names.hpp"

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

namespace {

int conflict_log_max_rows = 100000;
int tombstone_retention_s = 7 * 24 * 3600;

const char *describe_version(const RowVersion &v) {
    if (!v.known)
        return "at an unknown time";
    return psprintf("by node %s at %s", v.node[0] ? v.node : "(unknown)", timestamptz_to_str(v.ts));
}

} // namespace

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

void raise_conflict(const char *kind, const char *table, const char *key_json, const RowVersion *local,
                    const RowVersion &remote) {
    ereport(ERROR, (errcode(ERRCODE_KAFKA_SYNC_CONFLICT),
                    errmsg("conflict %s on table %s, key %s", kind, table,
                           key_json ? bounded_json_image(key_json) : "(none)"),
                    errdetail("The local row was last changed %s; the incoming change was made %s.",
                              describe_version(local ? *local : RowVersion()), describe_version(remote)),
                    errhint("The subscription's conflict_resolution is 'error'. Make the row right by hand, or "
                            "choose a strategy with kafka_sync.alter_subscription(), then "
                            "kafka_sync.resume_subscription().")));
    pg_unreachable();
}

void log_conflict(const ConflictRecord &c) {
    static SPIPlanPtr plan = nullptr;
    static SPIPlanPtr prune_plan = nullptr;
    if (conflict_log_max_rows == 0)
        return;
    if (!plan) {
        Oid types[12] = {TEXTOID, TEXTOID,        TEXTOID, TEXTOID, TEXTOID,        TIMESTAMPTZOID,
                         TEXTOID, TEXTOID,        TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID};
        plan = keep_plan("INSERT INTO kafka_sync.conflicts (sub_name, peer_node, table_name, key, local_row, "
                         "local_commit_ts, local_origin, remote_row, remote_commit_ts, remote_origin, kind, "
                         "resolution) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8::jsonb, $9, $10, $11, $12)",
                         12, types);
        Oid prune_types[1] = {INT8OID};
        prune_plan = keep_plan("DELETE FROM kafka_sync.conflicts WHERE id <= "
                               "(SELECT max(id) FROM kafka_sync.conflicts) - $1",
                               1, prune_types);
    }
    Datum v[12];
    char n[12];
    auto text_or_null = [&](int i, const char *s) {
        n[i] = s ? ' ' : 'n';
        v[i] = s ? CStringGetTextDatum(s) : (Datum)0;
    };
    auto version = [&](int ts_i, int node_i, const RowVersion *rv) {
        n[ts_i] = rv && rv->known ? ' ' : 'n';
        v[ts_i] = rv && rv->known ? TimestampTzGetDatum(rv->ts) : (Datum)0;
        text_or_null(node_i, rv && rv->node[0] ? rv->node : nullptr);
    };
    text_or_null(0, c.sub_name);
    text_or_null(1, c.peer);
    text_or_null(2, c.table);
    /* a peer's row may be as large as a record: what the log keeps of it is bounded */
    text_or_null(3, bounded_json_image(c.key_json));
    text_or_null(4, bounded_json_image(c.local_row_json));
    version(5, 6, c.local);
    text_or_null(7, bounded_json_image(c.remote_row_json));
    version(8, 9, c.remote);
    text_or_null(10, c.kind);
    text_or_null(11, c.resolution);
    if (SPI_execute_plan(plan, v, n, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "kafka_sync could not log a conflict");
    /*
     * Pruned in batches of a tenth of the limit: the log stays within 110% of
     * it, and a transaction with many conflicts does not rescan the rows it
     * deleted itself at every one.
     */
    static int64 since_prune = 0;
    if (conflict_log_max_rows > 0 && ++since_prune >= Max(1, conflict_log_max_rows / 10)) {
        since_prune = 0;
        Datum limit = Int64GetDatum(conflict_log_max_rows);
        if (SPI_execute_plan(prune_plan, &limit, nullptr, false, 0) != SPI_OK_DELETE)
            elog(ERROR, "kafka_sync could not prune kafka_sync.conflicts");
    }
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

int apply_max_clock_skew_s = 300;
int apply_dead_letter_max_rows = 100000;
int apply_lock_timeout_ms = 300000;
int apply_max_lsn_jump_mb = 1024 * 1024;
int apply_max_logged_value_size = 64 * 1024;
int apply_partial_transaction_wait_ms = 30 * 1000;
int apply_partial_transaction_hold_ms = 5 * 60 * 1000;

const char *bounded_json_image(const char *text) {
    if (!text)
        return nullptr;
    const size_t len = strlen(text);
    if (len <= size_t(apply_max_logged_value_size))
        return text;
    return psprintf("{\"kafka_sync.omitted_bytes\": %zu}", len);
}

void conflict_define_settings() {
    DefineCustomIntVariable("kafka_sync.apply_lock_timeout",
                            "How long an apply waits for the database's apply lock (0: for ever).",
                            "Another subscription's apply session holds it for the length of one local transaction; "
                            "past this the apply fails with lock_not_available and the sidecar tries again.",
                            &apply_lock_timeout_ms, 300000, 0, INT_MAX, PGC_SUSET, GUC_UNIT_MS, nullptr, nullptr,
                            nullptr);
    DefineCustomIntVariable("kafka_sync.dead_letter_max_rows",
                            "Number of the newest rows kept in kafka_sync.dead_letters (0: no limit).",
                            "Older dead letters are deleted as new ones are stored; each record is still in Kafka "
                            "at its offset while the topic keeps it.",
                            &apply_dead_letter_max_rows, 100000, 0, INT_MAX, PGC_SUSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.max_clock_skew",
                            "How far in the future a peer's record time may lie.",
                            "A record whose commit time is later than now plus this is refused (a dead letter, or "
                            "the subscription pauses): it would win every conflict.",
                            &apply_max_clock_skew_s, 300, 0, 30 * 24 * 3600, PGC_SIGHUP, GUC_UNIT_S, nullptr,
                            nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.max_lsn_jump",
                            "How far past what a subscription applied a peer's next record LSN may lie (0: no limit).",
                            "A record beyond it is refused: applied, it would make every later record of the peer "
                            "look applied already.",
                            &apply_max_lsn_jump_mb, 1024 * 1024, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MB, nullptr, nullptr,
                            nullptr);
    DefineCustomIntVariable("kafka_sync.max_logged_value_size",
                            "Largest row image, key or record value kept in kafka_sync.conflicts and "
                            "kafka_sync.dead_letters.",
                            "A larger one is replaced by {\"kafka_sync.omitted_bytes\": size} (a dead letter's value "
                            "by NULL, its size in value_bytes): with the row limits, this bounds what the two tables "
                            "can hold.",
                            &apply_max_logged_value_size, 64 * 1024, 0, 1024 * 1024 * 1024, PGC_SUSET, GUC_UNIT_BYTE,
                            nullptr, nullptr, nullptr);
    /* read by the sidecar (kafka_sync.sidecar_subscriptions()), which enforces them */
    DefineCustomIntVariable("kafka_sync.partial_transaction_wait",
                            "How long the sidecar keeps a source transaction applied in part open while its next "
                            "record does not arrive.",
                            "Then it rolls the part back (releasing its locks), reads ahead without applying until "
                            "the transaction's last record is in Kafka, and applies it whole.",
                            &apply_partial_transaction_wait_ms, 30 * 1000, 1000, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
                            nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.partial_transaction_hold",
                            "How long the sidecar keeps a source transaction applied in part open before its last "
                            "record is in Kafka.",
                            "Then it rolls the part back, reads ahead without applying until the transaction's last "
                            "record is in Kafka, and applies it whole: a peer's transaction that never ends cannot "
                            "hold locks (and the database's apply lock) for longer.",
                            &apply_partial_transaction_hold_ms, 5 * 60 * 1000, 1000, INT_MAX, PGC_SIGHUP,
                            GUC_UNIT_MS, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.conflict_log_max_rows",
                            "Number of the newest rows kept in kafka_sync.conflicts (0: log nothing).",
                            "Older rows are deleted as new conflicts are logged, so the log cannot fill the disk.",
                            &conflict_log_max_rows, 100000, 0, INT_MAX, PGC_SUSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.tombstone_retention",
                            "How long the version of a deleted key is remembered.",
                            "Must exceed the longest time a change can take to reach every node (pauses and "
                            "outages included); an older change of a key deleted longer ago can bring it back.",
                            &tombstone_retention_s, 7 * 24 * 3600, 60, INT_MAX, PGC_SUSET, GUC_UNIT_S, nullptr,
                            nullptr, nullptr);
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
