// librdkafka statistics -> partition 0's leader state and high watermark
// (see kafka_stats.hpp).
#include "kafka_stats.hpp"

#include <jansson.h>

#include <cstring>

namespace kafka_sync_sidecar {

bool parse_partition_stats(const char *json, size_t len, const std::string &topic, PartitionStats &out) {
    out = PartitionStats();
    json_error_t error;
    json_t *root = json_loadb(json, len, 0, &error);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return false;
    }
    json_t *part = json_object_get(
        json_object_get(json_object_get(json_object_get(root, "topics"), topic.c_str()), "partitions"), "0");
    if (json_is_object(part)) {
        json_t *leader = json_object_get(part, "leader");
        json_t *hi = json_object_get(part, "hi_offset");
        if (json_is_integer(leader))
            out.leader = static_cast<int32_t>(json_integer_value(leader));
        if (json_is_integer(hi) && json_integer_value(hi) >= 0)
            out.high_water = json_integer_value(hi);
        const char *fetch_state = json_string_value(json_object_get(part, "fetch_state"));
        out.fetching = fetch_state && strcmp(fetch_state, "active") == 0;
    }
    // Logical brokers (the group coordinator, ...) share the real broker's id
    // but are separate connections: look at the real ones only.
    const char *name;
    json_t *broker;
    json_object_foreach(json_object_get(root, "brokers"), name, broker) {
        const char *source = json_string_value(json_object_get(broker, "source"));
        const char *state = json_string_value(json_object_get(broker, "state"));
        json_t *id = json_object_get(broker, "nodeid");
        if (!source || !state || !json_is_integer(id) || out.leader < 0)
            continue;
        if ((strcmp(source, "configured") == 0 || strcmp(source, "learned") == 0) &&
            json_integer_value(id) == out.leader && strcmp(state, "UP") == 0)
            out.leader_up = true;
    }
    json_decref(root);
    return true;
}

} // namespace kafka_sync_sidecar
