// Applying one decoded change to a local table (see table_apply.hpp): the
// row looked up and locked, the conflict policy asked (conflict_policy.cpp),
// and the change written through the executor (row_writer.cpp) or SQL.
#include "apply/table_apply.hpp"
#include "apply/apply_state.hpp"
#include "apply/row_writer.hpp"
#include "apply/run_as_owner.hpp"
#include "apply/target_tables.hpp"
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

/* The local row of a key: locked, with its version. */
struct LocalRow {
    bool found;
    RowVersion version;
};
struct RowStore;

/*
 * One change being applied: the table, where it comes from, the counters,
 * how its rows are read and written, and the row writer when that is the
 * executor.
 */
struct Change {
    TargetInfo *t;
    const RemoteChange *remote;
    ApplyCounters *counters;
    List *after; /* the record's row image after the change (row_params), NIL: none */
    const RowStore *rows;
    RowWriter *w; /* the executor store's state; NULL with the SQL store */
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

/*
 * How a table's rows are read and written, chosen once per table (as
 * pglogical picks heap or SPI): through the executor (row_writer.cpp: index
 * lookups, heap writes, the table's triggers and constraints), or through
 * SQL statements for tables the executor path cannot serve
 * (row_writer_usable). The one exception, per change: an insert (or an
 * update that creates its row) whose record lacks columns goes through SQL,
 * which fills the table's defaults. The row a lookup finds is locked; the
 * executor store remembers it for the update or delete that follows.
 */
struct RowStore {
    /* The row of key, locked, with its version. */
    virtual LocalRow lookup(const Change &ch, List *key) const = 0;
    /* false: a row with this key exists (inserted meanwhile by a concurrent local transaction, say). */
    virtual bool insert(const Change &ch, List *row) const = 0;
    /* Sets set in the row of where, which the last lookup found. */
    virtual void update(const Change &ch, List *set, List *where) const = 0;
    /* Deletes the row of key, which the last lookup found. */
    virtual void remove(const Change &ch, List *key) const = 0;
    /* The common update in one step, when the row's last writer is node; false: not done (look the row up). */
    virtual bool update_if_written_by(const Change &ch, List *set, List *where, const char *node) const = 0;
};

struct ExecutorStore final : RowStore {
    LocalRow lookup(const Change &ch, List *key) const override {
        LocalRow row{false, RowVersion()};
        Datum *values;
        bool *isnull;
        row_datums(ch, key, &values, &isnull, nullptr);
        TransactionId xmin = InvalidTransactionId;
        if (!row_writer_find(ch.w, values, isnull, &xmin))
            return row;
        row.found = true;
        row.version = row_version_of_xid(xmin, ch.remote->local_node);
        return row;
    }
    bool insert(const Change &ch, List *row) const override {
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
    void update(const Change &ch, List *set, List *) const override {
        if (set == NIL)
            return;
        Datum *values;
        bool *isnull, *replace;
        row_datums(ch, set, &values, &isnull, &replace);
        row_writer_update(ch.w, values, isnull, replace);
    }
    void remove(const Change &ch, List *) const override { row_writer_delete(ch.w); }
    bool update_if_written_by(const Change &, List *, List *, const char *) const override { return false; }
};

struct SqlStore final : RowStore {
    LocalRow lookup(const Change &ch, List *key) const override {
        LocalRow row{false, RowVersion()};
        run(ch.t, 'l', NIL, key, build_lookup);
        if (SPI_processed == 0)
            return row;
        bool isnull;
        const TransactionId xmin =
            DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
        row.found = true;
        row.version = row_version_of_xid(xmin, ch.remote->local_node);
        return row;
    }
    bool insert(const Change &ch, List *row) const override { return run(ch.t, 'i', row, NIL, build_insert) > 0; }
    void update(const Change &ch, List *set, List *where) const override {
        if (set != NIL)
            run(ch.t, 'u', set, where, build_update);
    }
    void remove(const Change &ch, List *key) const override { run(ch.t, 'd', NIL, key, build_delete); }
    bool update_if_written_by(const Change &ch, List *set, List *where, const char *node) const override {
        if (set == NIL)
            return false;
        auto *writer = static_cast<ColumnParam *>(palloc0(sizeof(ColumnParam)));
        writer->attnum = kWriterParam;
        writer->value = node;
        return run(ch.t, 'U', set, lappend(list_copy(where), writer), build_update_if_writer) > 0;
    }
};

const ExecutorStore executor_store;
const SqlStore sql_store;

LocalRow lookup(const Change &ch, List *key) {
    return ch.rows->lookup(ch, key);
}
void update_row(const Change &ch, List *set, List *where) {
    ch.rows->update(ch, set, where);
}
void delete_row(const Change &ch, List *key) {
    ch.rows->remove(ch, key);
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
    if (ch.remote->in_progress)
        ereport(ERROR, (errcode(ERRCODE_KAFKA_SYNC_CONFLICT),
                        errmsg("a change of a transaction still in progress at the peer meets a conflict (%s) on %s",
                               kind, t->qualified_name),
                        errdetail("Resolving it needs the transaction's commit time, known at its commit."),
                        errhint("The sidecar applies the transaction when its commit record arrives.")));
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

bool insert_row(const Change &ch, List *row) {
    return ch.rows->insert(ch, row);
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
void overwrite_row(const Change &ch, List *row, List *key) {
    update_row(ch, non_key(ch.t, row), key);
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
    /* the common case, the row as the same node left it */
    if (ch.rows->update_if_written_by(ch, set, where, ch.remote->version.node))
        return;
    LocalRow local = lookup(ch, where);
    if (!local.found) {
        bool found;
        RowVersion tomb = find_tombstone(t->relid, key_bytes(t, where), ch.remote->local_node, &found);
        if (!decided(ch, kafka_sync::ChangeOp::Update,
                     found ? kafka_sync::LocalState::Tombstone : kafka_sync::LocalState::Nothing,
                     found ? &tomb : nullptr, where, after) ||
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
    decided(ch, kafka_sync::ChangeOp::Delete,
            found ? kafka_sync::LocalState::Tombstone : kafka_sync::LocalState::Nothing, found ? &tomb : nullptr, key,
            NIL);
    if (!found || compare_versions(ch.remote->version, tomb) > 0) {
        write_tombstone(t->relid, kb);
        t->has_tombstones = true;
    }
}
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
    /* kept only at the top level: a subtransaction's abort would release its executor state */
    if (!kafka_sync::apply_call().keep_writers || !txn.may_note())
        return row_writer_open(t->relid, t->key_index); /* closed after the change */
    MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
    RowWriter *w = row_writer_open(t->relid, t->key_index);
    MemoryContextSwitchTo(old);
    txn.open_writer = w;
    txn.open_writer_relid = t->relid;
    return w;
}
} // namespace

void apply_begin_call(bool keep_writer) {
    kafka_sync::begin_apply_call(keep_writer);
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
        ereport(ERROR,
                (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("a record may not change table %s.%s", schema, table),
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
        ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE), errmsg("\"%s\".\"%s\" is not a table", schema, table)));
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
    Change ch{t, remote, counters, rec->has_after ? row_params(t, rec->after) : NIL, &sql_store, nullptr};
    /* an insert (or an update creating its row) through the executor fills no defaults: all columns needed */
    if (t->direct && (rec->op == 'd' || covers_all_columns(t, ch.after))) {
        ch.rows = &executor_store;
        ch.w = writer_for(t);
    } else {
        apply_close_writer();
    }
    if (ch.w)
        row_writer_begin_change(ch.w);
    switch (rec->op) {
    case 'c':
    case 'r': apply_insert(ch, rec); break;
    case 'u':
        require_key(t, "an UPDATE");
        apply_update(ch, rec);
        break;
    case 'd':
        require_key(t, "a DELETE");
        apply_delete(ch, rec);
        break;
    default: elog(ERROR, "kafka_sync: unexpected operation '%c'", rec->op);
    }
    if (ch.w) {
        row_writer_end_change(ch.w);
        if (ch.w != kafka_sync::apply_txn().open_writer)
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
