// See target_tables.hpp.
#include "apply/target_tables.hpp"
#include "apply/row_writer.hpp"
#include "apply/run_as_owner.hpp"
#include "common/identity_key.hpp"
#include "apply/apply_state.hpp"

extern "C" {
#include "access/htup_details.h"
#include "commands/trigger.h"
#include "utils/reltrigger.h"
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

namespace kafka_sync {

namespace {

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

template <typename P> void free_and_clear(P *&p) {
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
    char *qualified =
        quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)), RelationGetRelationName(rel));
    MemoryContext old = MemoryContextSwitchTo(apply_cache_context);
    t->qualified_name = pstrdup(qualified);
    t->natts = desc->natts;
    t->quoted_names = static_cast<char **>(palloc0(sizeof(char *) * Max(desc->natts, 1)));
    t->names = static_cast<char **>(palloc0(sizeof(char *) * Max(desc->natts, 1)));
    t->types = static_cast<Oid *>(palloc0(sizeof(Oid) * Max(desc->natts, 1)));
    t->in_funcs = static_cast<FmgrInfo *>(palloc0(sizeof(FmgrInfo) * Max(desc->natts, 1)));
    t->ioparams = static_cast<Oid *>(palloc0(sizeof(Oid) * Max(desc->natts, 1)));
    t->typmods = static_cast<int32 *>(palloc0(sizeof(int32) * Max(desc->natts, 1)));
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
    /*
     * A deferrable constraint trigger (other than a foreign key's, whose
     * checks switch to the table's owner themselves) may fire at the commit,
     * after the change has switched back from the owner: it would run with
     * the sidecar's rights.
     */
    for (int i = 0; rel->trigdesc && i < rel->trigdesc->numtriggers; i++) {
        const Trigger *trig = &rel->trigdesc->triggers[i];
        if (trig->tgdeferrable && trig->tgenabled != TRIGGER_DISABLED &&
            RI_FKey_trigger_type(trig->tgfoid) == RI_TRIGGER_NONE)
            ereport(ERROR,
                    (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                     errmsg("table %s has a deferrable constraint trigger \"%s\"", t->qualified_name, trig->tgname),
                     errdetail("A peer's changes run as the table's owner; a trigger deferred to the commit would run "
                               "as the sidecar's role instead."),
                     errhint("Make the trigger NOT DEFERRABLE, or leave the table out of the subscription.")));
    }
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

} // namespace

HTAB *plan_cache() {
    ensure_caches();
    return plans;
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
                            errmsg("the record lacks key column %s of table %s", t->quoted_names[t->key_attnums[i] - 1],
                                   t->qualified_name)));
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
    SPIPlanPtr plan = cached_plan(
        key, nparams,
        [&](StringInfo sql) {
            build(t, set, where, sql);
            Oid *types = static_cast<Oid *>(palloc(sizeof(Oid) * Max(nparams, 1)));
            ListCell *lc;
            foreach (lc, all) {
                const AttrNumber attnum = static_cast<ColumnParam *>(lfirst(lc))->attnum;
                types[foreach_current_index(lc)] = attnum == kWriterParam ? TEXTOID : t->types[attnum - 1];
            }
            return types;
        },
        &temporary);

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

void append_column_list(TargetInfo *t, List *params, StringInfo sql, const char *sep, const char *fmt,
                        int first_param) {
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
 * Whether kafka_sync.tombstones holds keys of this table, looked up once per
 * apply call: an insert into a table without any needs no lookup at all.
 */
bool table_has_tombstones(TargetInfo *t) {
    if (t->has_tombstones)
        return true; /* they go only after kafka_sync.tombstone_retention */
    ApplyCall &call = apply_call();
    if (call.tombstones_checked(t->relid))
        return false;
    t->has_tombstones = tombstones_exist(t->relid);
    call.note_tombstones_checked(t->relid);
    return t->has_tombstones;
}

} // namespace kafka_sync
