// The tables the apply side writes, as it knows them: per table its names,
// key, column types and input functions, and the plans of the statements
// it runs on it (cached until the table's definition changes), plus the SQL
// those statements are built from. Internal to extension/apply/
// (target_tables.cpp; used by table_apply.cpp).
#pragma once

#include "apply/conflicts.hpp"
#include "wire/record_decoder.hpp"

extern "C" {
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/hsearch.h"
}

#include <vector>

namespace kafka_sync {

/* Per target table: names, key, input functions. */
struct TargetInfo {
    Oid relid; /* hash key */
    bool valid;
    char *qualified_name; /* quoted schema.table */
    int natts;
    char **quoted_names; /* by attnum - 1; NULL for dropped/generated */
    char **names;        /* by attnum - 1, as in the catalog; NULL for dropped */
    Oid *types;
    FmgrInfo *in_funcs;
    Oid *ioparams;
    int32 *typmods;
    bool *owner_input; /* the column's input runs code a role wrote (a domain, a type not built in): as the owner */
    int nkeys;
    AttrNumber *key_attnums; /* primary key (or replica identity index) */
    bool has_tombstones;     /* once seen, until the entry is rebuilt; else looked at once per call */
    /* written through the executor (row_writer.hpp), as checked for this role; else through SPI */
    bool direct;
    Oid direct_checked_for;
    Oid owner; /* changes run as this role (run_as_owner.hpp) */
    Oid key_index;
    int nwritable; /* columns neither dropped nor generated */
};

/* The entry of relid, built (or rebuilt after a change of the table) and locked RowExclusive. */
TargetInfo *target_for(Oid relid);

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
Datum param_datum(TargetInfo *t, ColumnParam *p);
/* Columns of a row image that exist (and are writable) here. */
List *row_params(TargetInfo *t, const std::vector<DecodedColumn> &row);
bool is_key(TargetInfo *t, AttrNumber attnum);
/* Key values from a row image: all key columns must be present (required), or NIL. */
List *key_params(TargetInfo *t, List *row, bool required);
void require_key(TargetInfo *t, const char *what);
/* Whether kafka_sync.tombstones holds keys of the table (looked at once per apply call until it does). */
bool table_has_tombstones(TargetInfo *t);

/* Statements: their plan cache, keyed "relid:op:attnums". */
constexpr int kPlanKeyLen = 512;
struct PlanEntry {
    char key[kPlanKeyLen]; /* "relid:op:attnums" */
    SPIPlanPtr plan;
};
HTAB *plan_cache();
void append_plan_key(StringInfo key, List *params);
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
        if (auto *entry = static_cast<PlanEntry *>(hash_search(plan_cache(), key.data, HASH_FIND, nullptr)))
            return entry->plan;
    StringInfoData sql;
    initStringInfo(&sql);
    Oid *types = describe(&sql);
    SPIPlanPtr plan = SPI_prepare(sql.data, nparams, types);
    if (!plan)
        elog(ERROR, "kafka_sync could not prepare \"%s\": %s", sql.data, SPI_result_code_string(SPI_result));
    if (cacheable) {
        SPI_keepplan(plan);
        static_cast<PlanEntry *>(hash_search(plan_cache(), key.data, HASH_ENTER, nullptr))->plan = plan;
    }
    return plan;
}

/*
 * Runs sql (built only when not cached) with params = set ++ where, typed as
 * their columns (the writer parameter as text), as the table's owner.
 * Returns the number of rows processed; a statement's returned rows are in
 * SPI_tuptable.
 */
uint64 run(TargetInfo *t, char op, List *set, List *where, void (*build)(TargetInfo *, List *, List *, StringInfo));
void append_column_list(TargetInfo *t, List *params, StringInfo sql, const char *sep, const char *fmt, int first_param);
/* The statements run() builds. */
void build_update(TargetInfo *t, List *set, List *where, StringInfo sql);
void build_update_if_writer(TargetInfo *t, List *set, List *where, StringInfo sql);
void build_delete(TargetInfo *t, List *, List *where, StringInfo sql);
void build_lookup(TargetInfo *t, List *, List *where, StringInfo sql);
void build_row_json(TargetInfo *t, List *, List *where, StringInfo sql);
void build_insert(TargetInfo *t, List *set, List *, StringInfo sql);

} // namespace kafka_sync
