// A decoded record to its table: the database's apply lock, the change's
// version and origin, snapshot rows and their resync, truncates
// (apply_context.hpp; the row itself: table_apply.cpp).
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

/*
 * The apply transactions of one database run one at a time (a transaction
 * advisory lock, keys 0x6b61666b / 0x6170706c). Two peers' changes of the same
 * key, applied concurrently by two sessions, would each miss the other's
 * uncommitted row or tombstone and resolve differently than the other nodes.
 * Local writers need no such lock: row locks and tombstones order them.
 */
static void apply_lock_wait_context(void *) {
    errcontext("waiting for the apply lock of this database, which another subscription's apply session holds (a "
               "long source transaction, or one a peer never ends); kafka_sync.apply_lock_timeout bounds the wait");
}

static void serialize_apply() {
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
    remote.in_progress = headers->stream && !headers->has_lsn;
    if (remote.in_progress && (rec->op == 'd' || rec->op == 't'))
        ereport(ERROR, (errcode(ERRCODE_KAFKA_SYNC_CONFLICT),
                        errmsg("a %s of a transaction still in progress at the peer is applied at its commit",
                               rec->op == 'd' ? "delete" : "truncate"),
                        errdetail("The version it leaves behind is the transaction's commit time.")));
    const char *node =
        !headers->origin.empty() ? headers->origin.c_str() : (rec->origin ? rec->origin : ctx->sub->peer);
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
        MemoryContext old = MemoryContextSwitchTo(ctx->call_context);
        ctx->pending_truncates = lappend_oid(ctx->pending_truncates, relid);
        MemoryContextSwitchTo(old);
        if (ctx->careful)
            flush_truncates(ctx);
    } else {
        flush_truncates(ctx);
        apply_row_change(relid, rec, &remote, &ctx->counters);
    }
    if (rec->op == 'r') {
        /* a snapshot row keeps its own time here; only the snapshot's last record completes it */
        ctx->origin_ts_ms = snapshot_row_time(rec);
        if (!headers->has_txn_end)
            return;
        if (resync_row) {
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

} // namespace kafka_sync
