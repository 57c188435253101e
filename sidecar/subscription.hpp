// One subscription as kafka_sync.sidecar_subscriptions() describes it, where
// its consumer starts, and the librdkafka properties of its consumer. Pure
// C++ plus jansson (kafka_config is JSON); no libpq, no librdkafka.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kafka_sync_sidecar {

// librdkafka's logical offsets (RD_KAFKA_OFFSET_BEGINNING / _END).
constexpr int64_t kOffsetBeginning = -2;
constexpr int64_t kOffsetEnd = -1;

struct SubscriptionConfig {
    std::string name;
    std::string peer;
    std::string brokers;
    std::string topic;
    std::string start;        // 'earliest', 'latest' or a decimal offset
    std::string on_error;     // 'pause' or 'skip'
    std::string kafka_config; // JSON object; may hold secrets: never log it
    std::optional<int64_t> next_offset;
    // The commit LSN of the last source transaction applied (0: none): a
    // streamed transaction whose commit is read again after a restart, and
    // whose start lies before the restart point, was applied if at or below.
    uint64_t last_applied_lsn = 0;
    // The server's kafka_sync.allowed_kafka_properties (extension/common/kafka_properties.hpp).
    std::string allowed_kafka_properties;
    // A hash of its secrets file's content as last read (note_secrets_file).
    size_t secrets_file_hash = 0;
    // The server's kafka_sync.partial_transaction_wait and _hold: how long a
    // source transaction applied in part may keep its local transaction open
    // waiting for its next record, and at all before its end is in Kafka.
    int64_t partial_wait_ms = 30 * 1000;
    int64_t partial_hold_ms = 5 * 60 * 1000;
    // The server's kafka_sync.streamed_transaction_memory: records of the
    // peer's open streamed transactions kept in memory (stream_tracker.hpp).
    size_t stream_keep_bytes = 64u << 20;

    // Everything that needs a new consumer when it changes (not next_offset,
    // which moves with every commit).
    bool same_settings(const SubscriptionConfig &other) const {
        return name == other.name && peer == other.peer && brokers == other.brokers && topic == other.topic &&
               start == other.start && on_error == other.on_error && kafka_config == other.kafka_config &&
               secrets_file_hash == other.secrets_file_hash &&
               allowed_kafka_properties == other.allowed_kafka_properties && partial_wait_ms == other.partial_wait_ms &&
               partial_hold_ms == other.partial_hold_ms && stream_keep_bytes == other.stream_keep_bytes;
    }
};

// Reads the secrets file that kafka_config names (if any) into
// sub.secrets_file_hash, so that a changed file restarts the consumer.
void note_secrets_file(SubscriptionConfig &sub);

// Where to consume from: next_offset when something was applied, else start.
// False (with a message) when start is none of the three forms.
bool resolve_start_offset(const SubscriptionConfig &sub, int64_t &offset, std::string &error);
std::string describe_offset(int64_t offset);

struct ConsumerProperty {
    std::string name;
    std::string value;
    bool from_kafka_config = false; // the user's: may be a secret
    bool secret = false;            // from the secrets file: always masked
};

// The consumer's librdkafka properties, in the order to set them: our
// defaults, then kafka_config (keys starting with "kafka_sync." skipped),
// then what the sidecar's guarantees depend on (manual offsets only, no
// silent offset reset). Error messages name a property, never its value.
bool consumer_properties(const SubscriptionConfig &sub, std::vector<ConsumerProperty> &out, std::string &error);

} // namespace kafka_sync_sidecar
