// What the apply functions share (extension/apply/apply_*.cpp, record_*.cpp,
// dead_letters.cpp): the subscription an apply call works for, one record as
// the sidecar passes it, and the call's context. Internal to the apply side.
#pragma once

#include "apply/conflicts.hpp"
#include "wire/record_decoder.hpp"
#include "apply/table_apply.hpp"
#include "boundary/pg_boundary.hpp"
#include "common/settings.hpp"

extern "C" {
#include "postgres.h"

#include "access/xlogdefs.h"
#include "nodes/pg_list.h"
#include "replication/origin.h"
#include "utils/memutils.h"
}

#include <string>

namespace kafka_sync {

struct Subscription {
    char *name;
    char *peer;
    char *origin_name;
    char *topic;
    bool skip_on_error;
    char *local_node;  /* NULL when this database is not a node */
    int64 skip_offset; /* resumed past this failed record; -1: none */
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
    XLogRecPtr progress;    /* origin progress committed before this transaction */
    /*
     * The highest source transaction this call has applied to its end (its
     * txn_end record): a record at or below it is a copy of one (a producer
     * restart sends a transaction again), skipped as the origin's progress
     * skips it once committed.
     */
    XLogRecPtr completed_lsn;
    XLogRecPtr max_lsn;
    int64 max_lsn_commit_ms;
    int64 origin_ts_ms;     /* the local commit's time: the source's (a snapshot row's own); 0: now */
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
template <typename T> T *new_in_context(MemoryContext cxt) {
    T *obj = kafka_sync::ks_guard([]() { return new T(); });
    auto *cb = static_cast<MemoryContextCallback *>(MemoryContextAlloc(cxt, sizeof(MemoryContextCallback)));
    cb->func = [](void *arg) { delete static_cast<T *>(arg); };
    cb->arg = obj;
    MemoryContextRegisterResetCallback(cxt, cb);
    return obj;
}

/* apply_call.cpp: an apply call's setup and end */

/* The subscription's row, locked FOR SHARE; ERROR when it does not exist or is paused. */
Subscription *load_subscription(const char *name);
/* Sets up the subscription's replication origin for this session (waits a little for one just released). */
void use_origin(const Subscription *sub);
/* The table the current record names, quoted (NULL before it is decoded). */
const char *current_table(const ApplyContext *ctx);
/* Sets up ctx for one call, and errcallback (to pop when done) to name the record an error concerns. */
void begin_apply(ApplyContext *ctx, const char *sub_name, bool careful, MemoryContext call_context,
                 ErrorContextCallback *errcallback);
/* Truncates waiting in ctx, in one statement. */
void flush_truncates(ApplyContext *ctx);
/* The end of what this local transaction applies (progress, origin, commit time); next_offset -1: not recorded. */
void finish_local_transaction(ApplyContext *ctx, int64 next_offset);

/* record_checks.cpp: what a record is and may do */

/* Decodes ctx->current into ctx->headers / ctx->rec (rec NULL: nothing to apply); raises ERROR when it cannot. */
void decode_record(ApplyContext *ctx);
/* The commit record of an in-progress transaction applied here: false when not to commit it (see there). */
bool stream_commit_applies(ApplyContext *ctx, const char *headers, int headers_len);
/* ERROR unless the subscription may write relid. */
void check_target_allowed(ApplyContext *ctx, Oid relid);

/* record_apply.cpp: a decoded record to its table */

/* The local commit time of a snapshot row: its own, or (unknown) older than anything. */
int64 snapshot_row_time(const DecodedRecord *rec);
/* A record not applied (skipped, dead-lettered, another incarnation's) while the subscription resynchronises. */
void resync_not_applied(const Subscription *sub);
/* The record just handled ends its source transaction: copies of that one are skipped from now on. */
void note_transaction_end(ApplyContext *ctx, const DecodedHeaders *headers);
/* Applies the decoded ctx->rec; raises ERROR when it cannot. */
void apply_decoded(ApplyContext *ctx);
/* Decodes and applies ctx->current. Plain C style: it may run inside a subtransaction. */
void apply_record(void *arg);

/* dead_letters.cpp: records that could not be applied */

/* An error message bounded like a row image (kafka_sync.max_logged_value_size, at least 1 kB). */
const char *bounded_message(const char *error);
void insert_dead_letter(const Subscription *sub, const ChunkRecord *r, const char *error);
/* message (detail); context */
char *describe_error(ErrorData *edata);
/* An error that says nothing about the record (a deadlock, a cancel): the transaction is tried again. */
bool is_transient(int sqlerrcode);
/* A foreign key or unique constraint other than the key refused the record: a conflict of kind "constraint". */
void log_constraint_conflict(const ApplyContext *ctx, const char *message, const char *resolution);

} // namespace kafka_sync
