// Reading and writing one row of a table directly through the executor, the
// way PostgreSQL's own apply worker does (execReplication.c): find the row by
// its key index, lock it, insert / update / delete it with its indexes,
// constraints and row triggers. No SQL text, no planner, no per-statement
// executor start-up: the apply path's common case.
//
// A table takes this path only when the SQL path would do nothing more:
// a plain table, no row level security for the applying role, no statement
// triggers or transition tables, no rules, and the role holds SELECT,
// INSERT, UPDATE and DELETE on it (row_writer_usable). Anything else (a
// partitioned table, say) is applied through SPI as before.
#pragma once

extern "C" {
#include "postgres.h"

#include "utils/relcache.h"
}

/*
 * Opaque. Open for the changes of one table in one local transaction, in
 * the memory context current at row_writer_open; closed before the commit.
 */
struct RowWriter;

/* Whether changes to rel may be written directly (see above) by the current role. */
bool row_writer_usable(Relation rel);

/*
 * The key index row_writer_find searches: the replica identity index, else
 * the primary key; InvalidOid when the table has neither.
 */
Oid row_writer_key_index(Relation rel);

/* Opens relid (the caller holds RowExclusiveLock on it): executor state, indexes. */
RowWriter *row_writer_open(Oid relid, Oid key_index);
void row_writer_close(RowWriter *w);

/*
 * Around each change: begin pushes an active snapshot; end fires the
 * change's AFTER ROW triggers (foreign keys, kafka_sync's tombstones), pops
 * the snapshot and makes the change visible to what follows.
 */
void row_writer_begin_change(RowWriter *w);
void row_writer_end_change(RowWriter *w);

/*
 * Looks the row up by the key columns of values/isnull (indexed by attnum - 1,
 * the table's whole row); locks it (waiting for a writer in progress) and
 * returns its xmin. false: no row with that key.
 */
bool row_writer_find(RowWriter *w, const Datum *values, const bool *isnull, TransactionId *xmin);

/* Inserts the row values/isnull (generated columns are computed). */
void row_writer_insert(RowWriter *w, const Datum *values, const bool *isnull);

/* Updates the row row_writer_find found: the columns with replace[] true get values/isnull. */
void row_writer_update(RowWriter *w, const Datum *values, const bool *isnull, const bool *replace);

/* Deletes the row row_writer_find found. */
void row_writer_delete(RowWriter *w);
