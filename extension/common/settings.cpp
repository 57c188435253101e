// See settings.hpp.
#include "common/settings.hpp"

extern "C" {
#include "postgres.h"

#include "utils/guc.h"
}

#include <climits>

int apply_lock_timeout_ms = 300000;
int apply_dead_letter_max_rows = 100000;
int apply_max_clock_skew_s = 300;
int apply_max_lsn_jump_mb = 1024 * 1024;
int apply_max_logged_value_size = 64 * 1024;
int apply_partial_transaction_wait_ms = 30 * 1000;
int apply_partial_transaction_hold_ms = 5 * 60 * 1000;
int apply_streamed_transaction_memory_kb = 64 * 1024;
int conflict_log_max_rows = 100000;
int tombstone_retention_s = 7 * 24 * 3600;

namespace kafka_sync {

void define_settings() {
    DefineCustomStringVariable("kafka_sync.allowed_kafka_properties",
                               "Risky librdkafka properties that kafka_config and secrets files may set.",
                               "A comma-separated list of names among plugin.library.paths, ssl.engine.location, "
                               "ssl.engine.id, ssl.providers, sasl.kerberos.kinit.cmd and "
                               "internal.termination.signal (they load code, run commands or change signal "
                               "handling); empty: none.",
                               &allowed_kafka_properties, "", PGC_SIGHUP, 0, nullptr, nullptr, nullptr);

    DefineCustomIntVariable(
        "kafka_sync.apply_lock_timeout", "How long an apply waits for the database's apply lock (0: for ever).",
        "Another subscription's apply session holds it for the length of one local transaction; "
        "past this the apply fails with lock_not_available and the sidecar tries again.",
        &apply_lock_timeout_ms, 300000, 0, INT_MAX, PGC_SUSET, GUC_UNIT_MS, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.dead_letter_max_rows",
                            "Number of the newest rows kept in kafka_sync.dead_letters (0: no limit).",
                            "Older dead letters are deleted as new ones are stored; each record is still in Kafka "
                            "at its offset while the topic keeps it.",
                            &apply_dead_letter_max_rows, 100000, 0, INT_MAX, PGC_SUSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.max_clock_skew", "How far in the future a peer's record time may lie.",
                            "A record whose commit time is later than now plus this is refused (a dead letter, or "
                            "the subscription pauses): it would win every conflict.",
                            &apply_max_clock_skew_s, 300, 0, 30 * 24 * 3600, PGC_SIGHUP, GUC_UNIT_S, nullptr, nullptr,
                            nullptr);
    DefineCustomIntVariable("kafka_sync.max_lsn_jump",
                            "How far past what a subscription applied a peer's next record LSN may lie (0: no limit).",
                            "A record beyond it is refused: applied, it would make every later record of the peer "
                            "look applied already.",
                            &apply_max_lsn_jump_mb, 1024 * 1024, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MB, nullptr, nullptr,
                            nullptr);
    DefineCustomIntVariable("kafka_sync.max_logged_value_size",
                            "Largest row image, key or record value kept in kafka_sync.conflicts and "
                            "kafka_sync.dead_letters.",
                            "A larger one is replaced by {\"kafka_sync.omitted_bytes\": size} (a dead letter's value "
                            "by NULL, its size in value_bytes): with the row limits, this bounds what the two tables "
                            "can hold.",
                            &apply_max_logged_value_size, 64 * 1024, 0, 1024 * 1024 * 1024, PGC_SUSET, GUC_UNIT_BYTE,
                            nullptr, nullptr, nullptr);
    /* read by the sidecar (kafka_sync.sidecar_subscriptions()), which enforces them */
    DefineCustomIntVariable("kafka_sync.partial_transaction_wait",
                            "How long the sidecar keeps a source transaction applied in part open while its next "
                            "record does not arrive.",
                            "Then it rolls the part back (releasing its locks), reads ahead without applying until "
                            "the transaction's last record is in Kafka, and applies it whole.",
                            &apply_partial_transaction_wait_ms, 30 * 1000, 1000, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
                            nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.partial_transaction_hold",
                            "How long the sidecar keeps a source transaction applied in part open before its last "
                            "record is in Kafka.",
                            "Then it rolls the part back, reads ahead without applying until the transaction's last "
                            "record is in Kafka, and applies it whole: a peer's transaction that never ends cannot "
                            "hold locks (and the database's apply lock) for longer.",
                            &apply_partial_transaction_hold_ms, 5 * 60 * 1000, 1000, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
                            nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.streamed_transaction_memory",
                            "Memory the sidecar keeps, per subscription, for the records of a peer's streamed "
                            "transactions until they commit.",
                            "A transaction that outgrows it is read again from Kafka at its commit (0: always).",
                            &apply_streamed_transaction_memory_kb, 64 * 1024, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_KB,
                            nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.conflict_log_max_rows",
                            "Number of the newest rows kept in kafka_sync.conflicts (0: log nothing).",
                            "Older rows are deleted as new conflicts are logged, so the log cannot fill the disk.",
                            &conflict_log_max_rows, 100000, 0, INT_MAX, PGC_SUSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.tombstone_retention", "How long the version of a deleted key is remembered.",
                            "Must exceed the longest time a change can take to reach every node (pauses and "
                            "outages included); an older change of a key deleted longer ago can bring it back.",
                            &tombstone_retention_s, 7 * 24 * 3600, 60, INT_MAX, PGC_SUSET, GUC_UNIT_S, nullptr, nullptr,
                            nullptr);
}

void define_server_settings() {
    DefineCustomIntVariable("kafka_sync.max_nodes",
                            "Maximum number of databases of this server that are kafka_sync nodes.",
                            "Each node has one producer worker; max_worker_processes must leave room for them.",
                            &kafka_sync_max_nodes, 8, 1, 1024, PGC_POSTMASTER, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("kafka_sync.launcher_naptime", "Seconds between the launcher's checks for nodes to start.",
                            nullptr, &launcher_naptime_s, 10, 1, 3600, PGC_SIGHUP, GUC_UNIT_S, nullptr, nullptr,
                            nullptr);
    DefineCustomIntVariable("kafka_sync.retained_wal_warning",
                            "WAL a node's slot may retain before a WARNING and node_status state retaining_wal.",
                            "Nothing is dropped beyond it; 0 turns the warning off.", &retained_wal_warning_mb, 10240,
                            0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MB, nullptr, nullptr, nullptr);
}

} // namespace kafka_sync
