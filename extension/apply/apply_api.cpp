// The apply functions the sidecar calls: apply_chunk, apply_transactions,
// record_failure.
//
// They run under the subscription's replication origin
// (common/origin_names.hpp): the rows they write carry the origin (so the
// output plugin never republishes them), and the origin's progress (source
// commit LSN and time) plus the subscription's Kafka offset are set in the
// same local transaction as the rows, so they commit atomically with them.
// A record at or below the origin's committed progress is skipped: Kafka
// duplicates and sidecar restarts change nothing. apply_chunk and
// apply_transactions share one record loop and differ in their commit
// policy only.
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

PG_FUNCTION_INFO_V1(kafka_sync_apply_chunk);
PG_FUNCTION_INFO_V1(kafka_sync_record_failure);
PG_FUNCTION_INFO_V1(kafka_sync_apply_transactions);
PG_FUNCTION_INFO_V1(kafka_sync_release_origin);
PG_FUNCTION_INFO_V1(kafka_sync_apply_hold);
PG_FUNCTION_INFO_V1(kafka_sync_apply_stream_begin);
PG_FUNCTION_INFO_V1(kafka_sync_apply_stream_commit);
}

namespace kafka_sync {
namespace {

/* Data and length of a bytea array element; length -1 for NULL. */
void bytea_field(Datum d, bool isnull, const char **data, int *len) {
    if (isnull) {
        *data = nullptr;
        *len = -1;
        return;
    }
    bytea *b = DatumGetByteaPP(d);
    *data = VARDATA_ANY(b);
    *len = (int)VARSIZE_ANY_EXHDR(b);
}

void deconstruct(ArrayType *arr, Oid type, const char *what, int expected, Datum **values, bool **nulls) {
    int n;
    int16 typlen;
    bool typbyval;
    char typalign;
    get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
    deconstruct_array(arr, type, typlen, typbyval, typalign, values, nulls, &n);
    if (n != expected)
        ereport(ERROR, (errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
                        errmsg("apply_chunk: %s has %d elements, offsets has %d", what, n, expected)));
}

/* The records of apply_chunk / apply_transactions, from arguments 1..4. */
struct ChunkArgs {
    int n;
    Datum *offsets, *keys, *vals, *hdrs;
    bool *offset_nulls, *key_nulls, *val_nulls, *hdr_nulls;
};

ChunkArgs read_chunk_args(FunctionCallInfo fcinfo) {
    for (int i = 0; i <= 4; i++)
        if (PG_ARGISNULL(i))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("apply arguments must not be null")));
    ChunkArgs a;
    ArrayType *offsets_arr = PG_GETARG_ARRAYTYPE_P(1);
    a.n = ArrayGetNItems(ARR_NDIM(offsets_arr), ARR_DIMS(offsets_arr));
    deconstruct(offsets_arr, INT8OID, "offsets", a.n, &a.offsets, &a.offset_nulls);
    deconstruct(PG_GETARG_ARRAYTYPE_P(2), BYTEAOID, "keys", a.n, &a.keys, &a.key_nulls);
    deconstruct(PG_GETARG_ARRAYTYPE_P(3), BYTEAOID, "vals", a.n, &a.vals, &a.val_nulls);
    deconstruct(PG_GETARG_ARRAYTYPE_P(4), BYTEAOID, "headers", a.n, &a.hdrs, &a.hdr_nulls);
    return a;
}

ChunkRecord chunk_record(const ChunkArgs &a, int i) {
    if (a.offset_nulls[i])
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("apply: offsets must not be null")));
    ChunkRecord r;
    r.offset = DatumGetInt64(a.offsets[i]);
    bytea_field(a.keys[i], a.key_nulls[i], &r.key, &r.key_len);
    bytea_field(a.vals[i], a.val_nulls[i], &r.value, &r.value_len);
    bytea_field(a.hdrs[i], a.hdr_nulls[i], &r.headers, &r.headers_len);
    if (r.headers_len < 0) {
        r.headers = "";
        r.headers_len = 0;
    }
    return r;
}

/*
 * The record loop of every apply call: each record in order, except the one
 * the subscription was resumed past (already a dead letter; its
 * transaction's other records still apply), goes to policy.apply, which
 * applies it and decides when to commit and what a failure does. Each
 * record's allocations go with it (ctx.record_context). Returns the offset
 * after the last record handled (-1: none); stops early when policy.apply
 * returns false. No C++ object with a destructor lives in these frames: an
 * ERROR unwinds them with longjmp.
 */
template <typename Policy> int64 drive_records(ApplyContext &ctx, const ChunkArgs &args, Policy &policy) {
    int64 next_offset = -1;
    MemoryContext outer = CurrentMemoryContext;
    for (int i = 0; i < args.n; i++) {
        ChunkRecord r = chunk_record(args, i);
        ctx.current = &r;
        if (r.offset == ctx.sub->skip_offset) {
            /* its key is not noted: a resync in progress must delete nothing for want of it */
            resync_not_applied(ctx.sub);
            ctx.counters.skipped++;
        } else {
            MemoryContextSwitchTo(ctx.record_context);
            const bool go_on = policy.apply(r, outer);
            MemoryContextSwitchTo(outer);
            MemoryContextReset(ctx.record_context);
            if (!go_on) {
                ctx.current = nullptr;
                return next_offset;
            }
        }
        next_offset = Max(next_offset, r.offset + 1);
        ctx.current = nullptr;
    }
    return next_offset;
}

/*
 * apply_chunk's commit policy: none. Its records join the sidecar's open
 * local transaction (part of a streamed source transaction, or whole ones).
 * Careful mode applies each record in a subtransaction of its own: a record
 * that fails is a dead letter (on_error = 'skip') or stops the call with the
 * failure (on_error = 'pause': the sidecar rolls back and records it).
 */
struct ChunkPolicy {
    ApplyContext &ctx;
    bool careful;
    int64 dead = 0;
    bool failed = false;
    int64 failed_offset = 0;
    char *failed_error = nullptr;

    bool apply(const ChunkRecord &r, MemoryContext) {
        if (!careful) {
            apply_record(&ctx);
            return true;
        }
        ErrorData *edata = kafka_sync::run_in_subtransaction(apply_record, &ctx);
        if (!edata)
            return true;
        if (is_transient(edata->sqlerrcode))
            ReThrowError(edata); /* a deadlock, say: the whole transaction is tried again */
        MemoryContext old = MemoryContextSwitchTo(ctx.call_context);
        char *message = describe_error(edata);
        MemoryContextSwitchTo(old);
        const bool conflict_pauses = edata->sqlerrcode == ERRCODE_KAFKA_SYNC_CONFLICT;
        const bool constraint = ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION;
        if (!ctx.sub->skip_on_error || conflict_pauses) {
            failed = true;
            failed_offset = r.offset;
            failed_error = message;
            return false;
        }
        if (constraint)
            log_constraint_conflict(&ctx, message, "dead_letter");
        ctx.current = nullptr;
        insert_dead_letter(ctx.sub, &r, message);
        /* its key may not be noted: the resync must not delete rows for want of it */
        resync_not_applied(ctx.sub);
        dead++;
        return true;
    }
};

/*
 * apply_transactions' commit policy: complete source transactions, each
 * committed here with its own origin progress and commit time. Consecutive
 * ones that committed in the same millisecond share one local commit;
 * snapshot rows commit per row time and last writer. Between commits the
 * procedure runs as its owner (see become_function_owner).
 */
struct TransactionsPolicy {
    ApplyContext &ctx;
    Oid fn_oid;
    OwnerContext &definer;
    bool open = false;                 /* this local transaction applied something */
    uint64 txn_lsn = 0;                /* its (last) source transaction */
    int64 txn_commit_ms = -1;          /* and that one's commit time; -1: unknown */
    int64 txn_row_ts = 0;              /* snapshot rows: their time */
    char txn_writer[NAMEDATALEN] = ""; /* and their last writer */

    /*
     * Only the call's last commit records the Kafka offset and the counters
     * (one row update per call, not per transaction): after a crash in
     * between, the consumer starts a little early and the origin's progress,
     * which every commit records, skips what was applied.
     */
    void commit(int64 next_offset) {
        finish_local_transaction(&ctx, next_offset);
        ctx.origin_ts_ms = 0;
        restore_user(&definer);
        SPI_commit();
        become_function_owner(fn_oid, &definer);
        apply_begin_call(true); /* what was looked up once per transaction is looked up again */
        ctx.progress = replorigin_session_get_progress(false);
        open = false;
    }

    bool apply(const ChunkRecord &, MemoryContext outer) {
        decode_record(&ctx);
        const kafka_sync::DecodedHeaders *h = ctx.headers;
        const bool snapshot_row = ctx.rec && ctx.rec->op == 'r';
        const int64 row_ts = snapshot_row ? snapshot_row_time(ctx.rec) : 0;
        const char *writer = snapshot_row && ctx.rec->row_origin ? ctx.rec->row_origin : "";
        const uint64 lsn = h->has_lsn ? h->lsn : txn_lsn;
        const int64 commit_ms = h->has_commit_ts && !snapshot_row ? h->commit_ts_ms : -1;
        const bool same_ms = commit_ms >= 0 && commit_ms == txn_commit_ms;
        if (open && ((lsn != txn_lsn && !same_ms) || row_ts != txn_row_ts || strcmp(writer, txn_writer) != 0)) {
            MemoryContext record = MemoryContextSwitchTo(outer);
            commit(-1);
            MemoryContextSwitchTo(record);
        }
        txn_lsn = lsn;
        txn_commit_ms = commit_ms;
        txn_row_ts = row_ts;
        strlcpy(txn_writer, writer, sizeof(txn_writer));
        if (ctx.rec) {
            apply_decoded(&ctx);
            open = true;
        }
        return true;
    }
};

} // namespace
} // namespace kafka_sync

using namespace kafka_sync;

extern "C" {

/*
 * apply_chunk(sub_name text, offsets int8[], keys bytea[], vals bytea[],
 *             headers bytea[], careful bool,
 *             OUT applied int8, OUT skipped int8, OUT conflicts int8,
 *             OUT dead_letters int8, OUT failed_offset int8, OUT failed_error text)
 *
 * Inside the sidecar's transaction block: part of one source transaction (a
 * streamed one), or one source transaction in careful mode.
 */
Datum kafka_sync_apply_chunk(PG_FUNCTION_ARGS) {
    if (!IsTransactionBlock())
        ereport(ERROR, (errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
                        errmsg("kafka_sync.apply_chunk() must run inside a transaction block"),
                        errdetail("A source transaction is applied whole, in one local transaction.")));
    ChunkArgs args = read_chunk_args(fcinfo);
    char *sub_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
    const bool careful = !PG_ARGISNULL(5) && PG_GETARG_BOOL(5);

    TupleDesc tupdesc;
    if (get_call_result_type(fcinfo, nullptr, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");

    MemoryContext call_context = CurrentMemoryContext;
    /* as its owner, as apply_transactions (there: why) */
    OwnerContext definer;
    become_function_owner(fcinfo->flinfo->fn_oid, &definer);
    SPI_connect();
    ApplyContext ctx;
    ErrorContextCallback errcallback;
    begin_apply(&ctx, sub_name, careful, call_context, &errcallback);
    ChunkPolicy policy{ctx, careful};
    const int64 next_offset = drive_records(ctx, args, policy);
    if (!policy.failed)
        finish_local_transaction(&ctx, next_offset);
    error_context_stack = errcallback.previous;

    MemoryContext spi_context = MemoryContextSwitchTo(call_context);
    Datum values[6];
    bool nulls[6] = {false, false, false, false, !policy.failed, !policy.failed};
    values[0] = Int64GetDatum(ctx.counters.applied);
    values[1] = Int64GetDatum(ctx.counters.skipped);
    values[2] = Int64GetDatum(ctx.counters.conflicts);
    values[3] = Int64GetDatum(policy.dead);
    values[4] = Int64GetDatum(policy.failed_offset);
    values[5] = policy.failed ? CStringGetTextDatum(policy.failed_error) : (Datum)0;
    HeapTuple tuple = heap_form_tuple(tupdesc, values, nulls);
    MemoryContextSwitchTo(spi_context);
    SPI_finish();
    restore_user(&definer);
    PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}

/*
 * CALL apply_transactions(sub_name text, offsets int8[], keys bytea[],
 *                         vals bytea[], headers bytea[],
 *                         INOUT applied int8, INOUT skipped int8, INOUT conflicts int8)
 *
 * Complete source transactions, committed here (TransactionsPolicy). An
 * error stops the call: what was committed stays, the rest is read again.
 */
Datum kafka_sync_apply_transactions(PG_FUNCTION_ARGS) {
    auto *call = fcinfo->context && IsA(fcinfo->context, CallContext) ? (CallContext *)fcinfo->context : nullptr;
    if (!call || call->atomic)
        ereport(ERROR, (errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
                        errmsg("kafka_sync.apply_transactions() must be CALLed outside a transaction block"),
                        errdetail("It commits each source transaction on its own.")));
    ChunkArgs args = read_chunk_args(fcinfo);
    char *sub_name = text_to_cstring(PG_GETARG_TEXT_PP(0));

    TupleDesc tupdesc;
    if (get_call_result_type(fcinfo, nullptr, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    tupdesc = BlessTupleDesc(tupdesc);

    MemoryContext call_context = CurrentMemoryContext;
    SPI_connect_ext(SPI_OPT_NONATOMIC);
    /*
     * A procedure with transaction control cannot have SET search_path nor
     * be SECURITY DEFINER. As SECURITY DEFINER would (which a procedure that commits cannot be):
     * the bookkeeping runs as the procedure's owner, so that a sidecar role
     * granted EXECUTE needs no rights on kafka_sync's tables; each change
     * runs as its table's owner, which the caller must be able to become.
     * The caller again around each commit (see become_function_owner),
     * which also pins search_path to pg_catalog, pg_temp in between.
     */
    OwnerContext definer;
    become_function_owner(fcinfo->flinfo->fn_oid, &definer);
    ApplyContext ctx;
    ErrorContextCallback errcallback;
    begin_apply(&ctx, sub_name, false, call_context, &errcallback);
    TransactionsPolicy policy{ctx, fcinfo->flinfo->fn_oid, definer};
    const int64 next_offset = drive_records(ctx, args, policy);
    if (next_offset >= 0)
        policy.commit(next_offset);
    error_context_stack = errcallback.previous;
    restore_user(&definer);

    MemoryContext spi_context = MemoryContextSwitchTo(call_context);
    Datum values[3] = {Int64GetDatum(ctx.counters.applied), Int64GetDatum(ctx.counters.skipped),
                       Int64GetDatum(ctx.counters.conflicts)};
    bool nulls[3] = {false, false, false};
    HeapTuple tuple = heap_form_tuple(tupdesc, values, nulls);
    MemoryContextSwitchTo(spi_context);
    SPI_finish();
    PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}

/*
 * record_failure(sub_name text, kafka_offset int8, key bytea, value bytea,
 *                headers bytea, error text): keeps the record that could not
 * be applied and pauses the subscription (on_error = 'pause').
 */
Datum kafka_sync_record_failure(PG_FUNCTION_ARGS) {
    if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(5))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                        errmsg("record_failure needs a subscription, an offset and an error")));
    char *sub_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
    ChunkRecord r;
    r.offset = PG_GETARG_INT64(1);
    bytea *key = PG_ARGISNULL(2) ? nullptr : PG_GETARG_BYTEA_PP(2);
    bytea *value = PG_ARGISNULL(3) ? nullptr : PG_GETARG_BYTEA_PP(3);
    bytea *headers = PG_ARGISNULL(4) ? nullptr : PG_GETARG_BYTEA_PP(4);
    r.key = key ? VARDATA_ANY(key) : nullptr;
    r.key_len = key ? (int)VARSIZE_ANY_EXHDR(key) : -1;
    r.value = value ? VARDATA_ANY(value) : nullptr;
    r.value_len = value ? (int)VARSIZE_ANY_EXHDR(value) : -1;
    r.headers = headers ? VARDATA_ANY(headers) : "";
    r.headers_len = headers ? (int)VARSIZE_ANY_EXHDR(headers) : 0;
    const char *error = bounded_message(text_to_cstring(PG_GETARG_TEXT_PP(5)));

    SPI_connect();
    Subscription *sub = load_subscription(sub_name);
    insert_dead_letter(sub, &r, error);
    Oid types[2] = {TEXTOID, TEXTOID};
    Datum args[2] = {CStringGetTextDatum(sub_name), CStringGetTextDatum(error)};
    if (SPI_execute_with_args("UPDATE kafka_sync.subscription SET enabled = false, paused_by_error = true, "
                              "last_error = $2, last_error_at = now() WHERE sub_name = $1",
                              2, types, args, nullptr, false, 0) != SPI_OK_UPDATE ||
        SPI_execute_with_args("SELECT pg_notify('kafka_sync_subscriptions', $1)", 1, types, args, nullptr, false, 0) !=
            SPI_OK_SELECT)
        elog(ERROR, "kafka_sync could not pause subscription %s", sub_name);
    SPI_finish();
    PG_RETURN_VOID();
}

/*
 * apply_hold(sub_name text, hold_offset int8): until called again, the
 * Kafka offset this session's apply calls store for sub_name (the offset the
 * sidecar reads from after a restart) stays at or below hold_offset; NULL
 * lifts the hold. The sidecar holds it at the first record of the oldest
 * streamed transaction whose commit it has not applied yet, so that a
 * restart reads that transaction again from its start.
 */
Datum kafka_sync_apply_hold(PG_FUNCTION_ARGS) {
    if (PG_ARGISNULL(0))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("apply_hold needs a subscription name")));
    char *sub_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
    const int64 hold = PG_ARGISNULL(1) ? -1 : PG_GETARG_INT64(1);
    if (!PG_ARGISNULL(1) && hold < 0)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("apply_hold: a Kafka offset is not negative, got " INT64_FORMAT, hold)));
    kafka_sync::ApplySession &session = kafka_sync::apply_session();
    strlcpy(session.hold_sub, sub_name, sizeof(session.hold_sub));
    session.hold_offset = hold;
    PG_RETURN_VOID();
}

/*
 * apply_stream_begin(sub_name text): the sidecar's open local transaction
 * applies a peer's transaction while it is still in progress: apply_chunk
 * takes its records (marked kafka_sync.stream, without commit LSN or time)
 * as long as they meet no conflict, which would need the commit time. Ended
 * by apply_stream_commit(), or rolled back.
 */
Datum kafka_sync_apply_stream_begin(PG_FUNCTION_ARGS) {
    if (!IsTransactionBlock())
        ereport(ERROR, (errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
                        errmsg("kafka_sync.apply_stream_begin() must run inside a transaction block")));
    if (PG_ARGISNULL(0))
        ereport(ERROR,
                (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("apply_stream_begin needs a subscription name")));
    kafka_sync::apply_txn().in_progress = true;
    PG_RETURN_VOID();
}

/*
 * apply_stream_commit(sub_name text, headers bytea, next_offset int8) returns
 * boolean: the commit record of the transaction apply_stream_begin() began
 * applying has arrived (its header blob): its LSN and time become the origin's
 * progress and the rows' commit time, with next_offset, when the sidecar
 * commits. False: it is not to be committed here (applied before, or another
 * incarnation's): the sidecar rolls back and applies it the usual way.
 */
Datum kafka_sync_apply_stream_commit(PG_FUNCTION_ARGS) {
    if (!IsTransactionBlock() || !kafka_sync::apply_txn().in_progress)
        ereport(ERROR, (errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
                        errmsg("kafka_sync.apply_stream_commit() must run in the transaction of "
                               "kafka_sync.apply_stream_begin()")));
    if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
        ereport(ERROR,
                (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("apply_stream_commit arguments must not be null")));
    char *sub_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
    bytea *headers = PG_GETARG_BYTEA_PP(1);
    const int64 next_offset = PG_GETARG_INT64(2);

    MemoryContext call_context = CurrentMemoryContext;
    OwnerContext definer;
    become_function_owner(fcinfo->flinfo->fn_oid, &definer);
    SPI_connect();
    ApplyContext ctx;
    ErrorContextCallback errcallback;
    begin_apply(&ctx, sub_name, false, call_context, &errcallback);
    const bool applies = stream_commit_applies(&ctx, VARDATA_ANY(headers), (int)VARSIZE_ANY_EXHDR(headers));
    if (applies)
        finish_local_transaction(&ctx, next_offset);
    error_context_stack = errcallback.previous;
    SPI_finish();
    restore_user(&definer);
    PG_RETURN_BOOL(applies);
}

/*
 * _release_origin(origin_name text): this session lets go of the origin if
 * it applied under it (an apply call keeps its origin set up across
 * transactions), so that drop_subscription() in the same session can drop it.
 */
Datum kafka_sync_release_origin(PG_FUNCTION_ARGS) {
    char *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
    RepOriginId id = replorigin_by_name(name, true);
    if (id != InvalidRepOriginId && kafka_sync::apply_session().origin == id) {
        replorigin_session_reset();
        replorigin_session_origin = InvalidRepOriginId;
        kafka_sync::apply_session().origin = InvalidRepOriginId;
    }
    PG_RETURN_VOID();
}
}
