// The producer worker's shared pieces, used by the WAL stream (node_worker.cpp)
// and the initial snapshot (initial_snapshot.cpp) alike.
#pragma once

#include "common/shared_state.hpp"

extern "C" {
#include "access/xlogdefs.h"
}

struct NodeWorker;

/* Opens a source transaction (commit order) whose records follow. */
void node_worker_begin_txn(NodeWorker *w, uint64 commit_lsn, uint32 xid, int64 commit_ts_ms);

/*
 * Adds one record of the open transaction. The record is held back until the
 * next one (or the end) arrives, so the last record of a transaction can carry
 * the kafka_sync.txn_end header.
 */
void node_worker_add_record(NodeWorker *w, const char *key, size_t key_len, bool has_key, const char *value,
                            size_t value_len, bool has_value);

/* Closes the open transaction; nrecords is how many records it has. */
void node_worker_end_txn(NodeWorker *w, uint64 nrecords);

/* Waits (interruptibly) until Kafka acknowledged everything produced. */
void node_worker_wait_for_acks(NodeWorker *w);

/* Publishes state (and optionally an error) to kafka_sync.node_status. */
void node_worker_set_state(NodeWorker *w, NodeWorkerState state, const char *error);

/* Everything the snapshot reader needs to know about the node. */
const char *node_worker_node_name(NodeWorker *w);
const char *node_worker_publication(NodeWorker *w);
bool node_worker_schemas(NodeWorker *w);

/* initial_snapshot.cpp: publish every published row as op "r" records. */
void publish_initial_snapshot(NodeWorker *w, XLogRecPtr consistent_lsn);
