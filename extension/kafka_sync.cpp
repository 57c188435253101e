// Module entry: settings, shared memory and the launcher registration.
//
// kafka_sync.so is loaded through shared_preload_libraries so that its
// launcher can start a producer worker in every database that is a node,
// after every server start or crash restart, with no user action.
#include "api/drop_guard.hpp"
#include "common/settings.hpp"
#include "common/shared_state.hpp"
#include "produce/commit_wake.hpp"
#include "produce/launcher.hpp"
#include "produce/node_worker.hpp"

extern "C" {
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

PGDLLEXPORT void _PG_init(void);
}

bool kafka_sync_preloaded = false;

namespace {

shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;

void request_shmem() {
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    shared_state_request();
}

void startup_shmem() {
    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();
    shared_state_startup();
}

void register_launcher() {
    BackgroundWorker worker;
    memset(&worker, 0, sizeof(worker));
    worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
    worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
    worker.bgw_restart_time = 5;
    strlcpy(worker.bgw_library_name, "kafka_sync", BGW_MAXLEN);
    strlcpy(worker.bgw_function_name, "kafka_sync_launcher_main", BGW_MAXLEN);
    strlcpy(worker.bgw_name, "kafka_sync launcher", BGW_MAXLEN);
    strlcpy(worker.bgw_type, "kafka_sync launcher", BGW_MAXLEN);
    RegisterBackgroundWorker(&worker);
}

} // namespace

void _PG_init(void) {
    /* the apply side's settings exist wherever the library is loaded */
    kafka_sync::define_settings();
    /* so does the refusal to drop the extension under a running node */
    drop_guard_install();
    /*
     * Loaded later (e.g. as an output plugin by pg_logical_slot_get_changes,
     * or by CREATE EXTENSION): the plugin and SQL functions work, the
     * workers do not; create_node() says so.
     */
    if (!process_shared_preload_libraries_in_progress)
        return;
    kafka_sync_preloaded = true;

    kafka_sync::define_server_settings();
    kafka_sync::commit_wake_install();
    MarkGUCPrefixReserved("kafka_sync");

    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = request_shmem;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = startup_shmem;

    register_launcher();
}
