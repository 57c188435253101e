// What a record is and may do: its headers and value decoded, its metadata
// checked (origin, times, LSN jumps, incarnation), its table allowed to the
// subscription (apply_context.hpp). A peer's topic is untrusted input.
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

/* A time of a record (unix ms) that conflict resolution may compare: from 2000 to now + the allowed skew. */
static void check_record_time(const char *what, int64 ms) {
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
static void check_metadata(const ApplyContext *ctx, const kafka_sync::DecodedHeaders *headers,
                           const kafka_sync::DecodedRecord *rec) {
    const char *peer = ctx->sub->peer;
    if ((!headers->origin.empty() && headers->origin != peer) || (rec->origin && strcmp(rec->origin, peer) != 0))
        ereport(
            ERROR,
            (errcode(ERRCODE_DATA_EXCEPTION),
             errmsg("a record of origin \"%s\" is on the topic of node %s",
                    !headers->origin.empty() && headers->origin != peer ? headers->origin.c_str() : rec->origin, peer),
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
static int compare_incarnations(const char *a, const char *b) {
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
static bool note_incarnation(ApplyContext *ctx, const std::string &incarnation) {
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
    if (headers->stream && !headers->has_lsn &&
        !(headers->stream_change && kafka_sync::apply_txn().in_progress && !ctx->careful))
        ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
                        errmsg("the record belongs to a transaction that was in progress when it was sent "
                               "(header kafka_sync.stream) and has no commit LSN"),
                        errdetail("The sidecar applies such records once their transaction's commit record is "
                                  "in Kafka, with that record's commit LSN and time."),
                        errhint("Use a kafka_sync_sidecar that knows kafka_sync.streaming (this extension's).")));
    if (headers->has_lsn && (headers->lsn <= ctx->progress || headers->lsn <= ctx->completed_lsn)) {
        ctx->counters.skipped++; /* applied before: a duplicate in the topic */
        return;
    }
    if (r->value_len < 0) {
        ctx->counters.skipped++;            /* tombstone: only for topic compaction */
        note_transaction_end(ctx, headers); /* the last record of a transaction ending in a delete */
        return;
    }
    if (ctx->sub->local_node && strcmp(headers->origin.c_str(), ctx->sub->local_node) == 0)
        ereport(ERROR,
                (errcode(ERRCODE_DATA_EXCEPTION),
                 errmsg("the record originated at this node (%s) and is not applied again", ctx->sub->local_node),
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
        ereport(ERROR,
                (errcode(ERRCODE_DATA_EXCEPTION),
                 errmsg("the record originated at this node (%s) and is not applied again", ctx->sub->local_node)));

    check_metadata(ctx, headers, rec);
    ctx->current_op = rec->op;
    ctx->rec = rec;
}

/*
 * apply_stream_commit(): the commit record (headers) of the transaction this
 * local transaction applied while it was in progress, checked as any
 * record's metadata. Sets what finish_local_transaction records; false when
 * the transaction is not to be committed here (applied before, or from
 * another incarnation of the peer: the sidecar then applies it the usual
 * way, which deals with both).
 */
bool stream_commit_applies(ApplyContext *ctx, const char *headers_data, int headers_len) {
    kafka_sync::DecodedHeaders *headers = ctx->decoded_headers;
    kafka_sync::ks_guard([&]() {
        std::string error;
        if (!kafka_sync::decode_headers(headers_data, headers_len, *headers, error))
            throw kafka_sync::Error(ERRCODE_DATA_EXCEPTION, error);
    });
    if (!headers->stream || !headers->has_lsn || !headers->has_commit_ts)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("apply_stream_commit needs a streamed transaction's commit record "
                               "(kafka_sync.stream, kafka_sync.lsn and kafka_sync.commit_ts headers)")));
    const char *current = ctx->sub->incarnation;
    if (!headers->incarnation.empty() && (!current || strcmp(current, headers->incarnation.c_str()) != 0))
        return false;
    if (headers->lsn <= ctx->progress)
        return false;
    ctx->decoded->reset(); /* no record of its own: the headers are checked */
    check_metadata(ctx, headers, ctx->decoded);
    ctx->max_lsn = headers->lsn;
    ctx->max_lsn_commit_ms = headers->commit_ts_ms;
    ctx->origin_ts_ms = headers->commit_ts_ms;
    return true;
}

static bool listed_table(const Subscription *sub, Oid relid) {
    for (int i = 0; i < sub->ntables; i++)
        if (sub->tables[i] == relid)
            return true;
    return false;
}

/* Whether publication pub holds relid itself, as a member of its schema, or as one of all tables. */
static bool in_publication(const Publication *pub, Oid relid) {
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
                ereport(
                    ERROR,
                    (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                     errmsg("subscription %s may not write table %s, a table of extension %s", sub->name,
                            current_table(ctx), get_extension_name(getExtensionOfObject(RelationRelationId, relid))),
                     errdetail("Publication %s is FOR ALL TABLES; an extension's tables are written only "
                               "when the subscription names them.",
                               sub->publication),
                     errhint("Name the tables: kafka_sync.alter_subscription('%s', tables => ...).", sub->name)));
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

} // namespace kafka_sync
