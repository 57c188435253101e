// Shared memory of kafka_sync (see shared_state.hpp).
#include "common/settings.hpp"
#include "common/shared_state.hpp"

extern "C" {
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
}

KafkaSyncShared *kafka_sync_shared = nullptr;
int kafka_sync_max_nodes = 8;

namespace {

Size shared_size() {
    return add_size(offsetof(KafkaSyncShared, slots), mul_size(sizeof(NodeSlot), kafka_sync_max_nodes));
}

} // namespace

void shared_state_request(void) {
    RequestAddinShmemSpace(shared_size());
    RequestNamedLWLockTranche("kafka_sync", 1);
}

void shared_state_startup(void) {
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bool found;
    kafka_sync_shared = static_cast<KafkaSyncShared *>(ShmemInitStruct("kafka_sync", shared_size(), &found));
    if (!found) {
        memset(kafka_sync_shared, 0, shared_size());
        SpinLockInit(&kafka_sync_shared->mutex);
        kafka_sync_shared->nslots = kafka_sync_max_nodes;
        for (int i = 0; i < kafka_sync_max_nodes; i++)
            SpinLockInit(&kafka_sync_shared->slots[i].mutex);
    }
    LWLockRelease(AddinShmemInitLock);
}

NodeSlot *node_slot_for(Oid dboid, bool create) {
    if (!kafka_sync_shared)
        return nullptr;
    LWLock *lock = &GetNamedLWLockTranche("kafka_sync")->lock;
    LWLockAcquire(lock, create ? LW_EXCLUSIVE : LW_SHARED);
    NodeSlot *result = nullptr;
    NodeSlot *free_slot = nullptr;
    for (int i = 0; i < kafka_sync_shared->nslots; i++) {
        NodeSlot *slot = &kafka_sync_shared->slots[i];
        if (slot->in_use && slot->dboid == dboid) {
            result = slot;
            break;
        }
        if (!slot->in_use && !free_slot)
            free_slot = slot;
    }
    if (!result && create && free_slot) {
        SpinLockAcquire(&free_slot->mutex);
        free_slot->dboid = dboid;
        free_slot->in_use = true;
        free_slot->worker_pid = 0;
        free_slot->worker_latch = nullptr;
        free_slot->resnapshot_wake = false;
        free_slot->stop_requested = false;
        free_slot->no_node = false;
        free_slot->state = NODE_STATE_STOPPED;
        free_slot->last_error[0] = '\0';
        free_slot->records_produced = 0;
        free_slot->records_acknowledged = 0;
        free_slot->last_ack_time = 0;
        free_slot->confirmed_lsn = InvalidXLogRecPtr;
        free_slot->inflight_transactions = 0;
        SpinLockRelease(&free_slot->mutex);
        result = free_slot;
    }
    LWLockRelease(lock);
    return result;
}

void node_slot_release(Oid dboid) {
    if (!kafka_sync_shared)
        return;
    LWLock *lock = &GetNamedLWLockTranche("kafka_sync")->lock;
    LWLockAcquire(lock, LW_EXCLUSIVE);
    for (int i = 0; i < kafka_sync_shared->nslots; i++) {
        NodeSlot *slot = &kafka_sync_shared->slots[i];
        if (slot->in_use && slot->dboid == dboid) {
            SpinLockAcquire(&slot->mutex);
            slot->in_use = false;
            slot->stop_requested = false;
            SpinLockRelease(&slot->mutex);
        }
    }
    LWLockRelease(lock);
}

void wake_launcher(bool new_node) {
    if (!kafka_sync_shared)
        return;
    SpinLockAcquire(&kafka_sync_shared->mutex);
    if (new_node)
        kafka_sync_shared->generation++;
    Latch *latch = kafka_sync_shared->launcher_latch;
    SpinLockRelease(&kafka_sync_shared->mutex);
    if (latch)
        SetLatch(latch);
}

const char *node_state_name(NodeWorkerState state) {
    switch (state) {
    case NODE_STATE_STOPPED: return "stopped";
    case NODE_STATE_STARTING: return "starting";
    case NODE_STATE_SNAPSHOT: return "snapshot";
    case NODE_STATE_STREAMING: return "streaming";
    case NODE_STATE_KAFKA_UNAVAILABLE: return "kafka_unavailable";
    case NODE_STATE_ERROR: return "error";
    }
    return "unknown";
}
