// Source transactions into Kafka, acknowledgements back to the slot.
//
// The stream and the snapshots hand over a transaction's records here; each
// goes to the KafkaProducer under the transaction's in-flight sequence, the
// last one with the kafka_sync.txn_end header. The slot confirms a commit
// LSN only once Kafka acknowledged every record of that transaction and of
// everything before it (InflightTransactions): a crash or restart at any
// point re-decodes from the last confirmed position, so records may be
// produced twice (same commit LSN, detectable), never lost.
#include "produce/worker_state.hpp"

#include "boundary/pg_boundary.hpp"
#include "common/unix_time.hpp"

extern "C" {
#include "access/transam.h"
#include "miscadmin.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "utils/timestamp.h"
}

namespace kafka_sync {

namespace {

/* No acknowledgement for this long while records wait: Kafka is unavailable. */
constexpr int kUnavailableAfterMs = 5000;
/* Confirming the slot costs a spinlock and, sometimes, a slot file write. */
constexpr int kConfirmIntervalMs = 100;

void log_librdkafka_lines(NodeWorker *w) {
    ks_guard([&]() {
        for (const auto &line : w->producer->take_log_lines())
            pg_call([&]() { ereport(LOG, (errmsg("kafka_sync node %s: %s", w->cfg.node_name, line.c_str()))); });
    });
}

void confirm(NodeWorker *w) {
    if (!w->streaming || w->confirmable <= w->confirmed)
        return;
    TimestampTz now = GetCurrentTimestamp();
    if (!TimestampDifferenceExceeds(w->last_confirm, now, kConfirmIntervalMs))
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

/* One record under w->headers, into w->seq; waits while librdkafka's queue is full. */
void produce_record_as_is(NodeWorker *w, const char *key, size_t key_len, bool has_key, const char *value,
                          size_t value_len, bool has_value) {
    for (;;) {
        auto status = ks_guard([&]() {
            return w->producer->produce(w->seq, has_key ? key : nullptr, key_len, has_value ? value : nullptr,
                                        value_len, w->headers);
        });
        if (status == ProduceStatus::Ok) {
            w->produced++;
            return;
        }
        if (status == ProduceStatus::Failed)
            ereport(ERROR,
                    (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
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

void produce_record(NodeWorker *w, const char *key, size_t key_len, bool has_key, const char *value, size_t value_len,
                    bool has_value, int64 txn_end) {
    w->headers.txn_end_count = txn_end;
    w->headers.seq = ++w->txn_seq;
    produce_record_as_is(w, key, key_len, has_key, value, value_len, has_value);
}

void flush_held(NodeWorker *w, int64 txn_end) {
    if (!w->held)
        return;
    produce_record(w, w->held_key->data(), w->held_key->size(), w->held_has_key, w->held_value->data(),
                   w->held_value->size(), w->held_has_value, txn_end);
    w->held = false;
}

void begin_txn(NodeWorker *w, uint64 header_lsn, uint64 ring_lsn, uint32 xid, int64 commit_ts_ms, bool snapshot) {
    w->seq = ks_guard([&]() { return w->inflight->begin(ring_lsn); });
    w->last_ring_lsn = ring_lsn;
    w->headers.commit_lsn = header_lsn;
    w->headers.xid = xid;
    w->headers.commit_ts_ms = commit_ts_ms;
    w->headers.snapshot = snapshot;
    w->headers.stream = wire::StreamEvent::None;
    w->headers.subxid = 0;
    w->held = false;
    w->txn_seq = 0;
}

/* The records streamed so far of in-progress transaction xid (created at 0). */
uint64 *streamed_records(NodeWorker *w, uint32 xid) {
    return ks_guard([&]() { return &(*w->streams)[xid]; });
}

/* Opens a stream record's in-flight entry: it confirms no position of its own. */
void begin_stream_entry(NodeWorker *w, uint32 xid, wire::StreamEvent event) {
    w->seq = ks_guard([&]() { return w->inflight->begin(w->inflight->last_lsn()); });
    w->headers.commit_lsn = 0;
    w->headers.xid = xid;
    w->headers.commit_ts_ms = 0;
    w->headers.snapshot = false;
    w->headers.stream = event;
    w->headers.subxid = xid;
    w->headers.txn_end_count = -1;
    w->headers.seq = 0;
}

} // namespace

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

/*
 * This runs in every loop iteration during an outage, so it must not
 * allocate.
 */
const char *producer_error(NodeWorker *w) {
    static char buffer[KS_ERROR_LEN];
    ks_guard([&]() { strlcpy(buffer, w->producer->error().c_str(), sizeof(buffer)); });
    return buffer;
}

void service_producer(NodeWorker *w, int timeout_ms) {
    ProducerView v = ks_guard([&]() {
        w->producer->poll(timeout_ms);
        return ProducerView{w->inflight->take_confirmable(), w->producer->delivery_failed(),
                            w->inflight->unacknowledged_records() > 0, w->producer->brokers_unavailable(),
                            w->producer->last_delivery_ms()};
    });
    if (v.confirmable > w->confirmable)
        w->confirmable = v.confirmable;
    log_librdkafka_lines(w);
    if (v.delivery_failed)
        ereport(ERROR, (errcode(ERRCODE_CONNECTION_FAILURE),
                        errmsg("kafka_sync node %s: %s", w->cfg.node_name, producer_error(w)),
                        errdetail("The slot was not confirmed past this record."),
                        errhint("The worker restarts and sends again from the last confirmed position.")));
    confirm(w);

    NodeWorkerState state = w->slot->state;
    if (v.waiting && (v.brokers_down || unix_ms_now() - v.last_ack_ms > kUnavailableAfterMs))
        set_state(w, NODE_STATE_KAFKA_UNAVAILABLE, producer_error(w));
    else if (state == NODE_STATE_KAFKA_UNAVAILABLE || state == NODE_STATE_STARTING || state == NODE_STATE_ERROR)
        set_state(w, w->streaming && !w->snapshot_running ? NODE_STATE_STREAMING : NODE_STATE_SNAPSHOT, nullptr);
    else
        set_state(w, state, nullptr);
}

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
    ks_guard([&]() {
        w->held_key->assign(key ? key : "", has_key ? key_len : 0);
        w->held_value->assign(value ? value : "", has_value ? value_len : 0);
    });
    w->held_has_key = has_key;
    w->held_has_value = has_value;
    w->held = true;
}

void node_worker_end_txn(NodeWorker *w, uint64 nrecords) {
    flush_held(w, (int64)nrecords);
    ks_guard([&]() { w->inflight->end(w->seq); });
    if (nrecords > 0) /* consumers see only transactions with records */
        w->last_header_lsn = w->headers.commit_lsn;
}

/*
 * kafka_sync.streaming. A block of an in-progress transaction's records is
 * one in-flight entry that confirms nothing (the slot keeps restart_lsn
 * before an open transaction anyway, and re-streams it whole after a
 * restart); the commit record is a transaction's entry at its commit LSN,
 * so the slot passes the commit only once Kafka has every block before it.
 */
void node_worker_stream_start(NodeWorker *w, uint32 xid) {
    begin_stream_entry(w, xid, wire::StreamEvent::Change);
}

void node_worker_add_stream_record(NodeWorker *w, uint32 subxid, const char *key, size_t key_len, bool has_key,
                                   const char *value, size_t value_len, bool has_value) {
    if (w->headers.stream != wire::StreamEvent::Change)
        elog(ERROR, "kafka_sync: a streamed record outside a stream block");
    w->headers.subxid = subxid;
    w->headers.seq = ++*streamed_records(w, w->headers.xid);
    produce_record_as_is(w, key, key_len, has_key, value, value_len, has_value);
}

void node_worker_stream_stop(NodeWorker *w) {
    ks_guard([&]() { w->inflight->end(w->seq); });
    w->headers.stream = wire::StreamEvent::None;
}

void node_worker_stream_abort(NodeWorker *w, uint32 xid, uint32 subxid) {
    const bool streamed = ks_guard([&]() { return w->streams->count(xid) > 0; });
    if (!streamed)
        return; /* no record of it is in Kafka */
    begin_stream_entry(w, xid, wire::StreamEvent::Abort);
    w->headers.subxid = subxid;
    produce_record_as_is(w, nullptr, 0, false, nullptr, 0, false);
    ks_guard([&]() {
        w->inflight->end(w->seq);
        if (subxid == xid)
            w->streams->erase(xid);
    });
    w->headers.stream = wire::StreamEvent::None;
}

void node_worker_stream_commit(NodeWorker *w, uint32 xid, uint64 commit_lsn, int64 commit_ts_ms) {
    const uint64 nrecords = ks_guard([&]() {
        auto it = w->streams->find(xid);
        return it == w->streams->end() ? uint64{0} : it->second;
    });
    node_worker_begin_txn(w, commit_lsn, xid, commit_ts_ms);
    if (nrecords == 0) { /* nothing of it was published: the slot may pass it */
        node_worker_end_txn(w, 0);
        return;
    }
    w->headers.stream = wire::StreamEvent::Commit;
    w->headers.txn_end_count = static_cast<int64>(nrecords);
    w->headers.seq = 0;
    produce_record_as_is(w, nullptr, 0, false, nullptr, 0, false);
    ks_guard([&]() {
        w->inflight->end(w->seq);
        w->streams->erase(xid);
    });
    w->headers.stream = wire::StreamEvent::None;
    w->last_header_lsn = commit_lsn;
}

/*
 * Decoding starts again (a new worker, or the server restarted): a
 * transaction streamed before and still open is streamed again from its
 * start, or committed whole, or was cut off by a crash without an abort
 * record. This record tells consumers to forget what is open.
 */
void node_worker_stream_reset(NodeWorker *w) {
    begin_stream_entry(w, 0, wire::StreamEvent::Reset);
    produce_record_as_is(w, nullptr, 0, false, nullptr, 0, false);
    ks_guard([&]() {
        w->inflight->end(w->seq);
        w->streams->clear();
    });
    w->headers.stream = wire::StreamEvent::None;
}

bool node_worker_streams_open(NodeWorker *w) {
    return w->streams && !w->streams->empty();
}

const char *node_worker_node_name(NodeWorker *w) {
    return w->cfg.node_name;
}
const char *node_worker_publication(NodeWorker *w) {
    return w->cfg.publication;
}
bool node_worker_schemas(NodeWorker *w) {
    return w->schemas;
}

} // namespace kafka_sync
