// An apply call's setup and end: the subscription it works for, the
// replication origin it applies under, the progress it records, and a peer's
// new incarnation (apply_context.hpp).
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

static char *text_col(int row, int col) {
    char *v = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);
    return v;
}

Subscription *load_subscription(const char *name) {
    static SPIPlanPtr plan = nullptr;
    if (!plan) {
        Oid types[1] = {TEXTOID};
        /*
         * FOR SHARE: drop_subscription() deletes the row, and then no apply
         * can begin (and take the replication origin it is about to drop)
         * until it committed, after which the subscription is gone.
         */
        plan =
            keep_plan("SELECT s.peer_node, s.origin_name, s.topic_prefix || '.' || s.peer_node, s.on_error, s.enabled, "
                      "(SELECT n.node_name FROM kafka_sync.node n), coalesce(s.skip_offset, -1), "
                      "s.conflict_resolution, coalesce(s.resync_lsn, '0/0'), s.tables::oid[], s.allow_truncate, "
                      "(SELECT n.publication FROM kafka_sync.node n), s.peer_incarnation "
                      "FROM kafka_sync.subscription s WHERE s.sub_name = $1 FOR SHARE OF s",
                      1, types);
    }
    Datum arg = CStringGetTextDatum(name);
    if (SPI_execute_plan(plan, &arg, nullptr, false, 1) != SPI_OK_SELECT)
        elog(ERROR, "kafka_sync could not read subscription %s", name);
    if (SPI_processed == 0)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("subscription \"%s\" does not exist", name)));
    if (strcmp(text_col(0, 5), "t") != 0)
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg("subscription \"%s\" is paused", name),
                 errhint("Resume it with kafka_sync.resume_subscription('%s').", name)));
    auto *sub = static_cast<Subscription *>(palloc0(sizeof(Subscription)));
    sub->name = pstrdup(name);
    sub->peer = text_col(0, 1);
    sub->origin_name = text_col(0, 2);
    sub->topic = text_col(0, 3);
    sub->skip_on_error = strcmp(text_col(0, 4), "skip") == 0;
    sub->local_node = text_col(0, 6);
    sub->skip_offset = strtoll(text_col(0, 7), nullptr, 10);
    sub->strategy = conflict_strategy_from_name(text_col(0, 8));
    bool isnull;
    sub->resync_lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 9, &isnull));
    Datum tables = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 10, &isnull);
    sub->ntables = -1;
    if (!isnull) {
        Datum *elems;
        bool *nulls;
        deconstruct_array(DatumGetArrayTypeP(tables), OIDOID, sizeof(Oid), true, TYPALIGN_INT, &elems, &nulls,
                          &sub->ntables);
        sub->tables = static_cast<Oid *>(palloc(sizeof(Oid) * Max(sub->ntables, 1)));
        for (int i = 0; i < sub->ntables; i++)
            sub->tables[i] = nulls[i] ? InvalidOid : DatumGetObjectId(elems[i]);
    }
    sub->allow_truncate = strcmp(text_col(0, 11), "t") == 0;
    sub->publication = text_col(0, 12);
    sub->incarnation = text_col(0, 13);
    return sub;
}

/*
 * PostgreSQL keeps replorigin_session_origin_lsn/_timestamp across
 * transactions. A value left by a rolled-back apply must never be recorded by
 * a later commit of this session (record_failure's, say): that would mark a
 * transaction that was not applied as applied.
 */
static void forget_origin_position(XactEvent event, void *) {
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
        event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PREPARE) {
        if (kafka_sync::apply_session().origin != InvalidRepOriginId)
            replorigin_session_origin = kafka_sync::apply_session().origin; /* after a snapshot row's commit */
        replorigin_session_origin_lsn = InvalidXLogRecPtr;
        replorigin_session_origin_timestamp = 0;
    }
}

void use_origin(const Subscription *sub) {
    static bool callback_registered = false;
    if (!callback_registered) {
        RegisterXactCallback(forget_origin_position, nullptr);
        callback_registered = true;
    }
    RepOriginId id = replorigin_by_name(sub->origin_name, true);
    if (id == InvalidRepOriginId)
        ereport(ERROR,
                (errcode(ERRCODE_UNDEFINED_OBJECT),
                 errmsg("replication origin \"%s\" of subscription \"%s\" is missing", sub->origin_name, sub->name),
                 errhint("Drop and re-create the subscription.")));
    if (replorigin_session_origin == id)
        return;
    if (replorigin_session_origin != InvalidRepOriginId) {
        replorigin_session_reset();
        replorigin_session_origin = InvalidRepOriginId;
    }
    /* no origin set up now: if the setup below fails, the abort must not put one back */
    kafka_sync::apply_session().origin = InvalidRepOriginId;
    /*
     * A session that has just ended (the sidecar reconnected, or drop and
     * create went fast) releases the origin as it exits: wait for that a
     * little (PostgreSQL 15 has no way to take it over).
     */
    const TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10000);
    for (;;) {
        ErrorData *edata = kafka_sync::run_in_subtransaction(
            [](void *arg) { replorigin_session_setup(*static_cast<RepOriginId *>(arg)); }, &id);
        if (!edata)
            break;
        if (edata->sqlerrcode != ERRCODE_OBJECT_IN_USE || GetCurrentTimestamp() > deadline)
            ReThrowError(edata);
        FreeErrorData(edata);
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 20, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        CHECK_FOR_INTERRUPTS();
    }
    replorigin_session_origin = id;
    kafka_sync::apply_session().origin = id;
}

/* The table the current record names, quoted (NULL before it is decoded). */
const char *current_table(const ApplyContext *ctx) {
    if (!ctx->rec)
        return nullptr;
    return psprintf("%s.%s", quote_identifier(ctx->rec->schema), quote_identifier(ctx->rec->table));
}

static void apply_error_context(void *arg) {
    auto *ctx = static_cast<ApplyContext *>(arg);
    if (!ctx->current)
        return;
    if (ctx->rec)
        errcontext("applying a \"%c\" record to table %s from peer %s (topic %s, offset " INT64_FORMAT ")",
                   ctx->current_op, current_table(ctx), ctx->sub->peer, ctx->sub->topic, ctx->current->offset);
    else
        errcontext("applying the record at offset " INT64_FORMAT " of topic %s from peer %s", ctx->current->offset,
                   ctx->sub->topic, ctx->sub->peer);
}

void flush_truncates(ApplyContext *ctx) {
    if (ctx->pending_truncates == NIL)
        return;
    apply_truncate(ctx->pending_truncates);
    ctx->counters.applied += list_length(ctx->pending_truncates);
    list_free(ctx->pending_truncates);
    ctx->pending_truncates = NIL;
}

/* At the end of the local transaction: the incarnation seen becomes the subscription's, and a new one resets the
 * origin. */
static void switch_incarnation(ApplyContext *ctx) {
    Subscription *sub = ctx->sub;
    if (ctx->incarnation_reset) {
        ereport(WARNING, (errmsg("kafka_sync subscription %s: node %s has a new incarnation (%s, was %s)", sub->name,
                                 sub->peer, ctx->new_incarnation, sub->incarnation),
                          errdetail("It was restored, failed over, or dropped and created again: its LSNs start "
                                    "over, and so does the subscription's progress (its replication origin).")));
        replorigin_session_reset();
        replorigin_session_origin = InvalidRepOriginId;
        kafka_sync::apply_session().origin = InvalidRepOriginId;
        LockRelationOid(ReplicationOriginRelationId, RowExclusiveLock);
        replorigin_advance(replorigin_by_name(sub->origin_name, false), InvalidXLogRecPtr, InvalidXLogRecPtr, true,
                           true);
        use_origin(sub);
        replorigin_session_origin_lsn = InvalidXLogRecPtr;
        /* a snapshot of the old incarnation cannot tell what the new one deleted */
        resync_not_applied(sub);
    }
    Oid types[2] = {TEXTOID, TEXTOID};
    Datum args[2] = {CStringGetTextDatum(sub->name), CStringGetTextDatum(ctx->new_incarnation)};
    if (SPI_execute_with_args("UPDATE kafka_sync.subscription SET peer_incarnation = $2 WHERE sub_name = $1", 2, types,
                              args, nullptr, false, 0) != SPI_OK_UPDATE)
        elog(ERROR, "kafka_sync could not record the incarnation of node %s", sub->peer);
    sub->incarnation = ctx->new_incarnation;
    ctx->new_incarnation = nullptr;
    ctx->incarnation_reset = false;
}

static void save_progress(const ApplyContext *ctx, int64 next_offset) {
    static SPIPlanPtr plan = nullptr;
    if (!plan) {
        Oid types[6] = {TEXTOID, INT8OID, PG_LSNOID, TIMESTAMPTZOID, INT8OID, INT8OID};
        plan = keep_plan("UPDATE kafka_sync.subscription SET next_offset = $2, "
                         "last_applied_lsn = coalesce($3, last_applied_lsn), "
                         "last_source_commit = coalesce($4, last_source_commit), last_applied_at = now(), "
                         "rows_applied = rows_applied + $5, conflicts = conflicts + $6 WHERE sub_name = $1",
                         6, types);
    }
    Datum values[6];
    char nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
    values[0] = CStringGetTextDatum(ctx->sub->name);
    const ApplySession &session = apply_session();
    if (session.hold_offset >= 0 && session.hold_offset < next_offset && strcmp(session.hold_sub, ctx->sub->name) == 0)
        next_offset = session.hold_offset; /* a streamed transaction from there on is still to be applied */
    values[1] = Int64GetDatum(next_offset);
    values[2] = LSNGetDatum(ctx->max_lsn);
    nulls[2] = ctx->max_lsn ? ' ' : 'n';
    values[3] = TimestampTzGetDatum(unix_ms_to_timestamptz(ctx->max_lsn_commit_ms));
    nulls[3] = ctx->max_lsn_commit_ms ? ' ' : 'n';
    values[4] = Int64GetDatum(ctx->counters.applied);
    values[5] = Int64GetDatum(ctx->counters.conflicts);
    if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_UPDATE)
        elog(ERROR, "kafka_sync could not record the progress of subscription %s", ctx->sub->name);
}

/* Sets up ctx for one call, and errcallback (to pop when done) to name the record an error concerns. */
void begin_apply(ApplyContext *ctx, const char *sub_name, bool careful, MemoryContext call_context,
                 ErrorContextCallback *errcallback) {
    memset(ctx, 0, sizeof(*ctx));
    ctx->sub = load_subscription(sub_name);
    ctx->careful = careful;
    use_origin(ctx->sub);
    ctx->progress = replorigin_session_get_progress(false);
    ctx->record_context = AllocSetContextCreate(call_context, "kafka_sync apply record", ALLOCSET_DEFAULT_SIZES);
    ctx->call_context = call_context;
    ctx->decoder = new_in_context<kafka_sync::RecordDecoder>(call_context);
    /* a huge record can be cancelled while it is decoded */
    ctx->decoder->set_interrupt_check([] { kafka_sync::pg_call([] { CHECK_FOR_INTERRUPTS(); }); });
    ctx->decoded = new_in_context<kafka_sync::DecodedRecord>(call_context);
    ctx->decoded_headers = new_in_context<kafka_sync::DecodedHeaders>(call_context);
    apply_begin_call(!careful);
    prune_tombstones_if_due();
    errcallback->callback = apply_error_context;
    errcallback->arg = ctx;
    errcallback->previous = error_context_stack;
    error_context_stack = errcallback;
}

/*
 * The end of what this local transaction applies: pending truncates, the
 * subscription's offset and counters, and the origin's progress and
 * timestamp, all recorded by the commit that follows.
 */
void finish_local_transaction(ApplyContext *ctx, int64 next_offset) {
    apply_close_writer();
    flush_truncates(ctx);
    if (ctx->new_incarnation)
        switch_incarnation(ctx);
    if (next_offset >= 0)
        save_progress(ctx, next_offset);
    if (ctx->max_lsn > replorigin_session_origin_lsn)
        replorigin_session_origin_lsn = ctx->max_lsn;
    /* the rows' commit time here is the source's: conflict resolution compares it */
    replorigin_session_origin_timestamp = ctx->origin_ts_ms ? unix_ms_to_timestamptz(ctx->origin_ts_ms) : 0;
    /*
     * Snapshot rows of another writer commit under that writer's origin,
     * with no origin LSN (so no progress for either); the transaction
     * callback puts the session's origin back at commit.
     */
    if (ctx->row_origin != InvalidRepOriginId) {
        replorigin_session_origin = ctx->row_origin;
        /* an LSN of this peer must never be recorded as that writer's progress (recovery replays it) */
        replorigin_session_origin_lsn = InvalidXLogRecPtr;
    }
}

} // namespace kafka_sync
