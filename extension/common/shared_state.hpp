// Shared memory of kafka_sync: one slot per database that is (or may be) a
// node, holding the producer worker's status for kafka_sync.node_status and
// the flags the launcher, the worker and the SQL API coordinate through.
#pragma once

extern "C" {
#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/spin.h"
}

enum NodeWorkerState {
    NODE_STATE_STOPPED = 0,
    NODE_STATE_STARTING,
    NODE_STATE_SNAPSHOT,
    NODE_STATE_STREAMING,
    NODE_STATE_KAFKA_UNAVAILABLE,
    NODE_STATE_ERROR,
};

#define KS_ERROR_LEN 512

struct NodeSlot {
    slock_t mutex; /* protects everything below except dboid/in_use */
    Oid dboid;
    bool in_use;

    /* coordination */
    pid_t worker_pid;
    Latch *worker_latch;  /* the worker's: set at every commit in its database (produce/commit_wake.cpp) */
    bool resnapshot_wake; /* kafka_sync.resnapshot() committed: look for its request now */
    bool stop_requested;  /* drop_node() or pause_node() in progress: do not (re)start */
    bool no_node;         /* worker found no node here at generation ... */
    uint64 no_node_generation;

    /* status, written by the worker */
    NodeWorkerState state;
    char last_error[KS_ERROR_LEN];
    TimestampTz last_error_time;
    uint64 records_produced;
    uint64 records_acknowledged;
    TimestampTz last_ack_time;
    XLogRecPtr confirmed_lsn;
    uint64 inflight_transactions;
};

struct KafkaSyncShared {
    slock_t mutex;     /* protects generation and launcher_latch */
    uint64 generation; /* bumped whenever a node is created */
    Latch *launcher_latch;
    int nslots;
    NodeSlot slots[FLEXIBLE_ARRAY_MEMBER];
};

extern KafkaSyncShared *kafka_sync_shared;

void shared_state_request(void);
void shared_state_startup(void);

/* Slot of a database, created if create is set; NULL when full/absent. */
NodeSlot *node_slot_for(Oid dboid, bool create);

/* Forget a database's slot (its node was dropped). */
void node_slot_release(Oid dboid);

/* Wake the launcher so it (re)starts workers now rather than on its timer. */
void wake_launcher(bool new_node);

const char *node_state_name(NodeWorkerState state);
