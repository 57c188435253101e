// The WAL stream: the producer worker reads its node's slot and hands each
// transaction the output plugin publishes to txn_delivery.cpp.
//
// WAL is decoded in-process (no SQL polling, no re-decoding): the output
// plugin writes binary frames (decode/plugin_frames.hpp) that come back
// here. Between two decoded transactions the stream also serves
// kafka_sync.resnapshot() requests and watches the WAL the slot retains.
#include "common/settings.hpp"
#include "produce/worker_state.hpp"

#include "boundary/pg_boundary.hpp"
#include "decode/plugin_frames.hpp"

extern "C" {
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/value.h"
#include "pgstat.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
}

namespace kafka_sync {

int retained_wal_warning_mb = 10240;

namespace {

/* The stream's wait once it has read all flushed WAL: on its latch, or in librdkafka while acks are due. */
constexpr int kPollIntervalMs = 10;
/* How often the stream looks for a kafka_sync.resnapshot() request unwoken. */
constexpr int kResnapshotPollMs = 1000;

/* ---- decoding: the output plugin writes frames, we produce them ---- */

void frames_prepare_write(LogicalDecodingContext *ctx, XLogRecPtr, TransactionId, bool) {
    resetStringInfo(ctx->out);
}

/* A RecordFrame and the key and value after it, which end the frame. */
struct FramedRecord {
    const char *key;
    size_t key_len;
    bool has_key;
    const char *value;
    size_t value_len;
    bool has_value;
};

FramedRecord framed_record(const char *body, size_t len, const char *what) {
    RecordFrame f;
    if (len < sizeof(f))
        elog(ERROR, "kafka_sync: malformed %s frame", what);
    memcpy(&f, body, sizeof(f));
    FramedRecord r;
    r.has_key = f.key_len != kFrameNull;
    r.has_value = f.value_len != kFrameNull;
    r.key_len = r.has_key ? f.key_len : 0;
    r.value_len = r.has_value ? f.value_len : 0;
    if (len != sizeof(f) + r.key_len + r.value_len)
        elog(ERROR, "kafka_sync: malformed %s frame", what);
    r.key = body + sizeof(f);
    r.value = r.key + r.key_len;
    return r;
}

void frames_write(LogicalDecodingContext *ctx, XLogRecPtr, TransactionId, bool) {
    auto *w = static_cast<NodeWorker *>(ctx->output_writer_private);
    const char *data = ctx->out->data;
    const size_t len = static_cast<size_t>(ctx->out->len);
    if (len < 1)
        elog(ERROR, "kafka_sync: empty frame from the output plugin");
    switch (data[0]) {
    case kFrameBegin: {
        BeginFrame f;
        if (len != 1 + sizeof(f))
            elog(ERROR, "kafka_sync: malformed begin frame");
        memcpy(&f, data + 1, sizeof(f));
        node_worker_begin_txn(w, f.commit_lsn, f.xid, f.commit_ts_ms);
        break;
    }
    case kFrameRecord: {
        const FramedRecord r = framed_record(data + 1, len - 1, "record");
        node_worker_add_record(w, r.key, r.key_len, r.has_key, r.value, r.value_len, r.has_value);
        break;
    }
    case kFrameCommit: {
        CommitFrame f;
        if (len != 1 + sizeof(f))
            elog(ERROR, "kafka_sync: malformed commit frame");
        memcpy(&f, data + 1, sizeof(f));
        node_worker_end_txn(w, f.nrecords);
        break;
    }
    case kFrameStreamStart: {
        StreamStartFrame f;
        if (len != 1 + sizeof(f))
            elog(ERROR, "kafka_sync: malformed stream start frame");
        memcpy(&f, data + 1, sizeof(f));
        node_worker_stream_start(w, f.xid);
        break;
    }
    case kFrameStreamRecord: {
        StreamRecordFrame f;
        if (len < 1 + sizeof(f))
            elog(ERROR, "kafka_sync: malformed stream record frame");
        memcpy(&f, data + 1, sizeof(f));
        const FramedRecord r = framed_record(data + 1 + sizeof(f), len - 1 - sizeof(f), "stream record");
        node_worker_add_stream_record(w, f.subxid, r.key, r.key_len, r.has_key, r.value, r.value_len, r.has_value);
        break;
    }
    case kFrameStreamStop:
        if (len != 1)
            elog(ERROR, "kafka_sync: malformed stream stop frame");
        node_worker_stream_stop(w);
        break;
    case kFrameStreamAbort: {
        StreamAbortFrame f;
        if (len != 1 + sizeof(f))
            elog(ERROR, "kafka_sync: malformed stream abort frame");
        memcpy(&f, data + 1, sizeof(f));
        node_worker_stream_abort(w, f.xid, f.subxid);
        break;
    }
    case kFrameStreamCommit: {
        StreamCommitFrame f;
        if (len != 1 + sizeof(f))
            elog(ERROR, "kafka_sync: malformed stream commit frame");
        memcpy(&f, data + 1, sizeof(f));
        node_worker_stream_commit(w, f.xid, f.commit_lsn, f.commit_ts_ms);
        break;
    }
    default: elog(ERROR, "kafka_sync: unknown frame kind %d", data[0]);
    }
}

List *plugin_options(NodeWorker *w) {
    List *opts = NIL;
    opts = lappend(opts, makeDefElem(pstrdup("node_name"), (Node *)makeString(pstrdup(w->cfg.node_name)), -1));
    opts = lappend(opts, makeDefElem(pstrdup("publication"), (Node *)makeString(pstrdup(w->cfg.publication)), -1));
    opts = lappend(opts, makeDefElem(pstrdup("framing"), (Node *)makeString(pstrdup("kafka")), -1));
    opts = lappend(
        opts, makeDefElem(pstrdup("include_schema"), (Node *)makeString(pstrdup(w->schemas ? "true" : "false")), -1));
    opts = lappend(
        opts, makeDefElem(pstrdup("tombstones"), (Node *)makeString(pstrdup(w->tombstones ? "true" : "false")), -1));
    if (w->stream_in_progress)
        opts = lappend(opts, makeDefElem(pstrdup("streaming"), (Node *)makeString(pstrdup("true")), -1));
    return opts;
}

/*
 * kafka_sync.resnapshot(): publish every row again, between two decoded
 * transactions, as a pseudo-transaction whose lsn header X+1 sits right
 * above X, the last transaction published (or the slot's confirmed position
 * when there is none): above everything published before, below every
 * commit decoded later (a later commit record starts at or after the read
 * position, so it ends well above X+1).
 *
 * After a restart, the earlier run may have published transactions beyond
 * the slot's confirmed position; they are decoded again, so a snapshot
 * waits until this run has read all WAL flushed when it began. A snapshot
 * directly after another waits until some WAL record was read past the
 * first, so their headers stay below the next commit.
 */
void serve_resnapshot(NodeWorker *w, XLogRecPtr read_upto, bool at_start = false) {
    if (w->resnapshot_seq != 0) {
        bool acknowledged = ks_guard([&]() { return w->inflight->completed(w->resnapshot_seq); });
        if (!acknowledged)
            return;
        resnapshot_mark_done(w->resnapshot_request, w->resnapshot_lsn, w->resnapshot_records);
        ereport(LOG, (errmsg("kafka_sync node %s: resnapshot at %X/%X acknowledged (" UINT64_FORMAT " records)",
                             w->cfg.node_name, KS_LSN_ARGS(w->resnapshot_lsn), w->resnapshot_records)));
        w->resnapshot_seq = 0;
        w->resnapshot_request = 0;
        w->snapshot_running = false;
        set_state(w, NODE_STATE_STREAMING, nullptr);
    }
    const uint64 x = w->last_header_lsn != 0 ? w->last_header_lsn : w->confirmed;
    bool first_initial = false;
    if (at_start) {
        /*
         * Before anything is decoded: only the node's initial snapshot that
         * no earlier run began, so nothing is above the slot's position yet
         * and it goes first (every commit after create_node() follows it).
         */
        TimestampTz requested_at = resnapshot_requested(&first_initial);
        if (requested_at == 0 || !first_initial)
            return;
    } else {
        if (read_upto < w->startup_flush || read_upto < x)
            return;
        /*
         * Not while a streamed transaction is open: its first records are
         * before the snapshot in the topic, its commit after it, and a peer
         * that starts reading at the snapshot would see only its end.
         */
        if (node_worker_streams_open(w))
            return;
        TimestampTz now = GetCurrentTimestamp();
        if (!w->resnapshot_wake && !TimestampDifferenceExceeds(w->resnapshot_checked, now, kResnapshotPollMs))
            return;
        w->resnapshot_wake = false;
        w->resnapshot_checked = now;
    }
    TimestampTz requested_at = resnapshot_requested(&first_initial);
    if (requested_at == 0)
        return;
    resnapshot_mark_started(requested_at);

    const uint64 header_lsn = x + 1;
    const uint64 confirm_lsn = Max(w->last_ring_lsn, w->confirmed);
    const uint32 nxids = Min(w->recent_xids_next, kRecentXids);
    w->snapshot_running = true;
    set_state(w, NODE_STATE_SNAPSHOT, nullptr);
    ereport(LOG, (errmsg("kafka_sync node %s: resnapshot requested at %s, publishing at %X/%X", w->cfg.node_name,
                         timestamptz_to_str(requested_at), KS_LSN_ARGS(header_lsn))));
    uint64 nrecords = publish_resnapshot(w, header_lsn, confirm_lsn, w->recent_xids, nxids);
    w->resnapshot_seq = w->seq;
    w->resnapshot_request = requested_at;
    w->resnapshot_lsn = header_lsn;
    w->resnapshot_records = nrecords;
}

/*
 * kafka_sync.retained_wal_warning: a WARNING when the slot keeps more WAL
 * than that (when it gets there, then every 10 minutes while it stays
 * above); node_status shows state retaining_wal meanwhile. Nothing is dropped.
 */
void check_retained_wal(NodeWorker *w) {
    constexpr long kCheckMs = 10000;
    constexpr long kRepeatMs = 600000;
    TimestampTz now = GetCurrentTimestamp();
    if (!TimestampDifferenceExceeds(w->wal_checked, now, kCheckMs))
        return;
    w->wal_checked = now;
    XLogRecPtr restart = MyReplicationSlot->data.restart_lsn;
    XLogRecPtr insert = GetXLogInsertRecPtr();
    uint64 retained_mb = insert > restart ? (insert - restart) / (1024 * 1024) : 0;
    if (retained_wal_warning_mb <= 0 || retained_mb < (uint64)retained_wal_warning_mb) {
        w->wal_warned_at = 0;
        return;
    }
    if (w->wal_warned_at != 0 && !TimestampDifferenceExceeds(w->wal_warned_at, now, kRepeatMs))
        return;
    w->wal_warned_at = now;
    ereport(WARNING,
            (errmsg("kafka_sync node %s retains " UINT64_FORMAT " MB of WAL, more than kafka_sync.retained_wal_warning "
                    "(%d MB)",
                    w->cfg.node_name, retained_mb, retained_wal_warning_mb),
             errdetail("Its replication slot keeps WAL until Kafka has acknowledged the records of every transaction; "
                       "nothing is dropped."),
             errhint("See kafka_sync.node_status: Kafka unreachable (last_error), or a long-running transaction on "
                     "this server, holds it back.")));
}

} // namespace

void stream_wal(NodeWorker *w) {
    if (w->stream_in_progress) {
        /* the reorder buffer streams the largest open transaction once it holds this much */
        char value[32];
        snprintf(value, sizeof(value), "%d", w->stream_work_mem_kb);
        SetConfigOption("logical_decoding_work_mem", value, PGC_SUSET, PGC_S_OVERRIDE);
    }
    ReplicationSlotAcquire(w->cfg.slot_name, true);
    LogicalDecodingContext *ctx =
        CreateDecodingContext(InvalidXLogRecPtr, plugin_options(w), false, node_local_wal_reader(),
                              frames_prepare_write, frames_write, nullptr);
    ctx->output_writer_private = w;
    XLogBeginRead(ctx->reader, MyReplicationSlot->data.restart_lsn);
    w->confirmed = MyReplicationSlot->data.confirmed_flush;
    w->confirmable = w->confirmed;
    w->startup_flush = GetFlushRecPtr(nullptr);
    w->streaming = true;
    set_state(w, NODE_STATE_STREAMING, nullptr);
    ereport(LOG, (errmsg("kafka_sync node %s: streaming to topic %s.%s from %X/%X", w->cfg.node_name,
                         w->cfg.topic_prefix, w->cfg.node_name, KS_LSN_ARGS(w->confirmed))));
    if (w->stream_in_progress)
        node_worker_stream_reset(w);
    serve_resnapshot(w, ctx->reader->EndRecPtr, true);

    for (;;) {
        CHECK_FOR_INTERRUPTS();
        handle_reload(w);
        check_stop_requested(w);
        check_retained_wal(w);

        XLogRecPtr flush = GetFlushRecPtr(nullptr);
        int nrecords = 0;
        while (ctx->reader->EndRecPtr < flush && nrecords < 10000) {
            char *errm = nullptr;
            XLogRecord *record = XLogReadRecord(ctx->reader, &errm);
            if (errm)
                ereport(ERROR, (errmsg("kafka_sync node %s could not read WAL: %s", w->cfg.node_name, errm)));
            if (record)
                LogicalDecodingProcessRecord(ctx, ctx->reader);
            if ((++nrecords & 255) == 0) {
                service_producer(w, 0);
                CHECK_FOR_INTERRUPTS();
            }
        }

        /*
         * Between records no transaction is half-produced. With nothing in
         * flight, everything read so far is done with: confirm it, or WAL
         * that holds no published change would be retained forever.
         */
        serve_resnapshot(w, ctx->reader->EndRecPtr);
        bool idle = ks_guard([&]() { return w->inflight->empty(); });
        if (idle && ctx->reader->EndRecPtr > w->confirmable)
            w->confirmable = ctx->reader->EndRecPtr;
        bool caught_up = ctx->reader->EndRecPtr >= flush;
        if (!caught_up) {
            service_producer(w, 0);
            continue;
        }
        if (idle) {
            service_producer(w, 0);
            int rc =
                WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, kPollIntervalMs, PG_WAIT_EXTENSION);
            ResetLatch(MyLatch);
            if (rc & WL_LATCH_SET) {
                /* every commit in this database sets the latch (commit_wake.cpp); kafka_sync.resnapshot()'s says so */
                SpinLockAcquire(&w->slot->mutex);
                w->resnapshot_wake |= w->slot->resnapshot_wake;
                w->slot->resnapshot_wake = false;
                SpinLockRelease(&w->slot->mutex);
            }
        } else {
            /* waiting for acknowledgements: sleep inside librdkafka */
            service_producer(w, kPollIntervalMs);
            if (!PostmasterIsAlive())
                proc_exit(1);
        }
    }
}

XLogReaderRoutine *node_local_wal_reader(void) {
    static XLogReaderRoutine routine;
    routine.page_read = read_local_xlog_page;
    routine.segment_open = wal_segment_open;
    routine.segment_close = wal_segment_close;
    return &routine;
}

} // namespace kafka_sync
