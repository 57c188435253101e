// The launcher: keeps one producer worker running in every database that is
// a node.
//
// It is a static background worker, so the postmaster brings it back after a
// crash; it then finds the nodes again by probing each database (a node's
// existence is a row in that database, invisible from elsewhere). A probe is
// just the producer worker itself: it exits quietly, freeing its shared slot,
// when its database has no node, and the launcher remembers that until
// create_node() bumps the shared generation counter.
#include "common/settings.hpp"
#include "produce/launcher.hpp"

#include "common/shared_state.hpp"

extern "C" {
#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
}

namespace kafka_sync {

int launcher_naptime_s = 10;

namespace {

/* A worker crashed or failed: wait this long before starting it again. */
constexpr int kRestartDelayMs = 5000;
/* A worker that keeps failing soon after it starts waits longer each time, up to this. */
constexpr int kMaxRestartDelayMs = 300000;
/* One that ran this long before it failed starts the count over. */
constexpr int kHealthyRunMs = 60000;

struct DatabaseWorker {
    Oid dboid; /* hash key */
    BackgroundWorkerHandle *handle;
    uint64 started_generation;
    bool known_no_node;
    uint64 no_node_generation;
    TimestampTz not_before;
    TimestampTz started_at;
    int quick_failures; /* in a row, each soon after its start */
};

HTAB *workers = nullptr;

void clear_launcher_latch(int, Datum) {
    SpinLockAcquire(&kafka_sync_shared->mutex);
    kafka_sync_shared->launcher_latch = nullptr;
    SpinLockRelease(&kafka_sync_shared->mutex);
}

uint64 current_generation() {
    SpinLockAcquire(&kafka_sync_shared->mutex);
    uint64 g = kafka_sync_shared->generation;
    SpinLockRelease(&kafka_sync_shared->mutex);
    return g;
}

List *connectable_databases(MemoryContext result_context) {
    List *result = NIL;
    StartTransactionCommand();
    Relation rel = table_open(DatabaseRelationId, AccessShareLock);
    TableScanDesc scan = table_beginscan_catalog(rel, 0, nullptr);
    HeapTuple tup;
    while ((tup = heap_getnext(scan, ForwardScanDirection)) != nullptr) {
        auto *db = reinterpret_cast<Form_pg_database>(GETSTRUCT(tup));
        if (db->datallowconn && !db->datistemplate) {
            MemoryContext old = MemoryContextSwitchTo(result_context);
            result = lappend_oid(result, db->oid);
            MemoryContextSwitchTo(old);
        }
    }
    table_endscan(scan);
    table_close(rel, AccessShareLock);
    CommitTransactionCommand();
    return result;
}

bool start_worker(DatabaseWorker *w, uint64 generation) {
    BackgroundWorker worker;
    memset(&worker, 0, sizeof(worker));
    worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
    worker.bgw_restart_time = BGW_NEVER_RESTART; /* restarts are this launcher's job */
    strlcpy(worker.bgw_library_name, "kafka_sync", BGW_MAXLEN);
    strlcpy(worker.bgw_function_name, "kafka_sync_node_worker_main", BGW_MAXLEN);
    snprintf(worker.bgw_name, BGW_MAXLEN, "kafka_sync producer for database %u", w->dboid);
    strlcpy(worker.bgw_type, "kafka_sync producer", BGW_MAXLEN);
    worker.bgw_main_arg = ObjectIdGetDatum(w->dboid);
    worker.bgw_notify_pid = MyProcPid;
    BackgroundWorkerHandle *handle;
    /* the handle outlives this loop iteration's memory context */
    MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
    bool registered = RegisterDynamicBackgroundWorker(&worker, &handle);
    MemoryContextSwitchTo(old);
    if (!registered) {
        ereport(WARNING, (errmsg("kafka_sync launcher could not start a producer worker for database %u", w->dboid),
                          errhint("Raise max_worker_processes.")));
        return false;
    }
    if (w->handle)
        pfree(w->handle);
    w->handle = handle;
    w->started_generation = generation;
    return true;
}

bool worker_running(DatabaseWorker *w) {
    if (!w->handle)
        return false;
    pid_t pid;
    return GetBackgroundWorkerPid(w->handle, &pid) != BGWH_STOPPED;
}

void check_database(Oid dboid, uint64 generation, TimestampTz now) {
    bool found;
    auto *w = static_cast<DatabaseWorker *>(hash_search(workers, &dboid, HASH_ENTER, &found));
    if (!found) {
        w->handle = nullptr;
        w->known_no_node = false;
        w->no_node_generation = 0;
        w->started_generation = 0;
        w->not_before = 0;
        w->started_at = 0;
        w->quick_failures = 0;
    }
    if (worker_running(w))
        return;

    NodeSlot *slot = node_slot_for(dboid, false);
    bool stopping = false;
    pid_t running_pid = 0;
    if (slot) {
        SpinLockAcquire(&slot->mutex);
        stopping = slot->stop_requested;
        running_pid = slot->worker_pid;
        SpinLockRelease(&slot->mutex);
    }
    /* a worker started by an earlier incarnation of this launcher */
    if (!w->handle && running_pid != 0 && kill(running_pid, 0) == 0)
        return;
    if (w->handle) {
        /* The worker stopped. Without a shared slot it found no node. */
        if (!slot) {
            w->known_no_node = true;
            w->no_node_generation = w->started_generation;
        } else if (!stopping && w->not_before == 0) {
            /*
             * It failed: pause before the next attempt, longer each time it
             * fails again soon after starting (a record Kafka refuses, say),
             * so the server log and the broker are not flooded.
             */
            const bool quick = !TimestampDifferenceExceeds(w->started_at, now, kHealthyRunMs);
            w->quick_failures = quick ? Min(w->quick_failures + 1, 16) : 1;
            const int64 delay = Min((int64)kRestartDelayMs << Min(w->quick_failures - 1, 6), (int64)kMaxRestartDelayMs);
            w->not_before = TimestampTzPlusMilliseconds(now, delay);
        }
        pfree(w->handle);
        w->handle = nullptr;
    }
    if (stopping)
        return; /* drop_node() or pause_node() is in progress */
    if (w->known_no_node && w->no_node_generation >= generation)
        return;
    /* a change since its last start (alter_node, resume_node) is worth trying at once */
    if (w->not_before != 0 && now < w->not_before && generation <= w->started_generation)
        return;
    if (start_worker(w, generation)) {
        w->known_no_node = false;
        w->not_before = 0;
        w->started_at = now;
    }
}

[[noreturn]] void run_launcher() {
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, die);
    BackgroundWorkerUnblockSignals();
    BackgroundWorkerInitializeConnection(nullptr, nullptr, 0);

    SpinLockAcquire(&kafka_sync_shared->mutex);
    kafka_sync_shared->launcher_latch = MyLatch;
    SpinLockRelease(&kafka_sync_shared->mutex);
    before_shmem_exit(clear_launcher_latch, (Datum)0);

    HASHCTL ctl;
    memset(&ctl, 0, sizeof(ctl));
    ctl.keysize = sizeof(Oid);
    ctl.entrysize = sizeof(DatabaseWorker);
    workers = hash_create("kafka_sync launcher workers", 32, &ctl, HASH_ELEM | HASH_BLOBS);

    MemoryContext loop_context =
        AllocSetContextCreate(TopMemoryContext, "kafka_sync launcher loop", ALLOCSET_DEFAULT_SIZES);
    ereport(LOG, (errmsg("kafka_sync launcher started")));

    for (;;) {
        CHECK_FOR_INTERRUPTS();
        if (ConfigReloadPending) {
            ConfigReloadPending = false;
            ProcessConfigFile(PGC_SIGHUP);
        }
        MemoryContext old = MemoryContextSwitchTo(loop_context);
        uint64 generation = current_generation();
        TimestampTz now = GetCurrentTimestamp();
        List *dbs = connectable_databases(loop_context);
        ListCell *lc;
        foreach (lc, dbs)
            check_database(lfirst_oid(lc), generation, now);
        MemoryContextSwitchTo(old);
        MemoryContextReset(loop_context);

        /*
         * Worker exits wake us through bgw_notify_pid, create_node() and
         * drop_node() through the shared latch; the timeout covers the
         * restart delay of a failed worker.
         */
        int timeout_ms = Min(launcher_naptime_s * 1000, kRestartDelayMs);
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, timeout_ms, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
    }
}

} // namespace

} // namespace kafka_sync

void kafka_sync_launcher_main(Datum) {
    kafka_sync::run_launcher();
}
