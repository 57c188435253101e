// The producer worker's configuration: its database's row of kafka_sync.node,
// and the KafkaProducer settings made of it.
#pragma once

#include "produce/kafka_producer.hpp"

extern "C" {
#include "postgres.h"

#include "access/xlogdefs.h"
#include "nodes/pg_list.h"
}

#include <string>

namespace kafka_sync {

/* A node row, in TopMemoryContext: read once per worker run. */
struct NodeConfig {
    char *node_name;
    char *brokers;
    char *publication;
    char *topic_prefix;
    char *slot_name;
    char *created;      /* the node's created_at, in microseconds since 1970: one per create_node */
    List *kafka_config; /* its kafka_config as text: key, value, key, value... */
};

/* Whether this database is a node (the extension and a node row, paused or not). */
bool node_exists();

/* Reads the node row; false when there is none or the node is paused. */
bool read_node_config(NodeConfig *cfg);

/* What the worker's KafkaProducer is made with. */
struct ProducerSetup {
    ProducerSettings settings;
    /* the node's secrets file and its content when the settings were read */
    std::string secrets_file;
    std::string secrets_content;
};

/*
 * Parses the node's kafka_config (and the properties of its secrets file).
 * Throws std::runtime_error for an invalid one: call it inside ks_guard.
 * sysid and timeline make the node's incarnation, with cfg.created.
 */
ProducerSetup producer_setup(const NodeConfig &cfg, uint64 sysid, TimeLineID timeline);

} // namespace kafka_sync
