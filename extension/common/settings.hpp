// Every setting of kafka_sync (postgresql.conf: kafka_sync.*) is defined
// here, with its documentation, default and range; the variables they set
// are declared here too and read by the parts that use them.
#pragma once

/* The apply side (extension/apply/) */
extern int apply_lock_timeout_ms;                /* kafka_sync.apply_lock_timeout (ms; 0: for ever) */
extern int apply_dead_letter_max_rows;           /* kafka_sync.dead_letter_max_rows (0: all) */
extern int apply_max_clock_skew_s;               /* kafka_sync.max_clock_skew (s) */
extern int apply_max_lsn_jump_mb;                /* kafka_sync.max_lsn_jump (MB; 0: no limit) */
extern int apply_max_logged_value_size;          /* kafka_sync.max_logged_value_size (bytes) */
extern int apply_partial_transaction_wait_ms;    /* kafka_sync.partial_transaction_wait (ms), read by the sidecar */
extern int apply_partial_transaction_hold_ms;    /* kafka_sync.partial_transaction_hold (ms), read by the sidecar */
extern int apply_streamed_transaction_memory_kb; /* kafka_sync.streamed_transaction_memory (kB), read by the sidecar */
extern int conflict_log_max_rows;                /* kafka_sync.conflict_log_max_rows (0: log nothing) */
extern int tombstone_retention_s;                /* kafka_sync.tombstone_retention (s) */

namespace kafka_sync {

/* The source side (extension/produce/) */
extern char *allowed_kafka_properties; /* kafka_sync.allowed_kafka_properties (common/kafka_properties.hpp) */
extern int launcher_naptime_s;         /* kafka_sync.launcher_naptime (s) */
extern int retained_wal_warning_mb;    /* kafka_sync.retained_wal_warning (MB; 0: off) */

/* Settings that exist wherever the library is loaded (the apply side, the output plugin, the SQL functions). */
void define_settings();
/* Those of the workers: only when loaded through shared_preload_libraries. */
void define_server_settings();

} // namespace kafka_sync

/* kafka_sync.max_nodes (common/shared_state.hpp) */
extern int kafka_sync_max_nodes;
