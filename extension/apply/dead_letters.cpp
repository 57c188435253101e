// Records that could not be applied: kept in kafka_sync.dead_letters,
// bounded in number and size (apply_context.hpp).
#include "apply/apply_context.hpp"
#include "apply/apply_state.hpp"
#include "apply/conflicts.hpp"
#include "wire/record_decoder.hpp"
#include "apply/resync.hpp"
#include "apply/run_as_owner.hpp"
#include "apply/table_apply.hpp"

#include "boundary/pg_boundary.hpp"
#include "common/origin_names.hpp"
#include "common/unix_time.hpp"

extern "C" {
#include "access/htup_details.h"
#include "access/xact.h"
#include "nodes/parsenodes.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "replication/origin.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/guc.h"
#include "storage/proc.h"
#include "catalog/pg_replication_origin.h"
#include "storage/lmgr.h"
#include "utils/pg_lsn.h"
#include "mb/pg_wchar.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "catalog/dependency.h"
#include "catalog/partition.h"
#include "catalog/pg_publication.h"
#include "commands/extension.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
}

namespace kafka_sync {

/*
 * An error message may quote the value it refused ("invalid input syntax for
 * type ...: ..."), which a peer chose: what is stored of it is bounded like a
 * row image (at least 1 kB of it is kept).
 */
const char *bounded_message(const char *error) {
    const int limit = Max(apply_max_logged_value_size, 1024);
    const int len = strlen(error);
    if (len <= limit)
        return error;
    const int kept = pg_mbcliplen(error, len, limit);
    return psprintf("%.*s... (%d bytes of the message omitted)", kept, error, len - kept);
}

void insert_dead_letter(const Subscription *sub, const ChunkRecord *r, const char *error) {
    static SPIPlanPtr plan = nullptr;
    if (!plan) {
        Oid types[9] = {TEXTOID, TEXTOID, INT4OID, INT8OID, BYTEAOID, BYTEAOID, TEXTOID, TEXTOID, INT4OID};
        plan = keep_plan(
            "INSERT INTO kafka_sync.dead_letters (sub_name, topic, kafka_partition, kafka_offset, key, value, "
            "headers, error, value_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)",
            9, types);
    }
    auto *headers = new_in_context<kafka_sync::DecodedHeaders>(CurrentMemoryContext);
    kafka_sync::ks_guard([&]() {
        std::string ignored;
        kafka_sync::decode_headers(r->headers, r->headers_len, *headers, ignored, true);
    });
    Datum values[9];
    char nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
    values[0] = CStringGetTextDatum(sub->name);
    values[1] = CStringGetTextDatum(sub->topic);
    values[2] = Int32GetDatum(0);
    values[3] = Int64GetDatum(r->offset);
    auto to_bytea = [](const char *data, int len) {
        bytea *b = static_cast<bytea *>(palloc(VARHDRSZ + len));
        SET_VARSIZE(b, VARHDRSZ + len);
        memcpy(VARDATA(b), data, len);
        return PointerGetDatum(b);
    };
    /*
     * What is kept of a record is bounded (kafka_sync.max_logged_value_size):
     * a peer's records may each be hundreds of MB. The record itself stays
     * in Kafka at its offset while the topic keeps it.
     */
    const int limit = apply_max_logged_value_size;
    if (r->key_len >= 0 && r->key_len <= limit)
        values[4] = to_bytea(r->key, r->key_len);
    else
        nulls[4] = 'n';
    if (r->value_len >= 0 && r->value_len <= limit)
        values[5] = to_bytea(r->value, r->value_len);
    else
        nulls[5] = 'n';
    values[6] = CStringGetTextDatum(headers->as_json.empty() ? "{}" : bounded_json_image(headers->as_json.c_str()));
    error = bounded_message(error);
    if (r->value_len > limit || r->key_len > limit)
        error = psprintf("%s (the record's %s of %d bytes is larger than kafka_sync.max_logged_value_size and is not "
                         "kept here; it is at offset %lld of topic %s while Kafka keeps it)",
                         error, r->value_len > limit ? "value" : "key",
                         r->value_len > limit ? r->value_len : r->key_len, (long long)r->offset, sub->topic);
    values[7] = CStringGetTextDatum(error);
    if (r->value_len >= 0)
        values[8] = Int32GetDatum(r->value_len);
    else
        nulls[8] = 'n';
    if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "kafka_sync could not store a dead letter");
    /*
     * Bounded, as kafka_sync.conflicts: a peer that sends only bad records
     * must not fill the disk. The oldest go first, in batches of a tenth of
     * the limit; each record is still in Kafka at its offset.
     */
    static SPIPlanPtr prune_plan = nullptr;
    static int64 since_prune = 0;
    if (apply_dead_letter_max_rows > 0 && ++since_prune >= Max(1, apply_dead_letter_max_rows / 10)) {
        since_prune = 0;
        if (!prune_plan) {
            Oid prune_types[2] = {INT8OID, TEXTOID};
            /* per subscription: one that skips bad records never prunes the one a paused subscription waits on */
            prune_plan = keep_plan("DELETE FROM kafka_sync.dead_letters d WHERE d.sub_name = $2 AND d.id <= "
                                   "(SELECT max(x.id) FROM kafka_sync.dead_letters x WHERE x.sub_name = $2) - $1",
                                   2, prune_types);
        }
        Datum limit[2] = {Int64GetDatum(apply_dead_letter_max_rows), CStringGetTextDatum(sub->name)};
        if (SPI_execute_plan(prune_plan, limit, nullptr, false, 0) != SPI_OK_DELETE)
            elog(ERROR, "kafka_sync could not prune kafka_sync.dead_letters");
    }
}

char *describe_error(ErrorData *edata) {
    StringInfoData s;
    initStringInfo(&s);
    appendStringInfoString(&s, edata->message ? edata->message : "unknown error");
    if (edata->detail)
        appendStringInfo(&s, " (%s)", edata->detail);
    if (edata->context)
        appendStringInfo(&s, "; %s", edata->context);
    return s.data;
}

bool is_transient(int sqlerrcode) {
    return ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_TRANSACTION_ROLLBACK ||
           sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE || sqlerrcode == ERRCODE_QUERY_CANCELED ||
           sqlerrcode == ERRCODE_ADMIN_SHUTDOWN;
}

/* A foreign key or unique constraint other than the key refused the record: a conflict of kind "constraint". */
void log_constraint_conflict(const ApplyContext *ctx, const char *message, const char *resolution) {
    ConflictRecord c;
    memset(&c, 0, sizeof(c));
    c.sub_name = ctx->sub->name;
    c.peer = ctx->sub->peer;
    c.table = ctx->rec ? current_table(ctx) : "(unknown)";
    c.kind = kafka_sync::conflict_kind_name(kafka_sync::ConflictKind::Constraint);
    c.remote_row_json = nullptr;
    c.key_json = nullptr;
    c.resolution = resolution;
    (void)message;
    log_conflict(c);
}

} // namespace kafka_sync
