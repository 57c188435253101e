// The producer worker: one per node, owns the node's logical slot.
//
// It decodes WAL in-process (no SQL polling, no re-decoding), hands each
// record the output plugin makes to librdkafka, and confirms a transaction's
// commit LSN on the slot only once Kafka acknowledged every record of it and
// of everything before it (InflightTransactions). A crash or restart at any
// point therefore re-decodes from the last confirmed position: records may
// be produced twice (same commit LSN, detectable), never lost.
#include "produce/node_worker.hpp"

#include "boundary/pg_boundary.hpp"
#include "common/secrets_file.hpp"
#include "common/unix_time.hpp"
#include "decode/plugin_frames.hpp"
#include "produce/kafka_producer.hpp"
#include "produce/launcher.hpp"

extern "C" {
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "catalog/namespace.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/value.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "replication/snapbuild.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
}

#include <malloc.h>
#include <stdexcept>
#include <string>

int kafka_sync_poll_interval_ms = 10;
int kafka_sync_retained_wal_warning_mb = 10240;
char *kafka_sync_allowed_kafka_properties = nullptr;

namespace {

/* No acknowledgement for this long while records wait: Kafka is unavailable. */
constexpr int kUnavailableAfterMs = 5000;
/* Confirming the slot costs a spinlock and, sometimes, a slot file write. */
constexpr int kConfirmIntervalMs = 100;
constexpr int kTopicRetryMs = 2000;
/* How often the stream looks for a kafka_sync.resnapshot() request unwoken. */
constexpr int kResnapshotPollMs = 1000;
/*
 * Handed-over transactions a resnapshot makes sure it sees: the committing
 * backend leaves the proc array only a moment after its commit record is
 * flushed (and decodable); see wait_until_visible in resnapshot.cpp.
 */
constexpr uint32 kRecentXids = 4096;

struct NodeConfig {
    char *node_name;
    char *brokers;
    char *publication;
    char *topic_prefix;
    char *slot_name;
    char *created; /* the node's created_at, in microseconds since 1970: one per create_node */
};

} // namespace

struct NodeWorker {
    NodeSlot *slot;
    NodeConfig cfg;
    kafka_sync::InflightTransactions *inflight;
    kafka_sync::KafkaProducer *producer;
    bool schemas;
    bool tombstones;

    /* the open source transaction */
    kafka_sync::InflightTransactions::Seq seq;
    kafka_sync::RecordHeaders headers;
    bool in_txn;
    uint64 txn_seq; /* records produced of the open transaction */

    /* the secrets file the producer was made with, and its content then */
    std::string *secrets_file;
    std::string *secrets_content;

    /* the held-back record (see node_worker_add_record) */
    std::string *held_key;
    std::string *held_value;
    bool held;
    bool held_has_key;
    bool held_has_value;

    uint64 produced;
    XLogRecPtr confirmable;
    XLogRecPtr confirmed;
    TimestampTz last_confirm;
    TimestampTz wal_checked;     /* see check_retained_wal */
    TimestampTz wal_warned_at;   /* 0: not above kafka_sync.retained_wal_warning */
    bool streaming; /* a decoding slot is acquired and may be confirmed */

    /* kafka_sync.resnapshot(), see serve_resnapshot */
    uint64 last_header_lsn;    /* lsn header of the last transaction with records; 0: none yet */
    uint64 last_ring_lsn;      /* in-flight ring position of the last transaction, empty or not */
    XLogRecPtr startup_flush;  /* WAL flushed when this run began streaming */
    bool snapshot_running;     /* a resnapshot is out and not all acknowledged: state 'snapshot' */
    bool resnapshot_wake;      /* latch set: look for a request now */
    TimestampTz resnapshot_checked;
    TimestampTz resnapshot_request;                  /* being published; 0: none */
    kafka_sync::InflightTransactions::Seq resnapshot_seq; /* its pseudo-transaction */
    uint64 resnapshot_lsn;
    uint64 resnapshot_records;
    /* xids of the last transactions handed to the producer (a ring) */
    TransactionId recent_xids[kRecentXids];
    uint32 recent_xids_next;
};

namespace {

NodeWorker *worker = nullptr;

char *copy_text(SPITupleTable *tt, int col) {
    char *v = SPI_getvalue(tt->vals[0], tt->tupdesc, col);
    return MemoryContextStrdup(TopMemoryContext, v ? v : "");
}

/*
 * Reads the node row. Returns false when this database is not a node (no
 * extension, or no row). Also returns kafka_config as key/value text pairs.
 */
bool load_node_config(NodeConfig *cfg, List **pairs_pg, bool probe_only) {
    bool found = false;
    SetCurrentStatementStartTimestamp();
    StartTransactionCommand();
    PushActiveSnapshot(GetTransactionSnapshot());
    Oid nsp = get_namespace_oid("kafka_sync", true);
    if (OidIsValid(nsp) && OidIsValid(get_relname_relid("node", nsp))) {
        SPI_connect();
        /* a paused node is, for the worker, no node: it exits quietly */
        int rc = SPI_execute("SELECT node_name, brokers, publication, topic_prefix, slot_name, "
                             "(extract(epoch FROM created_at) * 1000000)::bigint "
                             "FROM kafka_sync.node WHERE enabled",
                             true, 1);
        if (probe_only) {
            rc = SPI_execute("SELECT 1 FROM kafka_sync.node", true, 1);
            found = rc == SPI_OK_SELECT && SPI_processed == 1;
        } else if (rc == SPI_OK_SELECT && SPI_processed == 1) {
            found = true;
            cfg->node_name = copy_text(SPI_tuptable, 1);
            cfg->brokers = copy_text(SPI_tuptable, 2);
            cfg->publication = copy_text(SPI_tuptable, 3);
            cfg->topic_prefix = copy_text(SPI_tuptable, 4);
            cfg->slot_name = copy_text(SPI_tuptable, 5);
            cfg->created = copy_text(SPI_tuptable, 6);
            rc = SPI_execute("SELECT key, value FROM kafka_sync.node, jsonb_each_text(kafka_config) WHERE enabled ORDER BY key", true, 0);
            if (rc != SPI_OK_SELECT)
                elog(ERROR, "could not read kafka_config of node %s", cfg->node_name);
            MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
            *pairs_pg = NIL;
            for (uint64 i = 0; i < SPI_processed; i++) {
                char *k = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
                char *v = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
                *pairs_pg = lappend(*pairs_pg, pstrdup(k));
                *pairs_pg = lappend(*pairs_pg, pstrdup(v ? v : ""));
            }
            MemoryContextSwitchTo(old);
        }
        SPI_finish();
    }
    PopActiveSnapshot();
    CommitTransactionCommand();
    return found;
}

void set_state(NodeWorker *w, NodeWorkerState state, const char *error) {
    NodeSlot *slot = w->slot;
    SpinLockAcquire(&slot->mutex);
    slot->state = state;
    if (error) {
        strlcpy(slot->last_error, error, sizeof(slot->last_error));
        slot->last_error_time = GetCurrentTimestamp();
    }
    slot->records_produced = w->produced;
    slot->records_acknowledged = w->producer ? w->producer->acknowledged() : 0;
    if (w->producer && w->producer->last_delivery_ms() > 0)
        slot->last_ack_time = unix_ms_to_timestamptz(w->producer->last_delivery_ms());
    slot->confirmed_lsn = w->confirmed;
    slot->inflight_transactions = w->inflight ? w->inflight->size() : 0;
    SpinLockRelease(&slot->mutex);
}

void log_librdkafka_lines(NodeWorker *w) {
    kafka_sync::ks_guard([&]() {
        for (const auto &line : w->producer->take_log_lines())
            kafka_sync::pg_call([&]() { ereport(LOG, (errmsg("kafka_sync node %s: %s", w->cfg.node_name, line.c_str()))); });
    });
}

/*
 * The producer's last error, copied into a static buffer: this runs in every
 * loop iteration during an outage, so it must not allocate.
 */
const char *producer_error(NodeWorker *w) {
    static char buffer[KS_ERROR_LEN];
    kafka_sync::ks_guard([&]() { strlcpy(buffer, w->producer->error().c_str(), sizeof(buffer)); });
    return buffer;
}

void confirm(NodeWorker *w, bool force) {
    if (!w->streaming || w->confirmable <= w->confirmed)
        return;
    TimestampTz now = GetCurrentTimestamp();
    if (!force && !TimestampDifferenceExceeds(w->last_confirm, now, kConfirmIntervalMs))
        return;
    LogicalConfirmReceivedLocation(w->confirmable);
    /* confirmed_flush alone does not dirty the slot; make a clean restart keep it */
    ReplicationSlotMarkDirty();
    w->confirmed = w->confirmable;
    w->last_confirm = now;
}

/* What one poll of librdkafka left behind, read in one guarded step. */
struct ProducerView {
    uint64 confirmable; /* 0: nothing newly complete */
    bool delivery_failed;
    bool waiting; /* records produced, not yet acknowledged */
    bool brokers_down;
    int64 last_ack_ms;
};

/* Serve librdkafka, take what Kafka acknowledged, publish status. */
void service_producer(NodeWorker *w, int timeout_ms) {
    ProducerView v = kafka_sync::ks_guard([&]() {
        w->producer->poll(timeout_ms);
        return ProducerView{w->inflight->take_confirmable(), w->producer->delivery_failed(),
                            w->inflight->unacknowledged_records() > 0, w->producer->brokers_unavailable(),
                            w->producer->last_delivery_ms()};
    });
    if (v.confirmable > w->confirmable)
        w->confirmable = v.confirmable;
    log_librdkafka_lines(w);
    if (v.delivery_failed)
        ereport(ERROR, (errcode(ERRCODE_CONNECTION_FAILURE), errmsg("kafka_sync node %s: %s", w->cfg.node_name, producer_error(w)),
                        errdetail("The slot was not confirmed past this record."),
                        errhint("The worker restarts and sends again from the last confirmed position.")));
    confirm(w, false);

    NodeWorkerState state = w->slot->state;
    if (v.waiting && (v.brokers_down || unix_ms_now() - v.last_ack_ms > kUnavailableAfterMs))
        set_state(w, NODE_STATE_KAFKA_UNAVAILABLE, producer_error(w));
    else if (state == NODE_STATE_KAFKA_UNAVAILABLE || state == NODE_STATE_STARTING || state == NODE_STATE_ERROR)
        set_state(w, w->streaming && !w->snapshot_running ? NODE_STATE_STREAMING : NODE_STATE_SNAPSHOT, nullptr);
    else
        set_state(w, state, nullptr);
}

void produce_record(NodeWorker *w, const char *key, size_t key_len, bool has_key, const char *value, size_t value_len,
                    bool has_value, int64 txn_end) {
    w->headers.txn_end_count = txn_end;
    w->headers.seq = ++w->txn_seq;
    for (;;) {
        auto status = kafka_sync::ks_guard([&]() {
            return w->producer->produce(w->seq, has_key ? key : nullptr, key_len, has_value ? value : nullptr,
                                        value_len, w->headers);
        });
        if (status == kafka_sync::ProduceStatus::Ok) {
            w->produced++;
            return;
        }
        if (status == kafka_sync::ProduceStatus::Failed)
            ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
                            errmsg("kafka_sync node %s could not produce a record: %s", w->cfg.node_name, producer_error(w)),
                            errhint("For large rows raise message.max.bytes in the node's kafka_config and the topic's "
                                    "max.message.bytes. WAL is retained until the record is sent.")));
        /* QueueFull: librdkafka holds as much as we allow; let it drain. */
        service_producer(w, 100);
        CHECK_FOR_INTERRUPTS();
        if (!PostmasterIsAlive())
            proc_exit(1);
    }
}

void flush_held(NodeWorker *w, int64 txn_end) {
    if (!w->held)
        return;
    produce_record(w, w->held_key->data(), w->held_key->size(), w->held_has_key, w->held_value->data(),
                   w->held_value->size(), w->held_has_value, txn_end);
    w->held = false;
}

} // namespace

namespace {

void begin_txn(NodeWorker *w, uint64 header_lsn, uint64 ring_lsn, uint32 xid, int64 commit_ts_ms, bool snapshot) {
    w->seq = kafka_sync::ks_guard([&]() { return w->inflight->begin(ring_lsn); });
    w->last_ring_lsn = ring_lsn;
    w->headers.commit_lsn = header_lsn;
    w->headers.xid = xid;
    w->headers.commit_ts_ms = commit_ts_ms;
    w->headers.snapshot = snapshot;
    w->in_txn = true;
    w->held = false;
    w->txn_seq = 0;
}

} // namespace

void node_worker_begin_txn(NodeWorker *w, uint64 commit_lsn, uint32 xid, int64 commit_ts_ms) {
    begin_txn(w, commit_lsn, commit_lsn, xid, commit_ts_ms, false);
    if (TransactionIdIsNormal(xid)) {
        w->recent_xids[w->recent_xids_next % kRecentXids] = xid;
        w->recent_xids_next++;
    }
}

void node_worker_begin_snapshot_txn(NodeWorker *w, uint64 header_lsn, uint64 confirm_lsn, int64 snapshot_ts_ms) {
    begin_txn(w, header_lsn, confirm_lsn, 0, snapshot_ts_ms, true);
}

void node_worker_add_record(NodeWorker *w, const char *key, size_t key_len, bool has_key, const char *value,
                            size_t value_len, bool has_value) {
    flush_held(w, -1);
    kafka_sync::ks_guard([&]() {
        w->held_key->assign(key ? key : "", has_key ? key_len : 0);
        w->held_value->assign(value ? value : "", has_value ? value_len : 0);
    });
    w->held_has_key = has_key;
    w->held_has_value = has_value;
    w->held = true;
}

void node_worker_end_txn(NodeWorker *w, uint64 nrecords) {
    flush_held(w, (int64)nrecords);
    kafka_sync::ks_guard([&]() { w->inflight->end(w->seq); });
    if (nrecords > 0) /* consumers see only transactions with records */
        w->last_header_lsn = w->headers.commit_lsn;
    w->in_txn = false;
}

void node_worker_wait_for_acks(NodeWorker *w) {
    for (;;) {
        bool empty = kafka_sync::ks_guard([&]() { return w->inflight->unacknowledged_records() == 0; });
        if (empty)
            break;
        service_producer(w, 100);
        CHECK_FOR_INTERRUPTS();
        if (!PostmasterIsAlive())
            proc_exit(1);
    }
    service_producer(w, 0);
}

void node_worker_set_state(NodeWorker *w, NodeWorkerState state, const char *error) { set_state(w, state, error); }
const char *node_worker_node_name(NodeWorker *w) { return w->cfg.node_name; }
const char *node_worker_publication(NodeWorker *w) { return w->cfg.publication; }
bool node_worker_schemas(NodeWorker *w) { return w->schemas; }

namespace {

/* ---- decoding: the output plugin writes frames, we produce them ---- */

void frames_prepare_write(LogicalDecodingContext *ctx, XLogRecPtr, TransactionId, bool) { resetStringInfo(ctx->out); }

void frames_write(LogicalDecodingContext *ctx, XLogRecPtr, TransactionId, bool) {
    auto *w = static_cast<NodeWorker *>(ctx->output_writer_private);
    const char *data = ctx->out->data;
    const size_t len = static_cast<size_t>(ctx->out->len);
    if (len < 1)
        elog(ERROR, "kafka_sync: empty frame from the output plugin");
    switch (data[0]) {
    case kafka_sync::kFrameBegin: {
        kafka_sync::BeginFrame f;
        if (len != 1 + sizeof(f))
            elog(ERROR, "kafka_sync: malformed begin frame");
        memcpy(&f, data + 1, sizeof(f));
        node_worker_begin_txn(w, f.commit_lsn, f.xid, f.commit_ts_ms);
        break;
    }
    case kafka_sync::kFrameRecord: {
        kafka_sync::RecordFrame f;
        if (len < 1 + sizeof(f))
            elog(ERROR, "kafka_sync: malformed record frame");
        memcpy(&f, data + 1, sizeof(f));
        const bool has_key = f.key_len != kafka_sync::kFrameNull;
        const bool has_value = f.value_len != kafka_sync::kFrameNull;
        const size_t key_len = has_key ? f.key_len : 0;
        const size_t value_len = has_value ? f.value_len : 0;
        if (len != 1 + sizeof(f) + key_len + value_len)
            elog(ERROR, "kafka_sync: malformed record frame");
        const char *key = data + 1 + sizeof(f);
        node_worker_add_record(w, key, key_len, has_key, key + key_len, value_len, has_value);
        break;
    }
    case kafka_sync::kFrameCommit: {
        kafka_sync::CommitFrame f;
        if (len != 1 + sizeof(f))
            elog(ERROR, "kafka_sync: malformed commit frame");
        memcpy(&f, data + 1, sizeof(f));
        node_worker_end_txn(w, f.nrecords);
        break;
    }
    default:
        elog(ERROR, "kafka_sync: unknown frame kind %d", data[0]);
    }
}

List *plugin_options(NodeWorker *w) {
    List *opts = NIL;
    opts = lappend(opts, makeDefElem(pstrdup("node_name"), (Node *)makeString(pstrdup(w->cfg.node_name)), -1));
    opts = lappend(opts, makeDefElem(pstrdup("publication"), (Node *)makeString(pstrdup(w->cfg.publication)), -1));
    opts = lappend(opts, makeDefElem(pstrdup("framing"), (Node *)makeString(pstrdup("kafka")), -1));
    opts = lappend(opts, makeDefElem(pstrdup("include_schema"),
                                     (Node *)makeString(pstrdup(w->schemas ? "true" : "false")), -1));
    opts = lappend(opts, makeDefElem(pstrdup("tombstones"),
                                     (Node *)makeString(pstrdup(w->tombstones ? "true" : "false")), -1));
    return opts;
}

/*
 * A configuration reload re-reads the node's secrets file: a changed one
 * takes a new producer, so the worker exits and the launcher starts it again
 * (what Kafka had not acknowledged is sent again; nothing is lost).
 */
void check_secrets_file(NodeWorker *w) {
    bool changed = kafka_sync::ks_guard([&]() {
        if (!w->secrets_file || w->secrets_file->empty())
            return false;
        std::string error;
        std::string now = kafka_sync::secrets_file_content(*w->secrets_file, error);
        return error.empty() && now != *w->secrets_content;
    });
    if (changed) {
        ereport(LOG, (errmsg("kafka_sync node %s: its secrets file changed: restarting the producer",
                             w->cfg.node_name)));
        proc_exit(1);
    }
}

/* SIGHUP: the server's settings, and the secrets file, read again. */
void handle_reload(NodeWorker *w) {
    if (!ConfigReloadPending)
        return;
    ConfigReloadPending = false;
    ProcessConfigFile(PGC_SIGHUP);
    check_secrets_file(w);
}

/* Read by librdkafka waits, on our own thread: only flags, no PostgreSQL calls. */
bool exit_requested() { return ProcDiePending || InterruptPending; }

void ensure_topic(NodeWorker *w) {
    for (;;) {
        /* short attempts, so node_status says kafka_unavailable within seconds */
        bool ok = kafka_sync::ks_guard([&]() { return w->producer->ensure_topic(3000, exit_requested); });
        CHECK_FOR_INTERRUPTS();
        if (ok)
            return;
        const char *err = producer_error(w);
        ereport(WARNING, (errmsg("kafka_sync node %s: %s", w->cfg.node_name, err),
                          errhint("Create the topic with one partition, or check the brokers and kafka_config; "
                                  "retrying in %d s.",
                                  kTopicRetryMs / 1000)));
        set_state(w, NODE_STATE_KAFKA_UNAVAILABLE, err);
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, kTopicRetryMs, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        CHECK_FOR_INTERRUPTS();
        handle_reload(w);
    }
}

void check_stop_requested(NodeWorker *w) {
    SpinLockAcquire(&w->slot->mutex);
    bool drop = w->slot->stop_requested;
    SpinLockRelease(&w->slot->mutex);
    if (drop) {
        ereport(LOG, (errmsg("kafka_sync producer of database %u: stopping for drop_node() or pause_node()", MyDatabaseId)));
        proc_exit(0);
    }
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
        bool acknowledged = kafka_sync::ks_guard([&]() { return w->inflight->completed(w->resnapshot_seq); });
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
    if (kafka_sync_retained_wal_warning_mb <= 0 || retained_mb < (uint64)kafka_sync_retained_wal_warning_mb) {
        w->wal_warned_at = 0;
        return;
    }
    if (w->wal_warned_at != 0 && !TimestampDifferenceExceeds(w->wal_warned_at, now, kRepeatMs))
        return;
    w->wal_warned_at = now;
    ereport(WARNING,
            (errmsg("kafka_sync node %s retains " UINT64_FORMAT " MB of WAL, more than kafka_sync.retained_wal_warning "
                    "(%d MB)",
                    w->cfg.node_name, retained_mb, kafka_sync_retained_wal_warning_mb),
             errdetail("Its replication slot keeps WAL until Kafka has acknowledged the records of every transaction; "
                       "nothing is dropped."),
             errhint("See kafka_sync.node_status: Kafka unreachable (last_error), or a long-running transaction on "
                     "this server, holds it back.")));
}

void stream(NodeWorker *w) {
    ReplicationSlotAcquire(w->cfg.slot_name, true);
    LogicalDecodingContext *ctx = CreateDecodingContext(InvalidXLogRecPtr, plugin_options(w), false,
                                                        node_local_wal_reader(),
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
        bool idle = kafka_sync::ks_guard([&]() { return w->inflight->empty(); });
        if (idle && ctx->reader->EndRecPtr > w->confirmable)
            w->confirmable = ctx->reader->EndRecPtr;
        bool caught_up = ctx->reader->EndRecPtr >= flush;
        if (!caught_up) {
            service_producer(w, 0);
            continue;
        }
        if (idle) {
            service_producer(w, 0);
            int rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, kafka_sync_poll_interval_ms,
                               PG_WAIT_EXTENSION);
            ResetLatch(MyLatch);
            if (rc & WL_LATCH_SET)
                w->resnapshot_wake = true; /* kafka_sync.resnapshot() sets it at commit */
        } else {
            /* waiting for acknowledgements: sleep inside librdkafka */
            service_producer(w, kafka_sync_poll_interval_ms);
            if (!PostmasterIsAlive())
                proc_exit(1);
        }
    }
}

void cleanup_worker(int, Datum) {
    NodeWorker *w = worker;
    if (!w)
        return;
    delete w->producer;
    w->producer = nullptr;
    if (w->slot) {
        SpinLockAcquire(&w->slot->mutex);
        /* drop_node() or pause_node() may have released the slot already */
        if (w->slot->in_use && w->slot->dboid == MyDatabaseId && w->slot->worker_pid == MyProcPid) {
            w->slot->worker_pid = 0;
            if (w->slot->state != NODE_STATE_ERROR)
                w->slot->state = NODE_STATE_STOPPED;
        }
        SpinLockRelease(&w->slot->mutex);
    }
    worker = nullptr;
}

void run_node_worker(Oid dboid) {
    BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
    /*
     * The database's own search_path (ALTER DATABASE ... SET) is its owner's
     * to choose: a function of theirs named like one this superuser process
     * calls must never run instead.
     */
    SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
    /* and the text form of values in the records is the one every node reads alike */
    SetConfigOption("DateStyle", "ISO", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("IntervalStyle", "postgres", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("extra_float_digits", "3", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("bytea_output", "hex", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
    pgstat_report_appname("kafka_sync producer");

    NodeConfig cfg;
    List *pairs = NIL;
    if (!load_node_config(&cfg, &pairs, true))
        proc_exit(0); /* not a node: no shared slot, so the launcher remembers */

    NodeSlot *slot = node_slot_for(MyDatabaseId, true);
    if (!slot)
        ereport(ERROR, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
                        errmsg("a kafka_sync node cannot start in database %u: every node slot is in use",
                               MyDatabaseId),
                        errhint("Raise kafka_sync.max_nodes (needs a server restart).")));
    auto *w = static_cast<NodeWorker *>(MemoryContextAllocZero(TopMemoryContext, sizeof(NodeWorker)));
    w->slot = slot;
    worker = w;
    before_shmem_exit(cleanup_worker, (Datum)0);
    SpinLockAcquire(&slot->mutex);
    pid_t other = slot->worker_pid;
    bool other_alive = other != 0 && other != MyProcPid && kill(other, 0) == 0;
    if (!other_alive)
        slot->worker_pid = MyProcPid;
    SpinLockRelease(&slot->mutex);
    if (other_alive) {
        /* started by a restarted launcher while the earlier worker still runs */
        worker = nullptr;
        proc_exit(0);
    }
    check_stop_requested(w);

    /*
     * Read the settings only now that pause_node()/drop_node() can see and
     * stop us: a change they commit from here on reaches this worker.
     */
    if (!load_node_config(&cfg, &pairs, false)) {
        worker = nullptr;
        node_slot_release(MyDatabaseId); /* paused or dropped meanwhile */
        proc_exit(0);
    }
    w->cfg = cfg;
    set_state(w, NODE_STATE_STARTING, nullptr);

    /* this node's incarnation: a restored copy runs on a new timeline, a re-created node has a new created_at */
    const uint64 sysid = GetSystemIdentifier();
    const TimeLineID tli = GetWALInsertionTimeLine();
    /* librdkafka objects; deleted by cleanup_worker at exit */
    kafka_sync::ks_guard([&]() {
        kafka_sync::ConfigPairs config;
        ListCell *lc;
        for (lc = list_head(pairs); lc != nullptr; lc = lnext(pairs, lnext(pairs, lc))) {
            const char *k = static_cast<const char *>(lfirst(lc));
            const char *v = static_cast<const char *>(lfirst(lnext(pairs, lc)));
            config.emplace_back(k, v);
        }
        kafka_sync::ProducerSettings ps;
        std::string error, hint;
        /*
         * The file as it is before the parse reads it: a change in between
         * costs one restart at the next reload, never a missed one.
         */
        std::string secrets_before;
        for (const auto &[k, v] : config)
            if (k == kafka_sync::kSecretsFileSetting)
                secrets_before = kafka_sync::secrets_file_content(v, error);
        error.clear();
        if (!kafka_sync::parse_node_kafka_config(config, ps.kafka, error, hint,
                                                 kafka_sync_allowed_kafka_properties ? kafka_sync_allowed_kafka_properties
                                                                                     : ""))
            throw std::runtime_error("invalid kafka_config: " + error);
        ps.brokers = w->cfg.brokers;
        ps.node_name = w->cfg.node_name;
        ps.incarnation = std::to_string(sysid) + "/" + std::to_string(tli) + "/" + w->cfg.created;
        ps.topic = std::string(w->cfg.topic_prefix) + "." + w->cfg.node_name;
        w->schemas = ps.kafka.schemas;
        w->tombstones = ps.kafka.tombstones;
        w->inflight = new kafka_sync::InflightTransactions();
        w->held_key = new std::string();
        w->held_value = new std::string();
        w->secrets_file = new std::string(ps.kafka.secrets_file);
        w->secrets_content = new std::string(secrets_before);
        w->producer = new kafka_sync::KafkaProducer(ps, *w->inflight);
    });

    ensure_topic(w);

    /*
     * create_node() made the slot; the initial snapshot is a resnapshot
     * request that the stream serves first. A slot that is gone cannot be
     * made again here: the changes since it went would be lost unseen.
     */
    if (!SearchNamedReplicationSlot(w->cfg.slot_name, true))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
                        errmsg("replication slot \"%s\" of kafka_sync node %s does not exist", w->cfg.slot_name,
                               w->cfg.node_name),
                        errdetail("Changes committed since it was dropped were not published and cannot be any more."),
                        errhint("Re-create the node: SELECT kafka_sync.drop_node(); then kafka_sync.create_node(...) "
                                "with snapshot => true, and resynchronise its subscribers from that snapshot.")));
    stream(w);
}

/*
 * Every record is a few small malloc()s of librdkafka's, freed when Kafka
 * acknowledges it, and the reorder buffer and librdkafka's batches allocate
 * and free large blocks all the time: with glibc's defaults the heap is
 * trimmed and large blocks are mmap()ed and unmapped again, and the pages
 * are faulted in anew each time (tens of thousands of page faults for a
 * 200,000-row transaction). This process keeps up to 64 MB of freed memory
 * instead; librdkafka's queue is bounded by the same amount.
 */
void keep_freed_memory() {
    mallopt(M_MMAP_THRESHOLD, 16 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
}

} // namespace

void kafka_sync_node_worker_main(Datum main_arg) {
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, die);
    BackgroundWorkerUnblockSignals();
    Oid dboid = DatumGetObjectId(main_arg);
    keep_freed_memory();

    /*
     * Any ERROR ends the worker (the launcher starts it again after a
     * pause); first it is recorded for kafka_sync.node_status.
     */
    kafka_sync::ks_guard([&]() {
        try {
            kafka_sync::pg_call([&]() { run_node_worker(dboid); });
        } catch (const kafka_sync::PgError &e) {
            if (worker && worker->slot)
                set_state(worker, NODE_STATE_ERROR, e.what());
            throw;
        }
    });
}

XLogReaderRoutine *node_local_wal_reader(void) {
    static XLogReaderRoutine routine;
    routine.page_read = read_local_xlog_page;
    routine.segment_open = wal_segment_open;
    routine.segment_close = wal_segment_close;
    return &routine;
}
