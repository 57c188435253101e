// The kafka_sync logical decoding output plugin.
//
// A pure encoder: every committed, locally originated change of a published
// table becomes one record (Kafka key + Debezium envelope value). Through SQL
// (pg_logical_slot_get_changes) each record is one JSON text row
// {"key": ..., "value": ...}; inside the producer worker (framing 'kafka') it
// is a binary frame handed straight to librdkafka. Changes that carry a
// replication origin were applied from a peer and are never emitted: that is
// what keeps multi-master sync free of loops.
#include "decode/change_encoding.hpp"
#include "decode/plugin_frames.hpp"
#include "decode/relation_info.hpp"

#include "boundary/pg_boundary.hpp"
#include "common/unix_time.hpp"

extern "C" {
#include "commands/defrem.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "replication/output_plugin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
}

namespace {

struct PluginState {
    MemoryContext change_context; /* reset after every change */
    RelationInfoSettings settings;
    bool tombstones;
    bool kafka_framing;
    bool streaming; /* option streaming: in-progress transactions in blocks */
    ChangeSource source;
    uint32 stream_subxid; /* in a stream block: the subtransaction of the change being written */
    uint64 txn_records;
    EncodedRecord *record; /* C++-owned buffers, reused for every record */
    RelationInfoCache *relations;
};

bool parse_bool_option(DefElem *elem) {
    if (elem->arg == nullptr)
        return true; /* a bare option name means "on", as in pgoutput */
    bool result;
    if (!parse_bool(strVal(elem->arg), &result))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("option \"%s\" of output plugin kafka_sync needs a boolean value, got \"%s\"",
                               elem->defname, strVal(elem->arg)),
                        errhint("Use true or false.")));
    return result;
}

const char *string_option(DefElem *elem) {
    if (elem->arg == nullptr || strVal(elem->arg)[0] == '\0')
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("option \"%s\" of output plugin kafka_sync needs a value", elem->defname)));
    return strVal(elem->arg);
}

bool valid_node_name(const char *name) {
    size_t len = strlen(name);
    if (len == 0 || len > 40)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    return true;
}

void parse_options(PluginState *state, List *options, bool is_init) {
    state->settings.publication = "kafka_sync";
    state->settings.node_name = nullptr;
    state->settings.include_schema = true;
    state->settings.include_xids = true;
    state->settings.include_lsn = true;
    state->settings.include_timestamps = true;
    state->tombstones = false;
    state->kafka_framing = false;
    state->streaming = false;

    ListCell *lc;
    foreach (lc, options) {
        DefElem *elem = lfirst_node(DefElem, lc);
        const char *name = elem->defname;
        if (strcmp(name, "node_name") == 0) {
            state->settings.node_name = string_option(elem);
            if (!valid_node_name(state->settings.node_name))
                ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                                errmsg("invalid node name \"%s\"", state->settings.node_name),
                                errdetail("A node name has 1 to 40 characters: lower-case letters, digits and "
                                          "underscores.")));
        } else if (strcmp(name, "publication") == 0)
            state->settings.publication = string_option(elem);
        else if (strcmp(name, "include_schema") == 0)
            state->settings.include_schema = parse_bool_option(elem);
        else if (strcmp(name, "include_xids") == 0)
            state->settings.include_xids = parse_bool_option(elem);
        else if (strcmp(name, "include_lsn") == 0)
            state->settings.include_lsn = parse_bool_option(elem);
        else if (strcmp(name, "include_timestamps") == 0)
            state->settings.include_timestamps = parse_bool_option(elem);
        else if (strcmp(name, "tombstones") == 0)
            state->tombstones = parse_bool_option(elem);
        else if (strcmp(name, "streaming") == 0)
            state->streaming = parse_bool_option(elem);
        else if (strcmp(name, "framing") == 0) {
            const char *framing = string_option(elem);
            if (strcmp(framing, "json") == 0)
                state->kafka_framing = false;
            else if (strcmp(framing, "kafka") == 0)
                state->kafka_framing = true;
            else
                ereport(ERROR,
                        (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                         errmsg("invalid value \"%s\" for option \"framing\" of output plugin kafka_sync", framing),
                         errhint("Use \"json\" (the default).")));
        } else
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                            errmsg("unrecognized option \"%s\" for output plugin kafka_sync", name),
                            errhint("Valid options are node_name, publication, include_schema, include_xids, "
                                    "include_lsn, include_timestamps and tombstones.")));
    }
    if (state->streaming && !state->kafka_framing)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("option \"streaming\" of output plugin kafka_sync is for its producer worker only"),
                        errdetail("In-progress transactions are streamed to Kafka by the node's producer worker."),
                        errhint("Turn it on for a node with kafka_sync.streaming in its kafka_config.")));
    /* Creating a slot decodes nothing: options matter only when reading it. */
    if (state->settings.node_name == nullptr && is_init)
        state->settings.node_name = "unnamed";
    if (state->settings.node_name == nullptr)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("output plugin kafka_sync needs the option \"node_name\""),
                        errhint("Pass it with the slot options, e.g. pg_logical_slot_get_changes(slot, NULL, NULL, "
                                "'node_name', 'chat1').")));
}

PluginState *state_of(LogicalDecodingContext *ctx) {
    return static_cast<PluginState *>(ctx->output_plugin_private);
}

void write_frame(LogicalDecodingContext *ctx, bool last, kafka_sync::FrameKind kind, const void *body, size_t len) {
    OutputPluginPrepareWrite(ctx, last);
    appendStringInfoChar(ctx->out, kind);
    appendBinaryStringInfo(ctx->out, static_cast<const char *>(body), static_cast<int>(len));
    OutputPluginWrite(ctx, last);
}

/* Hand the encoded record (and its tombstone, if asked for) to the writer. */
void emit_record(LogicalDecodingContext *ctx, PluginState *state, bool tombstone) {
    EncodedRecord *rec = state->record;
    if (rec->value.size() >= kafka_sync::kFrameNull || rec->key.size() >= kafka_sync::kFrameNull)
        ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED), errmsg("kafka_sync record is larger than 4 GB")));
    OutputPluginPrepareWrite(ctx, true);
    if (state->kafka_framing) {
        const bool streamed = state->stream_subxid != InvalidTransactionId;
        appendStringInfoChar(ctx->out, streamed ? kafka_sync::kFrameStreamRecord : kafka_sync::kFrameRecord);
        if (streamed) {
            kafka_sync::StreamRecordFrame stream;
            stream.subxid = state->stream_subxid;
            appendBinaryStringInfo(ctx->out, reinterpret_cast<const char *>(&stream), sizeof(stream));
        }
        kafka_sync::RecordFrame frame;
        frame.key_len = rec->has_key ? static_cast<uint32>(rec->key.size()) : kafka_sync::kFrameNull;
        frame.value_len = tombstone ? kafka_sync::kFrameNull : static_cast<uint32>(rec->value.size());
        appendBinaryStringInfo(ctx->out, reinterpret_cast<const char *>(&frame), sizeof(frame));
        if (rec->has_key)
            appendBinaryStringInfo(ctx->out, rec->key.data(), static_cast<int>(rec->key.size()));
        if (!tombstone)
            appendBinaryStringInfo(ctx->out, rec->value.data(), static_cast<int>(rec->value.size()));
    } else {
        appendStringInfoString(ctx->out, "{\"key\":");
        if (rec->has_key)
            appendBinaryStringInfo(ctx->out, rec->key.data(), static_cast<int>(rec->key.size()));
        else
            appendStringInfoString(ctx->out, "null");
        appendStringInfoString(ctx->out, ",\"value\":");
        if (tombstone)
            appendStringInfoString(ctx->out, "null");
        else
            appendBinaryStringInfo(ctx->out, rec->value.data(), static_cast<int>(rec->value.size()));
        appendStringInfoChar(ctx->out, '}');
    }
    OutputPluginWrite(ctx, true);
    state->txn_records++;
}

void kafka_sync_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init) {
    auto *state = static_cast<PluginState *>(MemoryContextAllocZero(ctx->context, sizeof(PluginState)));
    state->change_context = AllocSetContextCreate(ctx->context, "kafka_sync change", ALLOCSET_DEFAULT_SIZES);
    ctx->output_plugin_private = state;
    parse_options(state, ctx->output_plugin_options, is_init);
    opt->output_type = state->kafka_framing ? OUTPUT_PLUGIN_BINARY_OUTPUT : OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
    opt->receive_rewrites = false;
    /* core offers streaming because the stream callbacks exist; only the worker's option asks for it */
    ctx->streaming = ctx->streaming && state->streaming && !is_init;
    state->relations = relation_info_cache_create(&state->settings, ctx->context);
    state->record = kafka_sync::ks_guard([]() { return new EncodedRecord(); });
}

void kafka_sync_shutdown(LogicalDecodingContext *ctx) {
    PluginState *state = state_of(ctx);
    if (!state)
        return;
    delete state->record;
    state->record = nullptr;
    relation_info_cache_destroy(state->relations);
    state->relations = nullptr;
}

void kafka_sync_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn) {
    PluginState *state = state_of(ctx);
    state->stream_subxid = InvalidTransactionId;
    state->source.commit_ts_ms = timestamptz_to_unix_ms(txn->xact_time.commit_time);
    state->source.xid = txn->xid;
    state->source.commit_lsn = txn->end_lsn;
    state->source.snapshot = "false";
    state->source.txn_seq++;
    state->txn_records = 0;
    if (state->kafka_framing) {
        kafka_sync::BeginFrame frame;
        frame.commit_lsn = txn->end_lsn;
        frame.commit_ts_ms = state->source.commit_ts_ms;
        frame.xid = txn->xid;
        write_frame(ctx, false, kafka_sync::kFrameBegin, &frame, sizeof(frame));
    }
}

void kafka_sync_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr) {
    PluginState *state = state_of(ctx);
    if (state->kafka_framing) {
        kafka_sync::CommitFrame frame;
        frame.commit_lsn = txn->end_lsn;
        frame.nrecords = state->txn_records;
        write_frame(ctx, true, kafka_sync::kFrameCommit, &frame, sizeof(frame));
    }
}

void kafka_sync_change(LogicalDecodingContext *ctx, ReorderBufferTXN *, Relation rel, ReorderBufferChange *change) {
    PluginState *state = state_of(ctx);
    MemoryContext old = MemoryContextSwitchTo(state->change_context);
    RelationInfo *info = relation_info_get(state->relations, rel);
    char op = 0;
    HeapTuple oldtuple = nullptr;
    HeapTuple newtuple = nullptr;
    switch (change->action) {
    case REORDER_BUFFER_CHANGE_INSERT:
        if (info->published && info->pub_insert) {
            op = 'c';
            newtuple = change->data.tp.newtuple ? &change->data.tp.newtuple->tuple : nullptr;
        }
        break;
    case REORDER_BUFFER_CHANGE_UPDATE:
        if (info->published && info->pub_update) {
            op = 'u';
            oldtuple = change->data.tp.oldtuple ? &change->data.tp.oldtuple->tuple : nullptr;
            newtuple = change->data.tp.newtuple ? &change->data.tp.newtuple->tuple : nullptr;
        }
        break;
    case REORDER_BUFFER_CHANGE_DELETE:
        if (info->published && info->pub_delete) {
            op = 'd';
            oldtuple = change->data.tp.oldtuple ? &change->data.tp.oldtuple->tuple : nullptr;
        }
        break;
    default: break;
    }
    /* An insert or update always carries its new tuple; be defensive anyway. */
    if (op != 0 && (op == 'd' || newtuple != nullptr)) {
        encode_row_change(info, rel, op, oldtuple, newtuple, &state->source, state->txn_records + 1, state->record);
        emit_record(ctx, state, false);
        if (op == 'd' && state->tombstones && state->record->has_key)
            emit_record(ctx, state, true);
    }
    MemoryContextSwitchTo(old);
    MemoryContextReset(state->change_context);
}

void kafka_sync_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *, int nrelations, Relation relations[],
                         ReorderBufferChange *) {
    PluginState *state = state_of(ctx);
    MemoryContext old = MemoryContextSwitchTo(state->change_context);
    for (int i = 0; i < nrelations; i++) {
        RelationInfo *info = relation_info_get(state->relations, relations[i]);
        if (!info->published || !info->pub_truncate)
            continue;
        encode_truncate(info, &state->source, state->txn_records + 1, state->record);
        emit_record(ctx, state, false);
    }
    MemoryContextSwitchTo(old);
    MemoryContextReset(state->change_context);
}

/*
 * Streaming (option streaming, the producer worker's kafka_sync.streaming):
 * once the changes decoded but not yet committed outgrow
 * logical_decoding_work_mem, PostgreSQL hands the largest transaction's to
 * the plugin in blocks (stream_start .. stream_stop), then its commit or
 * abort. A streamed record has what a committed one has, except what is known
 * only at commit: its source.lsn is the change's own LSN and its ts_ms the
 * time it was decoded. The worker marks it; the commit carries the rest.
 */
struct StreamTxn {
    uint64 txn_seq; /* source.txn_seq of every block of this transaction */
    uint64 records; /* records written so far, over all its blocks */
};

ReorderBufferTXN *top_of(ReorderBufferTXN *txn) {
    return txn->toptxn ? txn->toptxn : txn;
}

StreamTxn *stream_txn(LogicalDecodingContext *ctx, ReorderBufferTXN *txn) {
    ReorderBufferTXN *top = top_of(txn);
    if (!top->output_plugin_private) {
        auto *st = static_cast<StreamTxn *>(MemoryContextAllocZero(ctx->context, sizeof(StreamTxn)));
        st->txn_seq = ++state_of(ctx)->source.txn_seq;
        top->output_plugin_private = st;
    }
    return static_cast<StreamTxn *>(top->output_plugin_private);
}

void forget_stream_txn(ReorderBufferTXN *txn) {
    if (txn->toptxn == nullptr && txn->output_plugin_private) {
        pfree(txn->output_plugin_private);
        txn->output_plugin_private = nullptr;
    }
}

void kafka_sync_stream_start(LogicalDecodingContext *ctx, ReorderBufferTXN *txn) {
    kafka_sync::StreamStartFrame frame;
    frame.xid = top_of(txn)->xid;
    write_frame(ctx, true, kafka_sync::kFrameStreamStart, &frame, sizeof(frame));
}

void kafka_sync_stream_stop(LogicalDecodingContext *ctx, ReorderBufferTXN *) {
    state_of(ctx)->stream_subxid = InvalidTransactionId;
    write_frame(ctx, true, kafka_sync::kFrameStreamStop, "", 0);
}

/* The streamed change's source: what kafka_sync_change and kafka_sync_truncate encode with. */
void enter_stream_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, ReorderBufferTXN *change_txn,
                         XLogRecPtr lsn) {
    PluginState *state = state_of(ctx);
    StreamTxn *st = stream_txn(ctx, txn);
    state->source.xid = top_of(txn)->xid;
    state->source.commit_lsn = lsn;
    state->source.commit_ts_ms = timestamptz_to_unix_ms(GetCurrentTimestamp());
    state->source.snapshot = "false";
    state->txn_records = st->records;
    state->stream_subxid = change_txn ? change_txn->xid : top_of(txn)->xid;
}

void leave_stream_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn) {
    PluginState *state = state_of(ctx);
    stream_txn(ctx, txn)->records = state->txn_records;
    state->stream_subxid = InvalidTransactionId;
}

void kafka_sync_stream_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel,
                              ReorderBufferChange *change) {
    const uint64 stream_seq = stream_txn(ctx, txn)->txn_seq; /* may take the next txn_seq: before saving it */
    const uint64 saved_seq = state_of(ctx)->source.txn_seq;
    enter_stream_change(ctx, txn, change->txn, change->lsn);
    state_of(ctx)->source.txn_seq = stream_seq;
    kafka_sync_change(ctx, txn, rel, change);
    state_of(ctx)->source.txn_seq = saved_seq;
    leave_stream_change(ctx, txn);
}

void kafka_sync_stream_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, int nrelations,
                                Relation relations[], ReorderBufferChange *change) {
    const uint64 stream_seq = stream_txn(ctx, txn)->txn_seq; /* may take the next txn_seq: before saving it */
    const uint64 saved_seq = state_of(ctx)->source.txn_seq;
    enter_stream_change(ctx, txn, change->txn, change->lsn);
    state_of(ctx)->source.txn_seq = stream_seq;
    kafka_sync_truncate(ctx, txn, nrelations, relations, change);
    state_of(ctx)->source.txn_seq = saved_seq;
    leave_stream_change(ctx, txn);
}

/* txn: the transaction, or (txn->toptxn set) the subtransaction that aborted. */
void kafka_sync_stream_abort(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr) {
    kafka_sync::StreamAbortFrame frame;
    frame.xid = top_of(txn)->xid;
    frame.subxid = txn->xid;
    write_frame(ctx, true, kafka_sync::kFrameStreamAbort, &frame, sizeof(frame));
    forget_stream_txn(txn);
}

void kafka_sync_stream_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr) {
    kafka_sync::StreamCommitFrame frame;
    frame.commit_lsn = txn->end_lsn;
    frame.commit_ts_ms = timestamptz_to_unix_ms(txn->xact_time.commit_time);
    frame.xid = txn->xid;
    write_frame(ctx, true, kafka_sync::kFrameStreamCommit, &frame, sizeof(frame));
    forget_stream_txn(txn);
}

/* Changes applied from a peer carry its replication origin: never republish. */
bool kafka_sync_filter_by_origin(LogicalDecodingContext *, RepOriginId origin_id) {
    return origin_id != InvalidRepOriginId;
}

} // namespace

extern "C" {

PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

void _PG_output_plugin_init(OutputPluginCallbacks *cb) {
    cb->startup_cb = kafka_sync_startup;
    cb->begin_cb = kafka_sync_begin;
    cb->change_cb = kafka_sync_change;
    cb->truncate_cb = kafka_sync_truncate;
    cb->commit_cb = kafka_sync_commit;
    cb->filter_by_origin_cb = kafka_sync_filter_by_origin;
    cb->shutdown_cb = kafka_sync_shutdown;
    cb->stream_start_cb = kafka_sync_stream_start;
    cb->stream_stop_cb = kafka_sync_stream_stop;
    cb->stream_change_cb = kafka_sync_stream_change;
    cb->stream_truncate_cb = kafka_sync_stream_truncate;
    cb->stream_abort_cb = kafka_sync_stream_abort;
    cb->stream_commit_cb = kafka_sync_stream_commit;
}
}
