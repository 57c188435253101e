// Applying one decoded change to a local table (see table_apply.hpp).
#include "apply/table_apply.hpp"
#include "common/identity_key.hpp"
#include "apply/apply_state.hpp"
#include "apply/row_writer.hpp"
#include "apply/run_as_owner.hpp"
#include "boundary/pg_boundary.hpp"

extern "C" {
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "nodes/bitmapset.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/array.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "access/transam.h"
#include "catalog/pg_type.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/relcache.h"
#include "storage/lmgr.h"
#include "miscadmin.h"
#include "storage/proc.h"
}

namespace {

/* Per target table: names, key, input functions. */
struct TargetInfo {
    Oid relid; /* hash key */
    bool valid;
    char *qualified_name; /* quoted schema.table */
    int natts;
    char **quoted_names;   /* by attnum - 1; NULL for dropped/generated */
    char **names;          /* by attnum - 1, as in the catalog; NULL for dropped */
    Oid *types;
    FmgrInfo *in_funcs;
    Oid *ioparams;
    int32 *typmods;
    Oid *array_types; /* for batched inserts; InvalidOid: the type has none */
    bool *owner_input; /* the column's input runs code a role wrote (a domain, a type not built in): as the owner */
    int nkeys;
    AttrNumber *key_attnums; /* primary key (or replica identity index) */
    bool has_tombstones; /* once seen, until the entry is rebuilt; else looked at once per call */
    /* written through the executor (row_writer.hpp), as checked for this role; else through SPI */
    bool direct;
    Oid direct_checked_for;
    Oid owner; /* changes run as this role (run_as_owner.hpp) */
    Oid key_index;
    int nwritable; /* columns neither dropped nor generated */
};

constexpr int kPlanKeyLen = 512;
struct PlanEntry {
    char key[kPlanKeyLen]; /* "relid:op:attnums" */
    SPIPlanPtr plan;
};

MemoryContext apply_cache_context = nullptr;
HTAB *targets = nullptr;
HTAB *plans = nullptr;

void forget_plans_of(Oid relid) {
    if (!plans)
        return;
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "%u:", relid);
    HASH_SEQ_STATUS status;
    hash_seq_init(&status, plans);
    while (auto *p = static_cast<PlanEntry *>(hash_seq_search(&status))) {
        if (relid == InvalidOid || strncmp(p->key, prefix, strlen(prefix)) == 0) {
            SPI_freeplan(p->plan);
            hash_search(plans, p->key, HASH_REMOVE, nullptr);
        }
    }
}

/* Only mark: rebuilt (and plans freed) on next use, outside any SPI call. */
void invalidate_target(Datum, Oid relid) {
    if (!targets)
        return;
    HASH_SEQ_STATUS status;
    hash_seq_init(&status, targets);
    while (auto *t = static_cast<TargetInfo *>(hash_seq_search(&status)))
        if (relid == InvalidOid || t->relid == relid)
            t->valid = false;
}

void ensure_caches() {
    if (targets)
        return;
    apply_cache_context = AllocSetContextCreate(CacheMemoryContext, "kafka_sync apply cache", ALLOCSET_DEFAULT_SIZES);
    HASHCTL ctl;
    memset(&ctl, 0, sizeof(ctl));
    ctl.keysize = sizeof(Oid);
    ctl.entrysize = sizeof(TargetInfo);
    ctl.hcxt = apply_cache_context;
    targets = hash_create("kafka_sync apply targets", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
    memset(&ctl, 0, sizeof(ctl));
    ctl.keysize = kPlanKeyLen;
    ctl.entrysize = sizeof(PlanEntry);
    ctl.hcxt = apply_cache_context;
    plans = hash_create("kafka_sync apply plans", 256, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
    CacheRegisterRelcacheCallback(invalidate_target, (Datum)0);
}

template <typename P>
void free_and_clear(P *&p) {
    if (p)
        pfree(p);
    p = nullptr;
}

void free_target_arrays(TargetInfo *t) {
    if (t->quoted_names)
        for (int i = 0; i < t->natts; i++)
            free_and_clear(t->quoted_names[i]);
    free_and_clear(t->quoted_names);
    if (t->names)
        for (int i = 0; i < t->natts; i++)
            free_and_clear(t->names[i]);
    free_and_clear(t->names);
    free_and_clear(t->types);
    free_and_clear(t->in_funcs);
    free_and_clear(t->ioparams);
    free_and_clear(t->typmods);
    free_and_clear(t->array_types);
    free_and_clear(t->owner_input);
    free_and_clear(t->key_attnums);
    free_and_clear(t->qualified_name);
    t->natts = 0;
    t->nkeys = 0;
    t->nwritable = 0;
}

void build_target(TargetInfo *t) {
    forget_plans_of(t->relid);
    free_target_arrays(t);
    Relation rel = table_open(t->relid, RowExclusiveLock);
    TupleDesc desc = RelationGetDescr(rel);
    /* Same order as the source (relation_info.cpp): the columns a record's "before" carries. */
    Bitmapset *keys = kafka_sync::identity_key_columns(rel);
    char *qualified = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
                                                 RelationGetRelationName(rel));
    MemoryContext old = MemoryContextSwitchTo(apply_cache_context);
    t->qualified_name = pstrdup(qualified);
    t->natts = desc->natts;
    t->quoted_names = static_cast<char **>(palloc0(sizeof(char *) * Max(desc->natts, 1)));
    t->names = static_cast<char **>(palloc0(sizeof(char *) * Max(desc->natts, 1)));
    t->types = static_cast<Oid *>(palloc0(sizeof(Oid) * Max(desc->natts, 1)));
    t->in_funcs = static_cast<FmgrInfo *>(palloc0(sizeof(FmgrInfo) * Max(desc->natts, 1)));
    t->ioparams = static_cast<Oid *>(palloc0(sizeof(Oid) * Max(desc->natts, 1)));
    t->typmods = static_cast<int32 *>(palloc0(sizeof(int32) * Max(desc->natts, 1)));
    t->array_types = static_cast<Oid *>(palloc0(sizeof(Oid) * Max(desc->natts, 1)));
    t->owner_input = static_cast<bool *>(palloc0(sizeof(bool) * Max(desc->natts, 1)));
    for (int i = 0; i < desc->natts; i++) {
        Form_pg_attribute att = TupleDescAttr(desc, i);
        if (!att->attisdropped)
            t->names[i] = pstrdup(NameStr(att->attname));
        if (att->attisdropped || att->attgenerated)
            continue;
        const char *quoted = quote_identifier(NameStr(att->attname));
        t->quoted_names[i] = quoted == NameStr(att->attname) ? pstrdup(quoted) : const_cast<char *>(quoted);
        t->nwritable++;
        t->types[i] = att->atttypid;
        t->typmods[i] = att->atttypmod;
        t->array_types[i] = get_array_type(att->atttypid);
        Oid infunc;
        getTypeInputInfo(att->atttypid, &infunc, &t->ioparams[i]);
        fmgr_info_cxt(infunc, &t->in_funcs[i], apply_cache_context);
        {
            /* an array's elements are read by their own type's input */
            const Oid elem = get_element_type(att->atttypid);
            const Oid base = OidIsValid(elem) ? elem : att->atttypid;
            const char typtype = get_typtype(base);
            Oid base_in, base_param;
            getTypeInputInfo(base, &base_in, &base_param);
            t->owner_input[i] = infunc >= FirstNormalObjectId || base_in >= FirstNormalObjectId ||
                                (typtype != TYPTYPE_BASE && typtype != TYPTYPE_ENUM);
        }
    }
    t->nkeys = bms_num_members(keys);
    t->key_attnums = static_cast<AttrNumber *>(palloc(sizeof(AttrNumber) * Max(t->nkeys, 1)));
    int k = 0, member = -1;
    while ((member = bms_next_member(keys, member)) >= 0)
        t->key_attnums[k++] = member + FirstLowInvalidHeapAttributeNumber;
    MemoryContextSwitchTo(old);
    t->key_index = row_writer_key_index(rel);
    t->owner = rel->rd_rel->relowner;
    /* as PostgreSQL 16's apply: policies that bind the owner would hide rows from the lookups */
    if (check_enable_rls(t->relid, t->owner, true) == RLS_ENABLED)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("table %s has row level security that applies to its owner", t->qualified_name),
                        errdetail("A peer's changes run as the table's owner (FORCE ROW LEVEL SECURITY is set)."),
                        errhint("ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, or leave it out of the subscription.",
                                t->qualified_name)));
    {
        /* whether the executor path may write it is decided for the role that writes: the owner */
        OwnerContext owner;
        switch_to_owner(t->owner, t->qualified_name, &owner);
        t->direct = row_writer_usable(rel) && (t->nkeys == 0 || OidIsValid(t->key_index));
        restore_user(&owner);
    }
    t->direct_checked_for = GetUserId();
    table_close(rel, NoLock); /* keep the lock until the end of the transaction */
    t->valid = true;
}

TargetInfo *target_for(Oid relid) {
    ensure_caches();
    bool found;
    auto *t = static_cast<TargetInfo *>(hash_search(targets, &relid, HASH_ENTER, &found));
    if (!found) {
        memset(reinterpret_cast<char *>(t) + sizeof(Oid), 0, sizeof(TargetInfo) - sizeof(Oid));
        t->relid = relid;
    }
    /* taking the lock first also processes pending invalidations of the table */
    kafka_sync::ApplyTxn &txn = kafka_sync::apply_txn();
    if (!txn.has_locked(relid)) {
        LockRelationOid(relid, RowExclusiveLock);
        txn.note_locked(relid);
    }
    if (!t->valid || t->direct_checked_for != GetUserId())
        build_target(t);
    return t;
}

/* One column of a statement: attnum and its text value (and that converted, once needed). */
struct ColumnParam {
    AttrNumber attnum;
    const char *value;
    bool converted;
    Datum datum;
};

/* Not a column: the node an UPDATE expects to have written the row last (text). */
constexpr AttrNumber kWriterParam = 0;

/* The parameter's value as its column's type (converted by the column's input function once). */
Datum param_datum(TargetInfo *t, ColumnParam *p) {
    if (!p->converted) {
        const int a = p->attnum - 1;
        if (p->attnum == kWriterParam) {
            p->datum = p->value ? CStringGetTextDatum(p->value) : (Datum)0;
        } else if (!t->owner_input[a]) {
            p->datum = InputFunctionCall(&t->in_funcs[a], const_cast<char *>(p->value), t->ioparams[a], t->typmods[a]);
        } else {
            /* a domain's checks, or a type's own input function, are code a role wrote: run as the owner */
            OwnerContext owner;
            switch_to_owner(t->owner, t->qualified_name, &owner);
            p->datum = InputFunctionCall(&t->in_funcs[a], const_cast<char *>(p->value), t->ioparams[a], t->typmods[a]);
            restore_user(&owner);
        }
        p->converted = true;
    }
    return p->datum;
}

/* hint: where to look first (records list columns in table order: the next one) */
AttrNumber column_attnum(TargetInfo *t, const char *name, int *hint) {
    for (int n = 0; n < t->natts; n++) {
        const int i = (*hint + n) % t->natts;
        if (t->names[i] && strcmp(t->names[i], name) == 0) {
            *hint = i + 1;
            return i + 1;
        }
    }
    AttrNumber attnum = get_attnum(t->relid, name);
    if (attnum > t->natts)
        build_target(t); /* a column added since the entry was built */
    if (attnum == InvalidAttrNumber || attnum < 1 || attnum > t->natts)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
                        errmsg("column \"%s\" of the record does not exist in table %s", name, t->qualified_name),
                        errhint("Tables must have the same columns on every node.")));
    return attnum;
}

/* Columns of a row image that exist (and are writable) here. */
List *row_params(TargetInfo *t, const std::vector<kafka_sync::DecodedColumn> &row) {
    List *params = NIL;
    int hint = 0;
    for (const auto &col : row) {
        AttrNumber attnum = column_attnum(t, col.name, &hint);
        if (!t->quoted_names[attnum - 1])
            continue; /* generated column: computed here */
        auto *p = static_cast<ColumnParam *>(palloc0(sizeof(ColumnParam)));
        p->attnum = attnum;
        p->value = col.value;
        params = lappend(params, p);
    }
    return params;
}

bool is_key(TargetInfo *t, AttrNumber attnum) {
    for (int i = 0; i < t->nkeys; i++)
        if (t->key_attnums[i] == attnum)
            return true;
    return false;
}

/* Key values from a row image: all key columns must be present. */
List *key_params(TargetInfo *t, List *row, bool required) {
    List *keys = NIL;
    for (int i = 0; i < t->nkeys; i++) {
        ColumnParam *found = nullptr;
        ListCell *lc;
        foreach (lc, row) {
            auto *p = static_cast<ColumnParam *>(lfirst(lc));
            if (p->attnum == t->key_attnums[i])
                found = p;
        }
        if (!found) {
            if (!required)
                return NIL;
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                            errmsg("the record lacks key column %s of table %s",
                                   t->quoted_names[t->key_attnums[i] - 1], t->qualified_name)));
        }
        /* a key is never null: a record that says so is refused, whatever looks the key up */
        if (!found->value)
            ereport(ERROR, (errcode(ERRCODE_NOT_NULL_VIOLATION),
                            errmsg("key column %s of table %s is null in the record",
                                   t->quoted_names[t->key_attnums[i] - 1], t->qualified_name)));
        keys = lappend(keys, found);
    }
    return keys;
}

void append_plan_key(StringInfo key, List *params) {
    ListCell *lc;
    foreach (lc, params)
        appendStringInfo(key, "%d,", static_cast<ColumnParam *>(lfirst(lc))->attnum);
    appendStringInfoChar(key, ';');
}

/*
 * The plan of a statement, cached under key (relid:op:columns); when not
 * cached, describe(sql) writes the statement and returns its parameter types.
 * *temporary: the key is too long to cache it, free the plan after use.
 */
template <typename Describe>
SPIPlanPtr cached_plan(const StringInfoData &key, int nparams, Describe describe, bool *temporary) {
    const bool cacheable = key.len < kPlanKeyLen;
    *temporary = !cacheable;
    if (cacheable)
        if (auto *entry = static_cast<PlanEntry *>(hash_search(plans, key.data, HASH_FIND, nullptr)))
            return entry->plan;
    StringInfoData sql;
    initStringInfo(&sql);
    Oid *types = describe(&sql);
    SPIPlanPtr plan = SPI_prepare(sql.data, nparams, types);
    if (!plan)
        elog(ERROR, "kafka_sync could not prepare \"%s\": %s", sql.data, SPI_result_code_string(SPI_result));
    if (cacheable) {
        SPI_keepplan(plan);
        static_cast<PlanEntry *>(hash_search(plans, key.data, HASH_ENTER, nullptr))->plan = plan;
    }
    return plan;
}

/*
 * Runs sql (built only when not cached) with params = set ++ where, typed as
 * their columns (the writer parameter as text). Returns the number of rows
 * processed; a statement's returned rows are in SPI_tuptable.
 */
uint64 run(TargetInfo *t, char op, List *set, List *where, void (*build)(TargetInfo *, List *, List *, StringInfo)) {
    StringInfoData key;
    initStringInfo(&key);
    appendStringInfo(&key, "%u:%c:", t->relid, op);
    append_plan_key(&key, set);
    append_plan_key(&key, where);

    const int nparams = list_length(set) + list_length(where);
    List *all = list_concat_copy(set, where);
    /* the statement (prepared and run, so that its checks are the owner's), and its values' input functions */
    OwnerContext owner;
    switch_to_owner(t->owner, t->qualified_name, &owner);
    bool temporary;
    SPIPlanPtr plan = cached_plan(key, nparams, [&](StringInfo sql) {
        build(t, set, where, sql);
        Oid *types = static_cast<Oid *>(palloc(sizeof(Oid) * Max(nparams, 1)));
        ListCell *lc;
        foreach (lc, all) {
            const AttrNumber attnum = static_cast<ColumnParam *>(lfirst(lc))->attnum;
            types[foreach_current_index(lc)] = attnum == kWriterParam ? TEXTOID : t->types[attnum - 1];
        }
        return types;
    }, &temporary);

    Datum *values = static_cast<Datum *>(palloc(sizeof(Datum) * Max(nparams, 1)));
    char *nulls = static_cast<char *>(palloc(Max(nparams, 1)));
    int i = 0;
    ListCell *lc;
    foreach (lc, all) {
        auto *p = static_cast<ColumnParam *>(lfirst(lc));
        nulls[i] = p->value ? ' ' : 'n';
        values[i] = param_datum(t, p);
        i++;
    }
    int rc = SPI_execute_plan(plan, values, nulls, false, 0);
    restore_user(&owner);
    if (rc < 0)
        elog(ERROR, "kafka_sync could not apply a change to %s: %s", t->qualified_name, SPI_result_code_string(rc));
    uint64 processed = SPI_processed;
    if (temporary)
        SPI_freeplan(plan);
    return processed;
}

void append_column_list(TargetInfo *t, List *params, StringInfo sql, const char *sep, const char *fmt, int first_param) {
    int n = first_param;
    ListCell *lc;
    foreach (lc, params) {
        const char *name = t->quoted_names[static_cast<ColumnParam *>(lfirst(lc))->attnum - 1];
        if (n > first_param)
            appendStringInfoString(sql, sep);
        appendStringInfo(sql, fmt, name, n, name);
        n++;
    }
}

void build_update(TargetInfo *t, List *set, List *where, StringInfo sql) {
    appendStringInfo(sql, "UPDATE %s SET ", t->qualified_name);
    append_column_list(t, set, sql, ", ", "%1$s = $%2$d", 1);
    appendStringInfoString(sql, " WHERE ");
    append_column_list(t, where, sql, " AND ", "%1$s = $%2$d", list_length(set) + 1);
}

/* UPDATE ... WHERE <key> AND the row was last written by the node in the last parameter */
void build_update_if_writer(TargetInfo *t, List *set, List *where, StringInfo sql) {
    List *key = list_copy(where);
    key = list_delete_last(key);
    build_update(t, set, key, sql);
    appendStringInfo(sql, " AND kafka_sync._last_written_by(xmin, $%d)", list_length(set) + list_length(where));
}

void build_delete(TargetInfo *t, List *, List *where, StringInfo sql) {
    appendStringInfo(sql, "DELETE FROM %s WHERE ", t->qualified_name);
    append_column_list(t, where, sql, " AND ", "%1$s = $%2$d", 1);
}

void require_key(TargetInfo *t, const char *what) {
    if (t->nkeys == 0)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("cannot apply %s to table %s: it has no primary key", what, t->qualified_name),
                        errhint("Give the table a primary key (the same as on its other nodes).")));
}

/* The local row of a key: locked, with its version. */
struct LocalRow {
    bool found;
    RowVersion version;
};

void build_lookup(TargetInfo *t, List *, List *where, StringInfo sql) {
    appendStringInfo(sql, "SELECT xmin FROM %s WHERE ", t->qualified_name);
    append_column_list(t, where, sql, " AND ", "%1$s = $%2$d", 1);
    appendStringInfoString(sql, " FOR UPDATE");
}

void build_row_json(TargetInfo *t, List *, List *where, StringInfo sql) {
    appendStringInfo(sql, "SELECT pg_catalog.to_jsonb(t)::text FROM %s t WHERE ", t->qualified_name);
    append_column_list(t, where, sql, " AND ", "t.%1$s = $%2$d", 1);
}

void build_insert(TargetInfo *t, List *set, List *, StringInfo sql) {
    appendStringInfo(sql, "INSERT INTO %s (", t->qualified_name);
    append_column_list(t, set, sql, ", ", "%1$s", 1);
    appendStringInfoString(sql, ") VALUES (");
    for (int i = 1; i <= list_length(set); i++)
        appendStringInfo(sql, "%s$%d", i > 1 ? ", " : "", i);
    appendStringInfoChar(sql, ')');
    if (t->nkeys == 0)
        return;
    /* a row inserted here meanwhile is not overwritten: the caller looks again */
    appendStringInfoString(sql, " ON CONFLICT (");
    for (int i = 0; i < t->nkeys; i++)
        appendStringInfo(sql, "%s%s", i > 0 ? ", " : "", t->quoted_names[t->key_attnums[i] - 1]);
    appendStringInfoString(sql, ") DO NOTHING");
}

/*
 * One change being applied: the table, where it comes from, the counters,
 * and the row writer when it is written through the executor (NULL: SPI).
 */
struct Change {
    TargetInfo *t;
    const RemoteChange *remote;
    ApplyCounters *counters;
    List *after; /* the record's row image after the change (row_params), NIL: none */
    RowWriter *w;
};

/* A whole row of the table from params (NULL elsewhere); replace, when given, marks the params' columns. */
void row_datums(const Change &ch, List *params, Datum **values, bool **isnull, bool **replace) {
    const int natts = ch.t->natts;
    *values = static_cast<Datum *>(palloc0(sizeof(Datum) * Max(natts, 1)));
    *isnull = static_cast<bool *>(palloc(sizeof(bool) * Max(natts, 1)));
    memset(*isnull, true, sizeof(bool) * Max(natts, 1));
    if (replace)
        *replace = static_cast<bool *>(palloc0(sizeof(bool) * Max(natts, 1)));
    ListCell *lc;
    foreach (lc, params) {
        auto *p = static_cast<ColumnParam *>(lfirst(lc));
        const int a = p->attnum - 1;
        (*isnull)[a] = p->value == nullptr;
        (*values)[a] = p->value ? param_datum(ch.t, p) : (Datum)0;
        if (replace)
            (*replace)[a] = true;
    }
}

/* Whether the row image gives every column a value here can take (an insert needs no defaults). */
bool covers_all_columns(TargetInfo *t, List *row) {
    Bitmapset *seen = nullptr;
    ListCell *lc;
    foreach (lc, row)
        seen = bms_add_member(seen, static_cast<ColumnParam *>(lfirst(lc))->attnum);
    const bool all = bms_num_members(seen) == t->nwritable;
    bms_free(seen);
    return all;
}

/* Finds the row of key and locks it (the executor path: remembered for update_row / delete_row). */
LocalRow lookup(const Change &ch, List *key) {
    LocalRow row{false, RowVersion()};
    TransactionId xmin = InvalidTransactionId;
    if (ch.w) {
        Datum *values;
        bool *isnull;
        row_datums(ch, key, &values, &isnull, nullptr);
        if (!row_writer_find(ch.w, values, isnull, &xmin))
            return row;
    } else {
        run(ch.t, 'l', NIL, key, build_lookup);
        if (SPI_processed == 0)
            return row;
        bool isnull;
        xmin = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    }
    row.found = true;
    row.version = row_version_of_xid(xmin, ch.remote->local_node);
    return row;
}

/* Sets the columns of set in the row of where, which the last lookup() found. */
void update_row(const Change &ch, List *set, List *where) {
    if (set == NIL)
        return;
    if (!ch.w) {
        run(ch.t, 'u', set, where, build_update);
        return;
    }
    Datum *values;
    bool *isnull, *replace;
    row_datums(ch, set, &values, &isnull, &replace);
    row_writer_update(ch.w, values, isnull, replace);
}

/* Deletes the row of key, which the last lookup() found. */
void delete_row(const Change &ch, List *key) {
    if (ch.w)
        row_writer_delete(ch.w);
    else
        run(ch.t, 'd', NIL, key, build_delete);
}


/*
 * A snapshot row whose version this node already has: the same time (to the
 * millisecond) from the row's last writer, or from the peer that applied it.
 */
bool same_snapshot_version(const RowVersion &local, const RemoteChange *remote) {
    if (!local.known || !remote->version.known)
        return false;
    RowVersion from_writer = remote->version;
    strlcpy(from_writer.node, remote->row_origin, sizeof(from_writer.node));
    return compare_versions(local, remote->version) == 0 || compare_versions(local, from_writer) == 0;
}

/* {"col": "text value" or null, ...} */
char *params_json(TargetInfo *t, List *params) {
    StringInfoData s;
    initStringInfo(&s);
    appendStringInfoChar(&s, '{');
    ListCell *lc;
    foreach (lc, params) {
        auto *p = static_cast<ColumnParam *>(lfirst(lc));
        if (foreach_current_index(lc) > 0)
            appendStringInfoString(&s, ", ");
        char *name = get_attname(t->relid, p->attnum, false);
        escape_json(&s, name);
        appendStringInfoString(&s, ": ");
        if (p->value)
            escape_json(&s, p->value);
        else
            appendStringInfoString(&s, "null");
    }
    appendStringInfoChar(&s, '}');
    return s.data;
}

bytea *key_bytes(TargetInfo *t, List *key) {
    const int n = list_length(key);
    Oid *types = static_cast<Oid *>(palloc(sizeof(Oid) * n));
    Datum *values = static_cast<Datum *>(palloc(sizeof(Datum) * n));
    ListCell *lc;
    foreach (lc, key) {
        auto *p = static_cast<ColumnParam *>(lfirst(lc));
        const int i = foreach_current_index(lc);
        types[i] = t->types[p->attnum - 1];
        values[i] = param_datum(t, p);
    }
    return encode_key(n, types, values);
}

/*
 * A change meeting local state (local: its row's or tombstone's version;
 * NULL with LocalState::Nothing): conflict_policy's decision. A conflict is
 * logged with both rows and counted (under the "error" strategy it raises
 * ERROR). true: the change applies.
 */
bool decided(const Change &ch, kafka_sync::ChangeOp op, kafka_sync::LocalState state, const RowVersion *local,
             List *key, List *remote_row) {
    using kafka_sync::Action;
    const RowVersion none;
    const kafka_sync::Decision d = kafka_sync::decide(op, state, version_ref(local ? *local : none),
                                                      version_ref(ch.remote->version), ch.remote->strategy);
    if (d.kind == kafka_sync::ConflictKind::None)
        return d.action == Action::Apply;
    TargetInfo *t = ch.t;
    const char *kind = kafka_sync::conflict_kind_name(d.kind);
    char *key_json = params_json(t, key);
    if (d.action == Action::Refuse)
        raise_conflict(kind, t->qualified_name, key_json, local, ch.remote->version);
    char *local_json = nullptr;
    if (state == kafka_sync::LocalState::Row) {
        run(t, 'j', NIL, key, build_row_json);
        if (SPI_processed > 0)
            local_json = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
    }
    ConflictRecord c;
    c.sub_name = ch.remote->sub_name;
    c.peer = ch.remote->peer;
    c.table = t->qualified_name;
    c.kind = kind;
    c.key_json = key_json;
    c.local_row_json = local_json;
    c.local = local;
    c.remote_row_json = remote_row != NIL ? params_json(t, remote_row) : nullptr;
    c.remote = &ch.remote->version;
    c.resolution = d.action == Action::Apply ? "apply_remote" : "keep_local";
    log_conflict(c);
    ch.counters->conflicts++;
    return d.action == Action::Apply;
}

/* Non-key columns of a row image. */
List *non_key(TargetInfo *t, List *row) {
    List *set = NIL;
    ListCell *lc;
    foreach (lc, row)
        if (!is_key(t, static_cast<ColumnParam *>(lfirst(lc))->attnum))
            set = lappend(set, lfirst(lc));
    return set;
}

/* false: a row with this key exists (inserted meanwhile by a concurrent local transaction, say) */
bool insert_row(const Change &ch, List *row) {
    if (!ch.w)
        return run(ch.t, 'i', row, NIL, build_insert) > 0;
    Datum *values;
    bool *isnull;
    row_datums(ch, row, &values, &isnull, nullptr);
    TransactionId xmin;
    if (ch.t->nkeys > 0 && row_writer_find(ch.w, values, isnull, &xmin))
        return false;
    /*
     * A local transaction inserting the key between the lookup and this
     * insert makes it fail on the key's unique index; the sidecar applies
     * the transaction again, and the lookup then sees the row.
     */
    row_writer_insert(ch.w, values, isnull);
    return true;
}

/* The row that kept insert_row from inserting (a local insert meanwhile): locked, with its version. */
LocalRow lookup_inserted_meanwhile(const Change &ch, List *key) {
    LocalRow local = lookup(ch, key);
    if (!local.found)
        ereport(ERROR, (errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
                        errmsg("a row of table %s appeared and vanished while a change was applied to it",
                               ch.t->qualified_name),
                        errhint("The sidecar retries the transaction.")));
    return local;
}

/* The row of key, which the last lookup() found, takes row's values. */
void overwrite_row(const Change &ch, List *row, List *key) { update_row(ch, non_key(ch.t, row), key); }

/*
 * Whether kafka_sync.tombstones holds keys of this table, looked up once per
 * apply call: an insert into a table without any needs no lookup at all.
 */
bool table_has_tombstones(TargetInfo *t) {
    if (t->has_tombstones)
        return true; /* they go only after kafka_sync.tombstone_retention */
    kafka_sync::ApplyCall &call = kafka_sync::apply_call();
    if (call.tombstones_checked(t->relid))
        return false;
    t->has_tombstones = tombstones_exist(t->relid);
    call.note_tombstones_checked(t->relid);
    return t->has_tombstones;
}

/* A key with no row here: was it deleted here, and does the change beat that? */
bool may_create(const Change &ch, List *key, kafka_sync::ChangeOp op, List *row) {
    bool found;
    RowVersion tomb = find_tombstone(ch.t->relid, key_bytes(ch.t, key), ch.remote->local_node, &found);
    return !found || decided(ch, op, kafka_sync::LocalState::Tombstone, &tomb, key, row);
}

void apply_insert(const Change &ch, const kafka_sync::DecodedRecord *rec) {
    TargetInfo *t = ch.t;
    List *row = ch.after;
    if (t->nkeys == 0) {
        insert_row(ch, row); /* no key: nothing to be in conflict with */
        return;
    }
    const bool snapshot_row = rec->op == 'r';
    if (snapshot_row && strcmp(ch.remote->row_origin, ch.remote->local_node) == 0) {
        ch.counters->skipped++; /* our own row in a peer's snapshot: ours is as new or newer */
        return;
    }
    /* the common case, a new key: one statement */
    if (!snapshot_row && !table_has_tombstones(t) && insert_row(ch, row))
        return;
    const kafka_sync::ChangeOp op = snapshot_row ? kafka_sync::ChangeOp::SnapshotRow : kafka_sync::ChangeOp::Insert;
    List *key = key_params(t, row, true);
    LocalRow local = lookup(ch, key);
    if (!local.found) {
        if (!may_create(ch, key, op, row) || insert_row(ch, row))
            return;
        local = lookup_inserted_meanwhile(ch, key); /* now a conflict like any other */
    }
    if (snapshot_row && same_snapshot_version(local.version, ch.remote)) {
        ch.counters->skipped++; /* the very version this node has already (from its origin or the peer) */
        return;
    }
    if (decided(ch, op, kafka_sync::LocalState::Row, &local.version, key, row))
        overwrite_row(ch, row, key);
}

void apply_update(const Change &ch, const kafka_sync::DecodedRecord *rec) {
    TargetInfo *t = ch.t;
    List *after = ch.after;
    List *old_key = rec->has_before ? key_params(t, row_params(t, rec->before), false) : NIL;
    List *where = old_key != NIL ? old_key : key_params(t, after, true);
    /* key columns are SET only when the key changes */
    List *set = old_key != NIL ? after : non_key(t, after);
    if (set != NIL && !ch.w) {
        /* the common case, the row as the same node left it: one statement */
        auto *writer = static_cast<ColumnParam *>(palloc0(sizeof(ColumnParam)));
        writer->attnum = kWriterParam;
        writer->value = ch.remote->version.node;
        if (run(t, 'U', set, lappend(list_copy(where), writer), build_update_if_writer) > 0)
            return;
    }
    LocalRow local = lookup(ch, where);
    if (!local.found) {
        bool found;
        RowVersion tomb = find_tombstone(t->relid, key_bytes(t, where), ch.remote->local_node, &found);
        if (!decided(ch, kafka_sync::ChangeOp::Update,
                     found ? kafka_sync::LocalState::Tombstone : kafka_sync::LocalState::Nothing, found ? &tomb : nullptr,
                     where, after) ||
            insert_row(ch, after))
            return;
        /* now an update of an existing row, resolved like one */
        local = lookup_inserted_meanwhile(ch, where);
    }
    if (!decided(ch, kafka_sync::ChangeOp::Update, kafka_sync::LocalState::Row, &local.version, where, after))
        return;
    update_row(ch, set, where);
}

void apply_delete(const Change &ch, const kafka_sync::DecodedRecord *rec) {
    TargetInfo *t = ch.t;
    List *key = key_params(t, row_params(t, rec->before), true);
    LocalRow local = lookup(ch, key);
    if (local.found) {
        if (decided(ch, kafka_sync::ChangeOp::Delete, kafka_sync::LocalState::Row, &local.version, key, NIL)) {
            delete_row(ch, key); /* the trigger records the tombstone */
            t->has_tombstones = true;
        }
        return;
    }
    /*
     * Gone already: remember the delete (whatever the conflict's resolution),
     * so that an older change of the key arriving later loses to it.
     */
    bytea *kb = key_bytes(t, key);
    bool found;
    RowVersion tomb = find_tombstone(t->relid, kb, ch.remote->local_node, &found);
    decided(ch, kafka_sync::ChangeOp::Delete, found ? kafka_sync::LocalState::Tombstone : kafka_sync::LocalState::Nothing,
            found ? &tomb : nullptr, key, NIL);
    if (!found || compare_versions(ch.remote->version, tomb) > 0) {
        write_tombstone(t->relid, kb);
        t->has_tombstones = true;
    }
}

/*
 * Inserts of new keys, batched: a run of "c" records for one table with the
 * same columns becomes one INSERT ... SELECT FROM unnest(<one array per
 * column>) ON CONFLICT DO NOTHING, and the rows it did not insert (their key
 * exists here) go through the conflict path one by one afterwards. Only for
 * tables with no tombstones (nothing to compare a new key with).
 */
constexpr int kMaxBatch = 1000;
constexpr int kMinBatch = 8; /* fewer rows go one statement each */

struct QueuedInsert {
    char **values;        /* by position in InsertBatch::attnums; NULL: SQL NULL */
    RemoteChange remote;  /* with row_origin copied */
    const char *schema, *table;
};

struct InsertBatch {
    MemoryContext cxt;
    TargetInfo *t;
    Oid relid;
    int ncols;
    AttrNumber *attnums;
    char **names; /* the record's column names, for the conflict path */
    int nrows;
    QueuedInsert rows[kMaxBatch];
};

InsertBatch *batch = nullptr;

/*
 * The executor state of the table last written, kept (ApplyTxn) for the next
 * change of the same table in the same local transaction (its memory is the
 * transaction's): opening it costs about as much as a row insert.
 */
RowWriter *writer_for(TargetInfo *t) {
    kafka_sync::ApplyTxn &txn = kafka_sync::apply_txn();
    if (txn.open_writer && txn.open_writer_relid == t->relid)
        return txn.open_writer;
    apply_close_writer();
    if (!kafka_sync::apply_call().keep_writers)
        return row_writer_open(t->relid, t->key_index); /* closed after the change */
    MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
    RowWriter *w = row_writer_open(t->relid, t->key_index);
    MemoryContextSwitchTo(old);
    txn.open_writer = w;
    txn.open_writer_relid = t->relid;
    return w;
}

void build_batch_insert(TargetInfo *t, List *cols, List *, StringInfo sql) {
    appendStringInfoString(sql, "WITH src AS (SELECT * FROM ROWS FROM (");
    ListCell *lc;
    foreach (lc, cols)
        appendStringInfo(sql, "%spg_catalog.unnest($%d)", foreach_current_index(lc) > 0 ? ", " : "",
                         foreach_current_index(lc) + 1);
    appendStringInfoString(sql, ") WITH ORDINALITY AS u(");
    foreach (lc, cols)
        appendStringInfo(sql, "%s%s", foreach_current_index(lc) > 0 ? ", " : "",
                         t->quoted_names[static_cast<ColumnParam *>(lfirst(lc))->attnum - 1]);
    appendStringInfo(sql, ", kafka_sync_ord)), ins AS (INSERT INTO %s (", t->qualified_name);
    append_column_list(t, cols, sql, ", ", "%1$s", 1);
    appendStringInfoString(sql, ") SELECT ");
    append_column_list(t, cols, sql, ", ", "%1$s", 1);
    appendStringInfoString(sql, " FROM src ORDER BY kafka_sync_ord ON CONFLICT (");
    for (int i = 0; i < t->nkeys; i++)
        appendStringInfo(sql, "%s%s", i > 0 ? ", " : "", t->quoted_names[t->key_attnums[i] - 1]);
    appendStringInfoString(sql, ") DO NOTHING RETURNING ");
    for (int i = 0; i < t->nkeys; i++)
        appendStringInfo(sql, "%s%s", i > 0 ? ", " : "", t->quoted_names[t->key_attnums[i] - 1]);
    appendStringInfoString(sql, ") SELECT src.kafka_sync_ord FROM src WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ");
    for (int i = 0; i < t->nkeys; i++) {
        const char *k = t->quoted_names[t->key_attnums[i] - 1];
        appendStringInfo(sql, "%sins.%s = src.%s", i > 0 ? " AND " : "", k, k);
    }
    appendStringInfoString(sql, ") ORDER BY 1");
}

} // namespace

void apply_discard_queued_inserts() {
    if (batch) {
        MemoryContextReset(batch->cxt);
        batch->nrows = 0;
        batch->t = nullptr;
    }
}

/*
 * A queued insert as the "c" record apply_row_change takes. One object for
 * the backend, filled again each time: a C++ object (its vector's heap
 * memory) must not live in a frame that an ERROR unwinds with longjmp.
 */
const kafka_sync::DecodedRecord *queued_record(const QueuedInsert &q) {
    static kafka_sync::DecodedRecord *rec = nullptr;
    kafka_sync::ks_guard([&]() {
        if (!rec)
            rec = new kafka_sync::DecodedRecord();
        rec->reset();
        rec->op = 'c';
        rec->schema = q.schema;
        rec->table = q.table;
        rec->has_after = true;
        for (int c = 0; c < batch->ncols; c++)
            rec->after.push_back(kafka_sync::DecodedColumn{batch->names[c], q.values[c]});
    });
    return rec;
}

void apply_flush_inserts(ApplyCounters *counters) {
    if (!batch || batch->nrows == 0)
        return;
    TargetInfo *t = target_for(batch->relid);
    if (t != batch->t || !t->valid)
        ereport(ERROR, (errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
                        errmsg("table %s changed while changes to it were applied", t->qualified_name),
                        errhint("The sidecar applies the transaction again.")));
    const int n = batch->nrows;
    const int ncols = batch->ncols;
    if (n < kMinBatch) {
        /* a few rows (single-row transactions): the plain statement is cheaper */
        for (int r = 0; r < n; r++)
            apply_row_change(batch->relid, queued_record(batch->rows[r]), &batch->rows[r].remote, counters);
        apply_discard_queued_inserts();
        return;
    }
    /* one array per column: the plan's parameters are typed as the column's array type */
    List *cols = NIL;
    Datum *arrays = static_cast<Datum *>(palloc(sizeof(Datum) * ncols));
    /* the values' input functions and the statement run as the table's owner */
    OwnerContext owner;
    switch_to_owner(t->owner, t->qualified_name, &owner);
    for (int c = 0; c < ncols; c++) {
        const int a = batch->attnums[c] - 1;
        auto *p = static_cast<ColumnParam *>(palloc0(sizeof(ColumnParam)));
        p->attnum = batch->attnums[c];
        p->value = nullptr;
        cols = lappend(cols, p);
        Datum *elems = static_cast<Datum *>(palloc(sizeof(Datum) * n));
        bool *nulls = static_cast<bool *>(palloc(sizeof(bool) * n));
        for (int r = 0; r < n; r++) {
            const char *v = batch->rows[r].values[c];
            nulls[r] = v == nullptr;
            elems[r] = InputFunctionCall(&t->in_funcs[a], const_cast<char *>(v), t->ioparams[a], t->typmods[a]);
        }
        int16 typlen;
        bool typbyval;
        char typalign;
        get_typlenbyvalalign(t->types[a], &typlen, &typbyval, &typalign);
        int dims[1] = {n};
        int lbs[1] = {1};
        arrays[c] = PointerGetDatum(
            construct_md_array(elems, nulls, 1, dims, lbs, t->types[a], typlen, typbyval, typalign));
    }
    StringInfoData key;
    initStringInfo(&key);
    appendStringInfo(&key, "%u:B:", t->relid);
    append_plan_key(&key, cols);
    bool temporary;
    SPIPlanPtr plan = cached_plan(key, ncols, [&](StringInfo sql) {
        build_batch_insert(t, cols, NIL, sql);
        Oid *types = static_cast<Oid *>(palloc(sizeof(Oid) * ncols));
        for (int c = 0; c < ncols; c++)
            types[c] = t->array_types[batch->attnums[c] - 1];
        return types;
    }, &temporary);
    int rc = SPI_execute_plan(plan, arrays, nullptr, false, 0);
    restore_user(&owner);
    if (rc < 0)
        elog(ERROR, "kafka_sync could not apply inserts to %s: %s", t->qualified_name, SPI_result_code_string(rc));
    /* the rows not inserted: their key exists here, a conflict (or the same peer's row) each */
    const uint64 nleft = SPI_processed;
    int64 *left = static_cast<int64 *>(palloc(sizeof(int64) * Max(nleft, 1)));
    for (uint64 i = 0; i < nleft; i++) {
        bool isnull;
        left[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
    }
    if (temporary)
        SPI_freeplan(plan);
    counters->applied += n - (int64)nleft;
    for (uint64 i = 0; i < nleft; i++) {
        const QueuedInsert &q = batch->rows[left[i] - 1];
        apply_row_change(batch->relid, queued_record(q), &q.remote, counters);
    }
    apply_discard_queued_inserts();
}

bool apply_queue_insert(Oid relid, const kafka_sync::DecodedRecord *rec, const RemoteChange *remote,
                        ApplyCounters *counters) {
    if (rec->op != 'c')
        return false;
    TargetInfo *t = target_for(relid);
    /* the executor path writes row by row as cheaply */
    if (t->direct || t->nkeys == 0 || table_has_tombstones(t))
        return false;
    List *row = row_params(t, rec->after);
    const int ncols = list_length(row);
    if (ncols == 0 || key_params(t, row, false) == NIL)
        return false;
    ListCell *lc;
    foreach (lc, row)
        if (!OidIsValid(t->array_types[static_cast<ColumnParam *>(lfirst(lc))->attnum - 1]))
            return false;
    if (!batch) {
        MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "kafka_sync insert batch", ALLOCSET_DEFAULT_SIZES);
        batch = static_cast<InsertBatch *>(MemoryContextAllocZero(TopMemoryContext, sizeof(InsertBatch)));
        batch->cxt = cxt;
    }
    /* the same table and the same columns as the rows waiting, or those go first */
    bool same = batch->nrows > 0 && batch->relid == relid && batch->t == t && batch->ncols == ncols;
    if (same)
        foreach (lc, row)
            same &= batch->attnums[foreach_current_index(lc)] == static_cast<ColumnParam *>(lfirst(lc))->attnum;
    if (!same || batch->nrows == kMaxBatch)
        apply_flush_inserts(counters);
    MemoryContext old = MemoryContextSwitchTo(batch->cxt);
    if (batch->nrows == 0) {
        batch->relid = relid;
        batch->t = t;
        batch->ncols = ncols;
        batch->attnums = static_cast<AttrNumber *>(palloc(sizeof(AttrNumber) * ncols));
        batch->names = static_cast<char **>(palloc(sizeof(char *) * ncols));
        foreach (lc, row) {
            const AttrNumber attnum = static_cast<ColumnParam *>(lfirst(lc))->attnum;
            batch->attnums[foreach_current_index(lc)] = attnum;
            batch->names[foreach_current_index(lc)] = get_attname(relid, attnum, false);
        }
    }
    QueuedInsert &q = batch->rows[batch->nrows++];
    q.values = static_cast<char **>(palloc(sizeof(char *) * ncols));
    foreach (lc, row) {
        const char *v = static_cast<ColumnParam *>(lfirst(lc))->value;
        q.values[foreach_current_index(lc)] = v ? pstrdup(v) : nullptr;
    }
    q.remote = *remote;
    q.remote.row_origin = pstrdup(remote->row_origin);
    q.schema = pstrdup(rec->schema);
    q.table = pstrdup(rec->table);
    MemoryContextSwitchTo(old);
    return true;
}

void apply_begin_call(bool keep_writer) {
    kafka_sync::begin_apply_call(keep_writer);
    apply_discard_queued_inserts(); /* left by a call that failed */
}

void apply_close_writer() {
    kafka_sync::ApplyTxn &txn = kafka_sync::apply_txn();
    if (!txn.open_writer)
        return;
    RowWriter *w = txn.open_writer;
    txn.open_writer = nullptr; /* not closed twice, whatever happens */
    row_writer_close(w);
}

Oid apply_target_relid(const char *schema, const char *table) {
    if (strcmp(schema, "kafka_sync") == 0 || strcmp(schema, "pg_catalog") == 0 ||
        strcmp(schema, "information_schema") == 0 || strncmp(schema, "pg_toast", 8) == 0 ||
        strncmp(schema, "pg_temp", 7) == 0)
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("a record may not change table %s.%s", schema, table),
                        errdetail("System schemas and kafka_sync's own schema are never targets of sync.")));
    /* the table of the previous record, within one call (its transaction holds a lock on it) */
    kafka_sync::ApplyCall &call = kafka_sync::apply_call();
    if (OidIsValid(call.last_relid) && strcmp(schema, call.last_schema) == 0 && strcmp(table, call.last_table) == 0)
        return call.last_relid;
    Oid nsp = get_namespace_oid(schema, true);
    Oid relid = OidIsValid(nsp) ? get_relname_relid(table, nsp) : InvalidOid;
    if (!OidIsValid(relid))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
                        errmsg("table \"%s\".\"%s\" of the record does not exist here", schema, table),
                        errhint("Create the table, with the same columns as on the peer, on every node.")));
    char kind = get_rel_relkind(relid);
    if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
        ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
                        errmsg("\"%s\".\"%s\" is not a table", schema, table)));
    if (strlen(schema) < NAMEDATALEN && strlen(table) < NAMEDATALEN) {
        strlcpy(call.last_schema, schema, sizeof(call.last_schema));
        strlcpy(call.last_table, table, sizeof(call.last_table));
        call.last_relid = relid;
    }
    return relid;
}

void apply_row_change(Oid relid, const kafka_sync::DecodedRecord *rec, const RemoteChange *remote,
                      ApplyCounters *counters) {
    TargetInfo *t = target_for(relid);
    Change ch{t, remote, counters, rec->has_after ? row_params(t, rec->after) : NIL, nullptr};
    /* an insert (or an update creating its row) through the executor fills no defaults: all columns needed */
    if (t->direct && (rec->op == 'd' || covers_all_columns(t, ch.after)))
        ch.w = writer_for(t);
    else
        apply_close_writer();
    if (ch.w)
        row_writer_begin_change(ch.w);
    switch (rec->op) {
    case 'c':
    case 'r':
        apply_insert(ch, rec);
        break;
    case 'u':
        require_key(t, "an UPDATE");
        apply_update(ch, rec);
        break;
    case 'd':
        require_key(t, "a DELETE");
        apply_delete(ch, rec);
        break;
    default:
        elog(ERROR, "kafka_sync: unexpected operation '%c'", rec->op);
    }
    if (ch.w) {
        row_writer_end_change(ch.w);
        if (!kafka_sync::apply_call().keep_writers)
            row_writer_close(ch.w);
    }
    counters->applied++;
}

bytea *apply_row_key(Oid relid, const kafka_sync::DecodedRecord *rec) {
    TargetInfo *t = target_for(relid);
    if (t->nkeys == 0 || !rec->has_after)
        return nullptr;
    List *key = key_params(t, row_params(t, rec->after), false);
    return key == NIL ? nullptr : key_bytes(t, key);
}

void apply_truncate(List *relids) {
    apply_close_writer();
    StringInfoData sql;
    initStringInfo(&sql);
    appendStringInfoString(&sql, "TRUNCATE ");
    ListCell *lc;
    Oid owner_id = InvalidOid;
    foreach (lc, relids) {
        TargetInfo *t = target_for(lfirst_oid(lc));
        appendStringInfo(&sql, "%s%s", foreach_current_index(lc) > 0 ? ", " : "", t->qualified_name);
        if (OidIsValid(owner_id) && owner_id != t->owner)
            ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                            errmsg("a TRUNCATE of tables of different owners cannot be applied (%s)", sql.data),
                            errdetail("A peer's changes run as the owner of the tables they write."),
                            errhint("Give the tables truncated together one owner.")));
        owner_id = t->owner;
    }
    OwnerContext owner;
    switch_to_owner(owner_id, sql.data, &owner);
    int rc = SPI_execute(sql.data, false, 0);
    restore_user(&owner);
    if (rc != SPI_OK_UTILITY)
        elog(ERROR, "kafka_sync could not apply \"%s\": %s", sql.data, SPI_result_code_string(rc));
}
