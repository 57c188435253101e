// Inserts of new keys, batched: a run of "c" records for one table with the
// same columns becomes one INSERT ... SELECT FROM unnest(<one array per
// column>) ON CONFLICT DO NOTHING; the rows it did not insert (their key
// exists here) go through the conflict path one by one afterwards
// (table_apply.hpp: apply_queue_insert, apply_flush_inserts).
#include "apply/table_apply.hpp"
#include "apply/target_tables.hpp"
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

using namespace kafka_sync;

namespace {

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
    char **values;       /* by position in InsertBatch::attnums; NULL: SQL NULL */
    RemoteChange remote; /* with row_origin copied */
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

} // namespace

void apply_discard_queued_inserts() {
    if (batch) {
        MemoryContextReset(batch->cxt);
        batch->nrows = 0;
        batch->t = nullptr;
    }
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
        arrays[c] =
            PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, t->types[a], typlen, typbyval, typalign));
    }
    StringInfoData key;
    initStringInfo(&key);
    appendStringInfo(&key, "%u:B:", t->relid);
    append_plan_key(&key, cols);
    bool temporary;
    SPIPlanPtr plan = cached_plan(
        key, ncols,
        [&](StringInfo sql) {
            build_batch_insert(t, cols, NIL, sql);
            Oid *types = static_cast<Oid *>(palloc(sizeof(Oid) * ncols));
            for (int c = 0; c < ncols; c++)
                types[c] = t->array_types[batch->attnums[c] - 1];
            return types;
        },
        &temporary);
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
