// The librdkafka consumer of one subscription: partition 0 of the peer's
// topic, manually assigned at the offset stored in the database, never
// committing offsets. Used by the subscription's thread only.
#pragma once

#include "record.hpp"
#include "subscription.hpp"

#include <librdkafka/rdkafka.h>

#include <chrono>
#include <climits>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kafka_sync_sidecar {

class KafkaConsumer {
  public:
    KafkaConsumer() = default;
    ~KafkaConsumer() { close(); }
    KafkaConsumer(const KafkaConsumer &) = delete;
    KafkaConsumer &operator=(const KafkaConsumer &) = delete;

    // Creates the client. The error names a property, never a value.
    bool open(const SubscriptionConfig &sub, std::string &error);
    void close();
    bool is_open() const { return rk_ != nullptr; }

    // Consumes from offset (or kOffsetBeginning / kOffsetEnd) on; records
    // fetched for the previous position are dropped.
    bool assign(int64_t offset, std::string &error);

    // The next record, if one arrives within timeout_ms.
    bool poll(int timeout_ms, Record &out);

    // The partition's high watermark as last seen (never blocks).
    std::optional<int64_t> high_water() const;
    // Asks the leader for the partition's first and next offsets (a round trip).
    bool query_watermarks(int64_t &low, int64_t &high, std::string &error, int timeout_ms = 5000);
    // The offset the partition was last assigned at (-1: none yet, or a logical one).
    int64_t assigned_offset() const { return assigned_offset_; }

    // What is wrong on the Kafka side now ("" when fine): brokers unreachable,
    // topic missing, stored offset out of range ...
    std::string problem() const;
    // The stored offset was out of range: fetching stopped until the next assign().
    bool offset_out_of_range() const { return !offset_problem_.empty(); }

  private:
    using Clock = std::chrono::steady_clock;

    void nudge_fetcher_if_stopped();

    static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque);
    static void on_log(const rd_kafka_t *rk, int level, const char *facility, const char *message);
    static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque);

    rd_kafka_t *rk_ = nullptr;
    std::string sub_name_;
    std::string topic_;
    std::vector<HeaderView> header_views_; // poll()'s, kept for its capacity
    kafka_sync::ConnectSchemas schemas_;   // the peer's tables' Connect schemas that passed (record.hpp)
    std::vector<std::string> secrets_;     // kafka_config values, masked in every message
    int64_t min_offset_ = 0;               // records below it belong to a previous position
    int64_t assigned_offset_ = -1;
    int64_t next_offset_ = -1; // after the last record poll() returned
    // nudge_fetcher_if_stopped(): what was read since the queue was last dry, and librdkafka's limits
    int64_t burst_bytes_ = 0, burst_records_ = 0;
    int64_t queue_max_bytes_ = 64 << 20, queue_max_records_ = 100000;
    // Connection state, from the statistics: a problem is reported once the
    // partition leader has been unreachable for a little while (a dropped idle
    // connection that comes straight back is none).
    bool leader_up_ = true;
    Clock::time_point leader_down_since_{};
    int64_t stats_high_water_ = -1;
    std::string broker_error_;           // librdkafka's last error, to say why
    std::string fetch_problem_;          // topic missing, not authorized ... (cleared by a record or active fetching)
    std::string offset_problem_;         // cleared by a record or an assignment elsewhere
    int64_t problem_offset_ = INT64_MIN; // the assigned offset offset_problem_ is about
};

} // namespace kafka_sync_sidecar
