// What the sidecar needs from librdkafka's statistics JSON (emitted every
// statistics.interval.ms): is the leader of partition 0 connected, and the
// partition's high watermark. Reading them from the statistics never blocks,
// unlike rd_kafka_query_watermark_offsets, which can wait for a whole socket
// timeout while the brokers are down. Pure C++ plus jansson.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kafka_sync_sidecar {

struct PartitionStats {
    int32_t leader = -1;     // broker id, -1 when unknown (no metadata, no topic)
    bool leader_up = false;  // our connection to that broker is up
    int64_t high_water = -1; // -1 when unknown
    bool fetching = false;   // fetch_state "active": fetching normally
};

// Partition 0 of topic; false when the JSON cannot be read.
bool parse_partition_stats(const char *json, size_t len, const std::string &topic, PartitionStats &out);

} // namespace kafka_sync_sidecar
