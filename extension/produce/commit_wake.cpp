// Every commit that wrote something in a node's database sets its producer
// worker's latch, as PostgreSQL wakes its walsenders when WAL is flushed: the
// worker then reads the new WAL at once instead of at its next poll (10 ms),
// which is most of the time from a commit to its records in Kafka.
#include "produce/commit_wake.hpp"

#include "common/shared_state.hpp"

extern "C" {
#include "access/xact.h"
#include "miscadmin.h"
#include "storage/latch.h"
}

namespace kafka_sync {

namespace {

NodeSlot *node_slot = nullptr; /* of this database, once found */

void wake_worker_at_commit(XactEvent event, void *) {
    if (event != XACT_EVENT_COMMIT || !kafka_sync_shared || !OidIsValid(MyDatabaseId))
        return;
    if (!TransactionIdIsValid(GetTopTransactionIdIfAny()))
        return; /* wrote nothing: nothing to publish */
    if (!node_slot || !node_slot->in_use || node_slot->dboid != MyDatabaseId)
        node_slot = node_slot_for(MyDatabaseId, false);
    if (!node_slot)
        return;
    SpinLockAcquire(&node_slot->mutex);
    Latch *latch = node_slot->in_use && node_slot->dboid == MyDatabaseId ? node_slot->worker_latch : nullptr;
    SpinLockRelease(&node_slot->mutex);
    /* a latch of an exited worker belongs to its PGPROC's next process: at worst a spurious wake */
    if (latch && latch != MyLatch)
        SetLatch(latch);
}

} // namespace

void commit_wake_install() {
    RegisterXactCallback(wake_worker_at_commit, nullptr);
}

} // namespace kafka_sync
