// Conflicts as they are logged and reported: kafka_sync.conflicts (bounded
// in rows and in the size of what a row keeps), and the error of the "error"
// strategy. What is a conflict: conflict_policy.cpp; row versions and
// tombstones: conflicts.cpp.
#include "apply/conflicts.hpp"
#include "common/settings.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
}

namespace {

const char *describe_version(const RowVersion &v) {
    if (!v.known)
        return "at an unknown time";
    return psprintf("by node %s at %s", v.node[0] ? v.node : "(unknown)", timestamptz_to_str(v.ts));
}

} // namespace

const char *bounded_json_image(const char *text) {
    if (!text)
        return nullptr;
    const size_t len = strlen(text);
    if (len <= size_t(apply_max_logged_value_size))
        return text;
    return psprintf("{\"kafka_sync.omitted_bytes\": %zu}", len);
}

void raise_conflict(const char *kind, const char *table, const char *key_json, const RowVersion *local,
                    const RowVersion &remote) {
    ereport(ERROR,
            (errcode(ERRCODE_KAFKA_SYNC_CONFLICT),
             errmsg("conflict %s on table %s, key %s", kind, table, key_json ? bounded_json_image(key_json) : "(none)"),
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
        Oid types[12] = {TEXTOID, TEXTOID, TEXTOID,        TEXTOID, TEXTOID, TIMESTAMPTZOID,
                         TEXTOID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID};
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
