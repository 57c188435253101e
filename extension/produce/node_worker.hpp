// The producer worker, as the rest of the extension sees it: the WAL reader
// create_node()'s slot shares with it, its settings, and the calls the table
// snapshots (table_snapshot.cpp) and resnapshot requests (resnapshot.cpp)
// make on it. Its files: node_worker.cpp (lifecycle), node_config.cpp,
// wal_stream.cpp and txn_delivery.cpp; its state is worker_state.hpp.
#pragma once

#include "common/shared_state.hpp"

extern "C" {
#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
}

struct XLogReaderRoutine;

namespace kafka_sync {

struct NodeWorker;

/* Reads this server's own WAL: for the slot create_node() makes and for the worker's stream. */
XLogReaderRoutine *node_local_wal_reader(void);

/* Opens a source transaction (commit order) whose records follow. */
void node_worker_begin_txn(NodeWorker *w, uint64 commit_lsn, uint32 xid, int64 commit_ts_ms);

/*
 * Opens the pseudo-transaction of a table snapshot. Its records carry
 * header_lsn; once Kafka acknowledged them the slot may confirm confirm_lsn,
 * which must be a position the stream has really passed (a WAL record end):
 * the slot restarts decoding there, and a header LSN between two records
 * would make it skip the commit that starts right before it.
 */
void node_worker_begin_snapshot_txn(NodeWorker *w, uint64 header_lsn, uint64 confirm_lsn, int64 snapshot_ts_ms);

/*
 * Adds one record of the open transaction. The record is held back until the
 * next one (or the end) arrives, so the last record of a transaction can carry
 * the kafka_sync.txn_end header.
 */
void node_worker_add_record(NodeWorker *w, const char *key, size_t key_len, bool has_key, const char *value,
                            size_t value_len, bool has_value);

/* Closes the open transaction; nrecords is how many records it has. */
void node_worker_end_txn(NodeWorker *w, uint64 nrecords);

/* Everything the snapshot reader needs to know about the node. */
const char *node_worker_node_name(NodeWorker *w);
const char *node_worker_publication(NodeWorker *w);
bool node_worker_schemas(NodeWorker *w);

/*
 * table_snapshot.cpp: publishes every published row the active snapshot
 * sees as op "r" records of one pseudo-transaction (see
 * node_worker_begin_snapshot_txn). Needs a transaction. Returns the number
 * of records.
 */
uint64 publish_table_snapshot(NodeWorker *w, XLogRecPtr header_lsn, XLogRecPtr confirm_lsn, const char *what);

/*
 * resnapshot.cpp, the worker's side of kafka_sync.resnapshot(). Each runs
 * its own transaction(s), between decoded transactions.
 *
 * The pending request's requested_at; 0 when there is none. first_initial:
 * it is the node's initial snapshot and no run has begun publishing it.
 */
TimestampTz resnapshot_requested(bool *first_initial);
/* Recorded before the first record of a snapshot is produced. */
void resnapshot_mark_started(TimestampTz requested_at);
/*
 * Waits until the transactions in xids (handed to the producer, committed)
 * are visible, then publishes the snapshot under a fresh repeatable-read
 * snapshot. Returns its number of records.
 */
uint64 publish_resnapshot(NodeWorker *w, XLogRecPtr header_lsn, XLogRecPtr confirm_lsn, const TransactionId *xids,
                          uint32 nxids);
/* Every record of the snapshot is acknowledged: the request is fulfilled. */
void resnapshot_mark_done(TimestampTz requested_at, XLogRecPtr header_lsn, uint64 nrecords);

} // namespace kafka_sync
