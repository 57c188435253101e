// Applying one decoded change to a local table through SPI.
//
// Table and column names from a record are resolved against the catalog
// (namespace, relation, attribute lookups) and only catalog names, quoted,
// reach SQL text; values are always parameters, converted by each column's
// input function. Plans are prepared once per (table, operation, column set)
// and kept until the table's definition changes.
#pragma once

#include "apply/conflicts.hpp"
#include "wire/record_decoder.hpp"

extern "C" {
#include "postgres.h"

#include "nodes/pg_list.h"
}

struct ApplyCounters {
    int64 applied;
    int64 skipped;
    int64 conflicts; /* resolved conflicts, each logged in kafka_sync.conflicts */
};

/* Where a change comes from and how its conflicts are resolved. */
struct RemoteChange {
    ConflictStrategy strategy;
    const char *sub_name;
    const char *peer;
    const char *local_node; /* this node's name ("" when not a node) */
    RowVersion version;     /* of the incoming change (a snapshot row: its own time) */
    const char *row_origin; /* the node that made the change (a snapshot row: its last writer) */
    /* a change of a transaction still in progress: its version (commit time) is not known, so a
       conflict, which would need it, is an ERROR (the sidecar applies the transaction at its commit) */
    bool in_progress;
};

/*
 * A new apply call (or local transaction) begins (apply_state.hpp,
 * ApplyCall): facts cached per call are looked up again. keep_writer: a
 * table's executor state stays open from one change to the next (not in
 * careful mode, where each change runs in a subtransaction of its own);
 * apply_close_writer must then run before the commit, and before anything
 * else writes the table.
 */
void apply_begin_call(bool keep_writer);
void apply_close_writer();

/* Resolves the record's table; raises ERROR when it cannot be a target. */
Oid apply_target_relid(const char *schema, const char *table);

/* The encoded key (conflicts.hpp, encode_key) of the record's row image; NULL when relid has no key. */
bytea *apply_row_key(Oid relid, const kafka_sync::DecodedRecord *rec);
/* Applies a c/u/d/r change to relid, resolving conflicts; raises ERROR when it cannot. */
void apply_row_change(Oid relid, const kafka_sync::DecodedRecord *rec, const RemoteChange *remote,
                      ApplyCounters *counters);

/* TRUNCATE of these tables, in one statement (foreign keys between them). */
void apply_truncate(List *relids);
