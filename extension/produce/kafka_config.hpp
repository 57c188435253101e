// The kafka_config of a node: librdkafka properties plus kafka_sync's own
// "kafka_sync.*" settings, validated up front so that create_node() rejects a
// typo instead of the worker failing later. Messages never contain the value
// of a property that may be a secret.
#pragma once

#include <librdkafka/rdkafka.h>

#include <string>
#include <utility>
#include <vector>

namespace kafka_sync {

using ConfigPairs = std::vector<std::pair<std::string, std::string>>;

struct NodeKafkaSettings {
    ConfigPairs rdkafka;                    // passed to librdkafka as is
    bool schemas = true;                    // Kafka Connect schema in every record
    bool tombstones = false;                // a null-value record after each delete
    bool streaming = false;                 // in-progress transactions too, marked (kafka_sync.stream)
    int streaming_work_mem_kb = 4096;       // decoded changes held before the largest transaction is streamed
    int topic_partitions = 1;               // when kafka_sync creates the topic
    int topic_replication_factor = -1;      // -1: the broker's default
    std::string secrets_file;               // kafka_sync.secrets_file; its properties are in rdkafka
    std::vector<std::string> secret_values; // to mask in librdkafka's messages: the file's and secret keys' values
};

// True for properties whose values must never be shown (passwords, keys...).
bool is_secret_config_key(const std::string &key);

// Sets one librdkafka property. On failure returns false with error set to
// librdkafka's message, or, for a secret property, one that omits the value
// (librdkafka echoes it).
bool set_kafka_property(rd_kafka_conf_t *conf, const std::string &key, const std::string &value, std::string &error);

// Validates and splits a node's kafka_config, with the properties of its
// secrets file (common/secrets_file.hpp) read now and appended. On failure
// returns false and sets error (safe to show) and hint. allowed: the risky
// properties the server allows (common/kafka_properties.hpp).
bool parse_node_kafka_config(const ConfigPairs &in, NodeKafkaSettings &out, std::string &error, std::string &hint,
                             const std::string &allowed = std::string());

} // namespace kafka_sync
