// The producer worker's lifecycle: one worker per node, started by the
// launcher (launcher.cpp), owning the node's logical slot.
//
// It claims the database's shared slot, reads the node's settings
// (node_config.cpp), makes the KafkaProducer, makes sure the topic exists
// and then streams WAL (wal_stream.cpp) until it is stopped. Any ERROR ends
// the worker, recorded for kafka_sync.node_status first; the launcher starts
// it again after a pause that grows while it keeps failing soon after each
// start. Nothing is lost on the way: see txn_delivery.cpp.
#include "produce/worker_state.hpp"

#include "boundary/pg_boundary.hpp"
#include "common/secrets_file.hpp"
#include "produce/launcher.hpp"

extern "C" {
#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
}

#include <malloc.h>
#include <string>

namespace kafka_sync {

namespace {

constexpr int kTopicRetryMs = 2000;

NodeWorker *worker = nullptr;

/*
 * A configuration reload re-reads the node's secrets file: a changed one
 * takes a new producer, so the worker exits and the launcher starts it again
 * (what Kafka had not acknowledged is sent again; nothing is lost).
 */
void check_secrets_file(NodeWorker *w) {
    bool changed = ks_guard([&]() {
        if (!w->secrets_file || w->secrets_file->empty())
            return false;
        std::string error;
        std::string now = secrets_file_content(*w->secrets_file, error);
        return error.empty() && now != *w->secrets_content;
    });
    if (changed) {
        ereport(LOG,
                (errmsg("kafka_sync node %s: its secrets file changed: restarting the producer", w->cfg.node_name)));
        proc_exit(1);
    }
}

/* Read by librdkafka waits, on our own thread: only flags, no PostgreSQL calls. */
bool exit_requested() {
    return ProcDiePending || InterruptPending;
}

void ensure_topic(NodeWorker *w) {
    for (;;) {
        /* short attempts, so node_status says kafka_unavailable within seconds */
        bool ok = ks_guard([&]() { return w->producer->ensure_topic(3000, exit_requested); });
        CHECK_FOR_INTERRUPTS();
        if (ok)
            return;
        const char *err = producer_error(w);
        ereport(WARNING, (errmsg("kafka_sync node %s: %s", w->cfg.node_name, err),
                          errhint("Create the topic with one partition, or check the brokers and kafka_config; "
                                  "retrying in %d s.",
                                  kTopicRetryMs / 1000)));
        set_state(w, NODE_STATE_KAFKA_UNAVAILABLE, err);
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, kTopicRetryMs, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        CHECK_FOR_INTERRUPTS();
        handle_reload(w);
    }
}

void cleanup_worker(int, Datum) {
    NodeWorker *w = worker;
    if (!w)
        return;
    delete w->producer;
    w->producer = nullptr;
    if (w->slot) {
        SpinLockAcquire(&w->slot->mutex);
        /* drop_node() or pause_node() may have released the slot already */
        if (w->slot->in_use && w->slot->dboid == MyDatabaseId && w->slot->worker_pid == MyProcPid) {
            w->slot->worker_pid = 0;
            w->slot->worker_latch = nullptr;
            if (w->slot->state != NODE_STATE_ERROR)
                w->slot->state = NODE_STATE_STOPPED;
        }
        SpinLockRelease(&w->slot->mutex);
    }
    worker = nullptr;
}

/* The session settings every producer runs with. */
void pin_session_settings() {
    /*
     * The database's own search_path (ALTER DATABASE ... SET) is its owner's
     * to choose: a function of theirs named like one this superuser process
     * calls must never run instead.
     */
    SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
    /* and the text form of values in the records is the one every node reads alike */
    SetConfigOption("DateStyle", "ISO", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("IntervalStyle", "postgres", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("extra_float_digits", "3", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("bytea_output", "hex", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * The worker of this database's shared slot; nullptr when an earlier worker
 * still runs there (a restarted launcher started this one meanwhile).
 */
NodeWorker *claim_node_slot() {
    NodeSlot *slot = node_slot_for(MyDatabaseId, true);
    if (!slot)
        ereport(ERROR,
                (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
                 errmsg("a kafka_sync node cannot start in database %u: every node slot is in use", MyDatabaseId),
                 errhint("Raise kafka_sync.max_nodes (needs a server restart).")));
    auto *w = static_cast<NodeWorker *>(MemoryContextAllocZero(TopMemoryContext, sizeof(NodeWorker)));
    w->slot = slot;
    worker = w;
    before_shmem_exit(cleanup_worker, (Datum)0);
    SpinLockAcquire(&slot->mutex);
    pid_t other = slot->worker_pid;
    bool other_alive = other != 0 && other != MyProcPid && kill(other, 0) == 0;
    if (!other_alive) {
        slot->worker_pid = MyProcPid;
        slot->worker_latch = MyLatch;
    }
    SpinLockRelease(&slot->mutex);
    if (other_alive) {
        worker = nullptr;
        return nullptr;
    }
    return w;
}

/* The librdkafka side of the worker; deleted by cleanup_worker at exit. */
void make_producer(NodeWorker *w) {
    /* this node's incarnation: a restored copy runs on a new timeline, a re-created node has a new created_at */
    const uint64 sysid = GetSystemIdentifier();
    const TimeLineID tli = GetWALInsertionTimeLine();
    ks_guard([&]() {
        ProducerSetup setup = producer_setup(w->cfg, sysid, tli);
        w->schemas = setup.settings.kafka.schemas;
        w->tombstones = setup.settings.kafka.tombstones;
        w->stream_in_progress = setup.settings.kafka.streaming;
        w->stream_work_mem_kb = setup.settings.kafka.streaming_work_mem_kb;
        w->streams = new std::unordered_map<uint32, uint64>();
        w->inflight = new InflightTransactions();
        w->held_key = new std::string();
        w->held_value = new std::string();
        w->secrets_file = new std::string(setup.secrets_file);
        w->secrets_content = new std::string(setup.secrets_content);
        w->producer = new KafkaProducer(setup.settings, *w->inflight);
    });
}

void run_node_worker(Oid dboid) {
    BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
    pin_session_settings();
    pgstat_report_appname("kafka_sync producer");

    if (!node_exists())
        proc_exit(0); /* not a node: no shared slot, so the launcher remembers */
    NodeWorker *w = claim_node_slot();
    if (!w)
        proc_exit(0);
    check_stop_requested(w);

    /*
     * Read the settings only now that pause_node()/drop_node() can see and
     * stop us: a change they commit from here on reaches this worker.
     */
    if (!read_node_config(&w->cfg)) {
        worker = nullptr;
        node_slot_release(MyDatabaseId); /* paused or dropped meanwhile */
        proc_exit(0);
    }
    set_state(w, NODE_STATE_STARTING, nullptr);
    make_producer(w);
    ensure_topic(w);

    /*
     * create_node() made the slot; the initial snapshot is a resnapshot
     * request that the stream serves first. A slot that is gone cannot be
     * made again here: the changes since it went would be lost unseen.
     */
    if (!SearchNamedReplicationSlot(w->cfg.slot_name, true))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
                        errmsg("replication slot \"%s\" of kafka_sync node %s does not exist", w->cfg.slot_name,
                               w->cfg.node_name),
                        errdetail("Changes committed since it was dropped were not published and cannot be any more."),
                        errhint("Re-create the node: SELECT kafka_sync.drop_node(); then kafka_sync.create_node(...) "
                                "with snapshot => true, and resynchronise its subscribers from that snapshot.")));
    stream_wal(w);
}

/*
 * Every record is a few small malloc()s of librdkafka's, freed when Kafka
 * acknowledges it, and the reorder buffer and librdkafka's batches allocate
 * and free large blocks all the time: with glibc's defaults the heap is
 * trimmed and large blocks are mmap()ed and unmapped again, and the pages
 * are faulted in anew each time (tens of thousands of page faults for a
 * 200,000-row transaction). This process keeps up to 64 MB of freed memory
 * instead; librdkafka's queue is bounded by the same amount.
 */
void keep_freed_memory() {
    mallopt(M_MMAP_THRESHOLD, 16 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
}

} // namespace

void handle_reload(NodeWorker *w) {
    if (!ConfigReloadPending)
        return;
    ConfigReloadPending = false;
    ProcessConfigFile(PGC_SIGHUP);
    check_secrets_file(w);
}

void check_stop_requested(NodeWorker *w) {
    SpinLockAcquire(&w->slot->mutex);
    bool drop = w->slot->stop_requested;
    SpinLockRelease(&w->slot->mutex);
    if (drop) {
        ereport(LOG,
                (errmsg("kafka_sync producer of database %u: stopping for drop_node() or pause_node()", MyDatabaseId)));
        proc_exit(0);
    }
}

} // namespace kafka_sync

void kafka_sync_node_worker_main(Datum main_arg) {
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    pqsignal(SIGTERM, die);
    BackgroundWorkerUnblockSignals();
    Oid dboid = DatumGetObjectId(main_arg);
    kafka_sync::keep_freed_memory();

    /*
     * Any ERROR ends the worker (the launcher starts it again after a
     * pause); first it is recorded for kafka_sync.node_status.
     */
    kafka_sync::ks_guard([&]() {
        try {
            kafka_sync::pg_call([&]() { kafka_sync::run_node_worker(dboid); });
        } catch (const kafka_sync::PgError &e) {
            if (kafka_sync::worker && kafka_sync::worker->slot)
                kafka_sync::set_state(kafka_sync::worker, NODE_STATE_ERROR, e.what());
            throw;
        }
    });
}
