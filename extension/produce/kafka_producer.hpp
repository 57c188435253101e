// KafkaProducer: the librdkafka side of the producer worker.
//
// Pure C++ (no PostgreSQL headers): librdkafka's threads never come near the
// backend. Delivery reports, errors and log lines are only *recorded* by the
// callbacks, which librdkafka runs inside poll() on the worker's own thread;
// the worker reads them afterwards. Every call is bounded in time.
#pragma once

#include "wire/wire.hpp"

#include "produce/inflight.hpp"
#include "produce/kafka_config.hpp"

#include <librdkafka/rdkafka.h>

#include <cstdint>
#include <string>
#include <vector>

namespace kafka_sync {

struct ProducerSettings {
    std::string brokers;
    std::string topic;
    std::string node_name;
    // kafka_sync.incarnation of every record: "<system identifier>/<timeline>/<node created>"; a
    // subscriber compares LSNs only within one (a restored or re-created node starts lower)
    std::string incarnation;
    NodeKafkaSettings kafka;
};

struct RecordHeaders {
    uint64_t commit_lsn;
    uint32_t xid;
    int64_t commit_ts_ms;
    uint64_t seq;          // 1-based position of the record in its transaction
    int64_t txn_end_count; // < 0: not the last record of its transaction
    bool snapshot;         // a snapshot row (op "r"): header kafka_sync.snapshot
    // kafka_sync.streaming: None for a committed transaction's record. Change:
    // no lsn or commit_ts header (not known yet), subxid. Commit: lsn,
    // commit_ts and txn_end (the transaction's records). Abort: subxid.
    wire::StreamEvent stream;
    uint32_t subxid;
};

enum class ProduceStatus {
    Ok,
    QueueFull, // back-pressure: poll and retry
    Failed,    // permanent: see error()
};

class KafkaProducer {
  public:
    // Throws std::runtime_error with a message safe to show.
    KafkaProducer(const ProducerSettings &settings, InflightTransactions &inflight);
    ~KafkaProducer();
    KafkaProducer(const KafkaProducer &) = delete;
    KafkaProducer &operator=(const KafkaProducer &) = delete;

    // Makes sure the topic exists (creating it when missing). Returns false
    // and sets error() when it neither exists nor could be created. Waits in
    // short slices and gives up early when should_stop() says so, so that a
    // worker asked to exit never hangs in a Kafka call.
    bool ensure_topic(int timeout_ms, bool (*should_stop)());

    // Produces one record of transaction seq to partition 0 (a node's stream
    // must stay totally ordered). key/value may be null (tombstone).
    ProduceStatus produce(InflightTransactions::Seq seq, const char *key, size_t key_len, const char *value,
                          size_t value_len, const RecordHeaders &headers);

    // Serves delivery reports and logs for up to timeout_ms.
    void poll(int timeout_ms);

    // A record failed permanently: the in-flight ring can never complete.
    bool delivery_failed() const { return delivery_failed_; }
    const std::string &error() const { return error_; }

    // Broker-level trouble seen since the last successful delivery.
    bool brokers_unavailable() const { return brokers_down_; }
    int64_t last_delivery_ms() const { return last_delivery_ms_; }
    uint64_t acknowledged() const { return acknowledged_; }

    // Log lines collected from librdkafka since the last call.
    std::vector<std::string> take_log_lines();

  private:
    static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque) noexcept;
    static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) noexcept;
    static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) noexcept;

    ProducerSettings settings_;
    InflightTransactions &inflight_;
    rd_kafka_t *rk_ = nullptr;
    rd_kafka_topic_t *rkt_ = nullptr;
    bool delivery_failed_ = false;
    bool brokers_down_ = false;
    std::string error_;
    // librdkafka's last word on a broker (error callback, or a log line of
    // warning level or worse: it names the broker and says what failed, e.g.
    // an SSL handshake or SASL authentication); cleared by a delivery.
    std::string broker_problem_;
    int64_t last_delivery_ms_ = 0;
    uint64_t acknowledged_ = 0;
    std::vector<std::string> log_lines_;
};

// "16/B374D848" as PostgreSQL prints an LSN (wire.hpp).
using wire::format_lsn;

} // namespace kafka_sync
