// The apply functions the sidecar calls: apply_chunk and record_failure.
//
// apply_chunk runs inside the local transaction the sidecar opened, under the
// subscription's replication origin (common/origin_names.hpp): the rows it writes carry the origin
// (so the output plugin never republishes them), and the origin's progress
// (source commit LSN and time) plus the subscription's Kafka offset are set
// in that same transaction, so they commit atomically with the rows.
// A record at or below the origin's committed progress is skipped: Kafka
// duplicates and sidecar restarts change nothing.
#include "apply/apply_state.hpp"
#include "apply/conflicts.hpp"
#include "apply/record_decoder.hpp"
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
}

namespace {

struct Subscription {
    char *name;
    char *peer;
    char *origin_name;
    char *topic;
    bool skip_on_error;
    char *local_node;   /* NULL when this database is not a node */
    int64 skip_offset;  /* resumed past this failed record; -1: none */
    ConflictStrategy strategy;
    XLogRecPtr resync_lsn; /* resynchronising from the peer's snapshot with this lsn header; 0: not */
    /* the tables it may write: these (sorted), or, when ntables < 0, those of the node's publication */
    Oid *tables;
    int ntables;
    char *publication; /* the node's; NULL when this database is no node */
    bool allow_truncate;
    char *incarnation; /* the peer's last seen kafka_sync.incarnation; NULL: none yet */
};

/* One record of the chunk, and what applying it found. */
struct ChunkRecord {
    int64 offset;
    const char *key;
    int key_len; /* -1: none */
    const char *value;
    int value_len; /* -1: tombstone */
    const char *headers;
    int headers_len;
};

struct ApplyContext {
    Subscription *sub;
    ApplyCounters counters; /* of the current local transaction */
    XLogRecPtr progress; /* origin progress committed before this transaction */
    /*
     * The highest source transaction this call has applied to its end (its
     * txn_end record): a record at or below it is a copy of one (a producer
     * restart sends a transaction again), skipped as the origin's progress
     * skips it once committed.
     */
    XLogRecPtr completed_lsn;
    XLogRecPtr max_lsn;
    int64 max_lsn_commit_ms;
    int64 origin_ts_ms; /* the local commit's time: the source's (a snapshot row's own); 0: now */
    RepOriginId row_origin; /* snapshot rows: the origin of their last writer, when known here */
    Oid allowed_relid;      /* the table last found writable by this subscription, in this call */
    char *new_incarnation;  /* the peer's incarnation, when other than sub->incarnation (switch_incarnation) */
    bool incarnation_reset; /* and a newer one: the origin's progress starts over */
    const ChunkRecord *current;
    /* the current record, once decoded (NULL: skipped) */
    kafka_sync::DecodedHeaders *headers;
    kafka_sync::DecodedRecord *rec;
    char current_op;
    /* one decoder, record and headers for the whole call (their storage is reused record after record) */
    kafka_sync::RecordDecoder *decoder;
    kafka_sync::DecodedRecord *decoded;
    kafka_sync::DecodedHeaders *decoded_headers;
    List *pending_truncates; /* relids of consecutive "t" records */
    bool careful;
    MemoryContext record_context; /* reset after every record */
    MemoryContext call_context;   /* lives for the whole call */
};

/* Ties a C++ object's lifetime to a memory context: deleted when it goes. */
template <typename T>
T *new_in_context(MemoryContext cxt) {
    T *obj = kafka_sync::ks_guard([]() { return new T(); });
    auto *cb = static_cast<MemoryContextCallback *>(MemoryContextAlloc(cxt, sizeof(MemoryContextCallback)));
    cb->func = [](void *arg) { delete static_cast<T *>(arg); };
    cb->arg = obj;
    MemoryContextRegisterResetCallback(cxt, cb);
    return obj;
}

char *text_col(int row, int col) {
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
        plan = keep_plan("SELECT s.peer_node, s.origin_name, s.topic_prefix || '.' || s.peer_node, s.on_error, s.enabled, "
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
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("subscription \"%s\" is paused", name),
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
void forget_origin_position(XactEvent event, void *) {
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
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
                        errmsg("replication origin \"%s\" of subscription \"%s\" is missing", sub->origin_name,
                               sub->name),
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

void apply_error_context(void *arg) {
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

/* The local commit time of a snapshot row: its own, or (unknown) older than anything. */
int64 snapshot_row_time(const kafka_sync::DecodedRecord *rec) {
    constexpr int64 kUnknownRowTimeMs = 1; /* 1970-01-01; 0 would mean "now" */
    return rec->has_row_ts && rec->row_ts_ms > 0 ? rec->row_ts_ms : kUnknownRowTimeMs;
}

/* The record just handled ends its source transaction: copies of that one are skipped from now on. */
void note_transaction_end(ApplyContext *ctx, const kafka_sync::DecodedHeaders *headers) {
    if (headers->has_lsn && headers->has_txn_end && headers->lsn > ctx->completed_lsn)
        ctx->completed_lsn = headers->lsn;
}

/* A record not applied (skipped, dead-lettered, another incarnation's) while the subscription resynchronises. */
void resync_not_applied(const Subscription *sub) {
    if (sub->resync_lsn != InvalidXLogRecPtr)
        resync_mark_incomplete(sub->name);
}

/* A time of a record (unix ms) that conflict resolution may compare: from 2000 to now + the allowed skew. */
void check_record_time(const char *what, int64 ms) {
    constexpr int64 kYear2000Ms = INT64CONST(946684800000);
    const int64 now_ms = timestamptz_to_unix_ms(GetCurrentTimestamp());
    const int64 latest = now_ms + (int64)apply_max_clock_skew_s * 1000;
    if (ms < kYear2000Ms || ms > latest)
        ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
                        errmsg("the record's %s (" INT64_FORMAT " ms since 1970) is not plausible", what, ms),
                        errdetail("Record times must lie between 2000 and now plus kafka_sync.max_clock_skew (%d s): "
                                  "a time in the future would win every conflict.",
                                  apply_max_clock_skew_s),
                        errhint("Check the clock of the peer's server, or raise kafka_sync.max_clock_skew.")));
}

/*
 * A peer's topic is untrusted input: its metadata is checked like its data.
 * A kafka_sync record names its origin, which must be the peer; its times
 * must be plausible; its LSN may not leap past everything to come (every
 * later genuine record would be skipped as applied before).
 */
void check_metadata(const ApplyContext *ctx, const kafka_sync::DecodedHeaders *headers,
                    const kafka_sync::DecodedRecord *rec) {
    const char *peer = ctx->sub->peer;
    if ((!headers->origin.empty() && headers->origin != peer) || (rec->origin && strcmp(rec->origin, peer) != 0))
        ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
                        errmsg("a record of origin \"%s\" is on the topic of node %s",
                               !headers->origin.empty() && headers->origin != peer ? headers->origin.c_str()
                                                                                   : rec->origin,
                               peer),
                        errdetail("A node's topic carries only the changes made at that node.")));
    if (headers->has_commit_ts)
        check_record_time("commit time", headers->commit_ts_ms);
    if (rec->op == 'r' && rec->has_row_ts)
        check_record_time("row time (source.row_ts_ms)", rec->row_ts_ms);
    if (headers->has_lsn && ctx->progress != InvalidXLogRecPtr && apply_max_lsn_jump_mb > 0 &&
        headers->lsn > ctx->progress && headers->lsn - ctx->progress > (uint64)apply_max_lsn_jump_mb * 1024 * 1024)
        ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
                        errmsg("the record's LSN %X/%X is more than kafka_sync.max_lsn_jump (%d MB) past what "
                               "subscription %s applied (%X/%X)",
                               (uint32)(headers->lsn >> 32), (uint32)headers->lsn, apply_max_lsn_jump_mb,
                               ctx->sub->name, (uint32)(ctx->progress >> 32), (uint32)ctx->progress),
                        errdetail("Applied, it would make every later record of the peer look applied already."),
                        errhint("If the peer really wrote that much WAL in between, raise kafka_sync.max_lsn_jump "
                                "and resume the subscription.")));
}

/*
 * The peer's records carry its incarnation: "<system identifier>/<timeline>/
 * <node created_at>". A newer one (the peer was restored, failed over, or
 * dropped and created again) writes at LSNs that may lie below what was
 * applied from the old one, so LSNs compare only within one incarnation.
 * Returns <0, 0, >0 as a is older than, the same as, newer than b; another
 * system counts as newer.
 */
int compare_incarnations(const char *a, const char *b) {
    unsigned long long sa, sb;
    unsigned ta, tb;
    long long ca, cb;
    if (strcmp(a, b) == 0)
        return 0;
    if (sscanf(a, "%llu/%u/%lld", &sa, &ta, &ca) != 3 || sscanf(b, "%llu/%u/%lld", &sb, &tb, &cb) != 3 || sa != sb)
        return 1;
    if (ta != tb)
        return ta < tb ? -1 : 1;
    return ca < cb ? -1 : (ca > cb ? 1 : 0);
}

/*
 * A record of another incarnation than the one applied so far: an older one
 * (a straggler of a failed-over primary) is skipped; a newer one is applied
 * with its own LSNs from nothing, and the origin's progress starts over when
 * the local transaction ends (finish_local_transaction), after everything
 * that can fail. Returns false when the record is to be skipped.
 */
bool note_incarnation(ApplyContext *ctx, const std::string &incarnation) {
    const char *current = ctx->new_incarnation ? ctx->new_incarnation : ctx->sub->incarnation;
    if (current && strcmp(current, incarnation.c_str()) == 0)
        return true;
    if (!current) {
        ctx->new_incarnation = MemoryContextStrdup(ctx->call_context, incarnation.c_str()); /* the first seen */
        return true;
    }
    if (compare_incarnations(incarnation.c_str(), current) < 0)
        return false;
    ctx->new_incarnation = MemoryContextStrdup(ctx->call_context, incarnation.c_str());
    ctx->incarnation_reset = true;
    ctx->progress = InvalidXLogRecPtr;
    ctx->completed_lsn = InvalidXLogRecPtr;
    ctx->max_lsn = InvalidXLogRecPtr;
    ctx->max_lsn_commit_ms = 0;
    return true;
}

/* At the end of the local transaction: the incarnation seen becomes the subscription's, and a new one resets the origin. */
void switch_incarnation(ApplyContext *ctx) {
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

/* Decodes ctx->current into ctx->headers / ctx->rec (rec NULL: nothing to apply); raises ERROR when it cannot. */
void decode_record(ApplyContext *ctx) {
    const ChunkRecord *r = ctx->current;
    ctx->rec = nullptr;

    kafka_sync::DecodedHeaders *headers = ctx->decoded_headers;
    kafka_sync::ks_guard([&]() {
        std::string error;
        if (!kafka_sync::decode_headers(r->headers, r->headers_len, *headers, error))
            throw kafka_sync::Error(ERRCODE_DATA_EXCEPTION, error);
    });
    ctx->headers = headers;
    if (!headers->incarnation.empty() && !note_incarnation(ctx, headers->incarnation)) {
        ctx->counters.skipped++; /* an older incarnation's: superseded */
        return;
    }
    if (headers->has_lsn && (headers->lsn <= ctx->progress || headers->lsn <= ctx->completed_lsn)) {
        ctx->counters.skipped++; /* applied before: a duplicate in the topic */
        return;
    }
    if (r->value_len < 0) {
        ctx->counters.skipped++; /* tombstone: only for topic compaction */
        note_transaction_end(ctx, headers); /* the last record of a transaction ending in a delete */
        return;
    }
    if (ctx->sub->local_node && strcmp(headers->origin.c_str(), ctx->sub->local_node) == 0)
        ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
                        errmsg("the record originated at this node (%s) and is not applied again",
                               ctx->sub->local_node),
                        errdetail("A node's own changes must never come back to it.")));

    kafka_sync::RecordDecoder *decoder = ctx->decoder;
    kafka_sync::DecodedRecord *rec = ctx->decoded;
    const char *sub_name = ctx->sub->name;
    kafka_sync::ks_guard([&]() {
        std::string error;
        if (!decoder->decode_value(r->value, r->value_len, *rec, error))
            throw kafka_sync::Error(ERRCODE_INVALID_TEXT_REPRESENTATION, error, std::string(),
                                    std::string("The record is kept in kafka_sync.dead_letters; "
                                                "kafka_sync.resume_subscription('") +
                                        sub_name + "', skip_failed => true) passes over it.");
    });
    if (ctx->sub->local_node && rec->origin && strcmp(rec->origin, ctx->sub->local_node) == 0)
        ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
                        errmsg("the record originated at this node (%s) and is not applied again",
                               ctx->sub->local_node)));

    check_metadata(ctx, headers, rec);
    ctx->current_op = rec->op;
    ctx->rec = rec;
}

/*
 * The apply transactions of one database run one at a time (a transaction
 * advisory lock, keys 0x6b61666b / 0x6170706c). Two peers' changes of the same
 * key, applied concurrently by two sessions, would each miss the other's
 * uncommitted row or tombstone and resolve differently than the other nodes.
 * Local writers need no such lock: row locks and tombstones order them.
 */
void apply_lock_wait_context(void *) {
    errcontext("waiting for the apply lock of this database, which another subscription's apply session holds (a "
               "long source transaction, or one a peer never ends); kafka_sync.apply_lock_timeout bounds the wait");
}

void serialize_apply() {
    kafka_sync::ApplyTxn &txn = kafka_sync::apply_txn();
    if (txn.apply_lock_held)
        return;
    LOCKTAG tag;
    SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0x6b61666b, 0x6170706c, 2);
    if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL) {
        /*
         * Bounded: a peer whose transaction never ends must not stop every
         * other peer's apply unseen. The wait ends in an error the sidecar
         * reports and retries (lock_not_available).
         */
        const int nest = NewGUCNestLevel();
        if (apply_lock_timeout_ms > 0 && (LockTimeout == 0 || LockTimeout > apply_lock_timeout_ms)) {
            char value[32];
            snprintf(value, sizeof(value), "%d", apply_lock_timeout_ms);
            (void)set_config_option("lock_timeout", value, PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
        }
        ErrorContextCallback context = {error_context_stack, apply_lock_wait_context, nullptr};
        error_context_stack = &context;
        (void)LockAcquire(&tag, ExclusiveLock, false, false);
        error_context_stack = context.previous;
        AtEOXact_GUC(true, nest);
    }
    /* held until the transaction ends; one taken in a subtransaction may go with its abort */
    txn.apply_lock_held = txn.may_note();
}

bool listed_table(const Subscription *sub, Oid relid) {
    for (int i = 0; i < sub->ntables; i++)
        if (sub->tables[i] == relid)
            return true;
    return false;
}

/* Whether publication pub holds relid itself, as a member of its schema, or as one of all tables. */
bool in_publication(const Publication *pub, Oid relid) {
    if (pub->alltables)
        return true;
    return list_member_oid(GetRelationPublications(relid), pub->oid) ||
           list_member_oid(GetSchemaPublications(get_rel_namespace(relid)), pub->oid);
}

/*
 * The subscription may write relid: it names it (or a partitioned table it
 * is a partition of), or, naming none, relid is in this node's publication
 * (FOR ALL TABLES: except tables of extensions, which must be named).
 * Raises ERROR otherwise: the record is a dead letter, or pauses the
 * subscription, per on_error.
 */
void check_target_allowed(ApplyContext *ctx, Oid relid) {
    if (relid == ctx->allowed_relid)
        return;
    const Subscription *sub = ctx->sub;
    List *ancestors = get_rel_relispartition(relid) ? get_partition_ancestors(relid) : NIL;
    bool allowed = false;
    if (sub->ntables >= 0) {
        allowed = listed_table(sub, relid);
        ListCell *lc;
        foreach (lc, ancestors)
            allowed = allowed || listed_table(sub, lfirst_oid(lc));
    } else if (sub->publication) {
        Publication *pub = GetPublicationByName(sub->publication, true);
        if (pub) {
            allowed = in_publication(pub, relid);
            ListCell *lc;
            foreach (lc, ancestors)
                allowed = allowed || in_publication(pub, lfirst_oid(lc));
            if (allowed && pub->alltables && OidIsValid(getExtensionOfObject(RelationRelationId, relid)))
                ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                                errmsg("subscription %s may not write table %s, a table of extension %s", sub->name,
                                       current_table(ctx),
                                       get_extension_name(getExtensionOfObject(RelationRelationId, relid))),
                                errdetail("Publication %s is FOR ALL TABLES; an extension's tables are written only "
                                          "when the subscription names them.",
                                          sub->publication),
                                errhint("Name the tables: kafka_sync.alter_subscription('%s', tables => ...).",
                                        sub->name)));
        }
    }
    if (!allowed) {
        if (sub->ntables >= 0)
            ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                            errmsg("subscription %s may not write table %s", sub->name, current_table(ctx)),
                            errdetail("The table is not among those the subscription names."),
                            errhint("Add it: kafka_sync.alter_subscription('%s', tables => ...).", sub->name)));
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("subscription %s may not write table %s", sub->name, current_table(ctx)),
                        sub->publication
                            ? errdetail("The table is not in publication %s of this node, the tables a subscription "
                                        "writes unless it names others.",
                                        sub->publication)
                            : errdetail("This database is no kafka_sync node and the subscription names no tables."),
                        errhint("Add the table to the publication, or name the tables the subscription writes: "
                                "kafka_sync.alter_subscription('%s', tables => ...).",
                                sub->name)));
    }
    ctx->allowed_relid = relid;
}

/* Applies the decoded ctx->rec; raises ERROR when it cannot. */
void apply_decoded(ApplyContext *ctx) {
    serialize_apply();
    const kafka_sync::DecodedRecord *rec = ctx->rec;
    const kafka_sync::DecodedHeaders *headers = ctx->headers;
    RemoteChange remote;
    remote.strategy = ctx->sub->strategy;
    remote.sub_name = ctx->sub->name;
    remote.peer = ctx->sub->peer;
    remote.local_node = ctx->sub->local_node ? ctx->sub->local_node : "";
    const char *node = !headers->origin.empty() ? headers->origin.c_str() : (rec->origin ? rec->origin : ctx->sub->peer);
    remote.row_origin = rec->op == 'r' && rec->row_origin ? rec->row_origin : node;
    ctx->row_origin = InvalidRepOriginId;
    if (rec->op == 'r' && strcmp(remote.row_origin, node) != 0) {
        /*
         * A row another node wrote, in this peer's snapshot: stored here as
         * written by that node (its origin, at its time), when this node
         * knows the origin; otherwise as written by the peer.
         */
        char *name = kafka_sync::peer_origin_name(remote.row_origin);
        ctx->row_origin = replorigin_by_name(name, true);
        if (ctx->row_origin != InvalidRepOriginId)
            node = remote.row_origin;
    }
    strlcpy(remote.version.node, node, sizeof(remote.version.node));
    if (rec->op == 'r') {
        /* a snapshot row of unknown time is older than any change */
        remote.version.known = rec->has_row_ts;
        remote.version.ts = unix_ms_to_timestamptz(snapshot_row_time(rec));
    } else if (headers->has_commit_ts) {
        remote.version.known = true;
        remote.version.ts = unix_ms_to_timestamptz(headers->commit_ts_ms);
    }
    Oid relid = apply_target_relid(rec->schema, rec->table);
    check_target_allowed(ctx, relid);
    if (rec->op == 't' && !ctx->sub->allow_truncate)
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("subscription %s does not apply TRUNCATE (of %s)", ctx->sub->name, current_table(ctx)),
                        errhint("Allow it with kafka_sync.alter_subscription('%s', allow_truncate => true).",
                                ctx->sub->name)));
    /* a copy the worker published again (it restarted half-way) has a higher lsn header */
    const bool resync_row = rec->op == 'r' && ctx->sub->resync_lsn != InvalidXLogRecPtr && headers->has_lsn &&
                            headers->lsn >= ctx->sub->resync_lsn;
    if (resync_row) {
        bytea *key = apply_row_key(relid, rec);
        if (key)
            resync_note_key(ctx->sub->name, relid, key);
    }
    if (rec->op == 't') {
        apply_flush_inserts(&ctx->counters);
        MemoryContext old = MemoryContextSwitchTo(ctx->call_context);
        ctx->pending_truncates = lappend_oid(ctx->pending_truncates, relid);
        MemoryContextSwitchTo(old);
        if (ctx->careful)
            flush_truncates(ctx);
    } else {
        flush_truncates(ctx);
        /* careful mode applies record by record, each in its own subtransaction */
        if (ctx->careful || !apply_queue_insert(relid, rec, &remote, &ctx->counters)) {
            apply_flush_inserts(&ctx->counters);
            apply_row_change(relid, rec, &remote, &ctx->counters);
        }
    }
    if (rec->op == 'r') {
        /* a snapshot row keeps its own time here; only the snapshot's last record completes it */
        ctx->origin_ts_ms = snapshot_row_time(rec);
        if (!headers->has_txn_end)
            return;
        if (resync_row) {
            apply_flush_inserts(&ctx->counters);
            apply_close_writer();
            ctx->counters.applied += resync_finish(ctx->sub->name, ctx->sub->peer, headers->lsn);
            ctx->sub->resync_lsn = InvalidXLogRecPtr;
        }
    } else {
        ctx->origin_ts_ms = headers->has_commit_ts ? headers->commit_ts_ms : 0;
    }
    if (headers->has_lsn && headers->lsn > ctx->max_lsn) {
        ctx->max_lsn = headers->lsn;
        ctx->max_lsn_commit_ms = headers->has_commit_ts ? headers->commit_ts_ms : 0;
    }
    note_transaction_end(ctx, headers);
}

/* Decodes and applies ctx->current. Plain C style: it may run inside a subtransaction. */
void apply_record(void *arg) {
    auto *ctx = static_cast<ApplyContext *>(arg);
    decode_record(ctx);
    if (ctx->rec)
        apply_decoded(ctx);
}

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
        plan = keep_plan("INSERT INTO kafka_sync.dead_letters (sub_name, topic, kafka_partition, kafka_offset, key, value, "
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

void save_progress(const ApplyContext *ctx, int64 next_offset) {
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
    apply_flush_inserts(&ctx->counters);
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
template <typename Policy>
int64 drive_records(ApplyContext &ctx, const ChunkArgs &args, Policy &policy) {
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
     * A procedure with transaction control cannot have SET search_path; the
     * SQL it builds qualifies every name, and the sidecar pins the session's
     * search_path to pg_catalog, pg_temp (what user triggers on the synced
     * tables see, as with apply_chunk).
     *
     * As SECURITY DEFINER would (which a procedure that commits cannot be):
     * the bookkeeping runs as the procedure's owner, so that a sidecar role
     * granted EXECUTE needs no rights on kafka_sync's tables; each change
     * runs as its table's owner, which the caller must be able to become.
     * The caller again around each commit (see become_function_owner).
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
        SPI_execute_with_args("SELECT pg_notify('kafka_sync_subscriptions', $1)", 1, types, args, nullptr, false,
                              0) != SPI_OK_SELECT)
        elog(ERROR, "kafka_sync could not pause subscription %s", sub_name);
    SPI_finish();
    PG_RETURN_VOID();
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
