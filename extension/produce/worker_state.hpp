// The producer worker's own state, shared by the files that make up the
// worker (node_worker.cpp, txn_delivery.cpp, wal_stream.cpp) and by no one
// else: the rest of the extension sees node_worker.hpp.
#pragma once

#include "produce/node_config.hpp"
#include "produce/node_worker.hpp"

#include <string>
#include <unordered_map>

namespace kafka_sync {

/*
 * Handed-over transactions a resnapshot makes sure it sees: the committing
 * backend leaves the proc array only a moment after its commit record is
 * flushed (and decodable); see wait_until_visible in resnapshot.cpp.
 */
constexpr uint32 kRecentXids = 4096;

/* One per worker process, in TopMemoryContext; C++ members are new'd (cleanup_worker). */
struct NodeWorker {
    NodeSlot *slot;
    NodeConfig cfg;
    InflightTransactions *inflight;
    KafkaProducer *producer;
    bool schemas;
    bool tombstones;
    bool stream_in_progress; /* kafka_sync.streaming */
    int stream_work_mem_kb;  /* kafka_sync.streaming_work_mem: logical_decoding_work_mem of this worker */

    /* the open source transaction */
    InflightTransactions::Seq seq;
    RecordHeaders headers;
    uint64 txn_seq; /* records produced of the open transaction */
    /* kafka_sync.streaming: records streamed so far of each open in-progress transaction */
    std::unordered_map<uint32, uint64> *streams;

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
    TimestampTz wal_checked;   /* see check_retained_wal */
    TimestampTz wal_warned_at; /* 0: not above kafka_sync.retained_wal_warning */
    bool streaming;            /* a decoding slot is acquired and may be confirmed */

    /* kafka_sync.resnapshot(), see serve_resnapshot */
    uint64 last_header_lsn;   /* lsn header of the last transaction with records; 0: none yet */
    uint64 last_ring_lsn;     /* in-flight ring position of the last transaction, empty or not */
    XLogRecPtr startup_flush; /* WAL flushed when this run began streaming */
    bool snapshot_running;    /* a resnapshot is out and not all acknowledged: state 'snapshot' */
    bool resnapshot_wake;     /* latch set: look for a request now */
    TimestampTz resnapshot_checked;
    TimestampTz resnapshot_request;           /* being published; 0: none */
    InflightTransactions::Seq resnapshot_seq; /* its pseudo-transaction */
    uint64 resnapshot_lsn;
    uint64 resnapshot_records;
    /* xids of the last transactions handed to the producer (a ring) */
    TransactionId recent_xids[kRecentXids];
    uint32 recent_xids_next;
};

/* ---- txn_delivery.cpp ---- */

/* Publishes state (and optionally an error) to kafka_sync.node_status. */
void set_state(NodeWorker *w, NodeWorkerState state, const char *error);

/*
 * Serves librdkafka for up to timeout_ms, takes what Kafka acknowledged
 * (confirming the slot up to there), publishes status. A record that failed
 * for good is an ERROR.
 */
void service_producer(NodeWorker *w, int timeout_ms);

/* The producer's last error, in a static buffer (no allocation). */
const char *producer_error(NodeWorker *w);

/* kafka_sync.streaming (see txn_delivery.cpp) */
void node_worker_stream_start(NodeWorker *w, uint32 xid);
void node_worker_add_stream_record(NodeWorker *w, uint32 subxid, const char *key, size_t key_len, bool has_key,
                                   const char *value, size_t value_len, bool has_value);
void node_worker_stream_stop(NodeWorker *w);
void node_worker_stream_abort(NodeWorker *w, uint32 xid, uint32 subxid);
void node_worker_stream_commit(NodeWorker *w, uint32 xid, uint64 commit_lsn, int64 commit_ts_ms);
void node_worker_stream_reset(NodeWorker *w);
/* Some streamed transaction has neither committed nor aborted yet. */
bool node_worker_streams_open(NodeWorker *w);

/* ---- node_worker.cpp ---- */

/* SIGHUP: the server's settings, and the secrets file, read again. */
void handle_reload(NodeWorker *w);

/* Exits when drop_node() or pause_node() asked this worker to stop. */
void check_stop_requested(NodeWorker *w);

/* ---- wal_stream.cpp ---- */

/* Decodes the node's slot and produces what it publishes; returns only by ERROR or exit. */
[[noreturn]] void stream_wal(NodeWorker *w);

} // namespace kafka_sync
