// Conflict detection and resolution for the apply side.
//
// Every row here has a version: the commit time and origin node of the
// transaction that last wrote it (its xmin, read through
// track_commit_timestamp; rows applied from a peer carry the peer's commit
// time because apply commits each source transaction on its own, under the
// peer's replication origin with the origin timestamp set). A deleted key
// keeps a version too, in kafka_sync.tombstones. An incoming change is in
// conflict when the local row (or tombstone) was last written by another node
// than the change; the subscription's strategy then picks the winner, the
// same way on every node, and the conflict is logged in kafka_sync.conflicts.
#pragma once

extern "C" {
#include "postgres.h"

#include "access/htup.h"
#include "executor/spi.h"
#include "datatype/timestamp.h"
#include "utils/relcache.h"
}

#include "apply/conflict_policy.hpp"

using kafka_sync::ConflictStrategy;

/* Raised for a conflict under the "error" strategy: the subscription pauses. */
#define ERRCODE_KAFKA_SYNC_CONFLICT MAKE_SQLSTATE('K', 'S', '0', '0', '1')

/* SPI_prepare + SPI_keepplan, raising ERROR when the statement does not prepare. */
SPIPlanPtr keep_plan(const char *sql, int nargs, Oid *types);

/* Parses a strategy name as stored in kafka_sync.subscription. */
ConflictStrategy conflict_strategy_from_name(const char *name);

struct RowVersion {
    bool known = false;        /* commit time and origin could be read */
    bool current_xact = false; /* written by this very local transaction */
    TimestampTz ts = 0;
    char node[NAMEDATALEN] = {0}; /* "" when unknown */
};

/* The version of a row (or tombstone) last written by transaction xid. */
RowVersion row_version_of_xid(TransactionId xid, const char *local_node);

/* A RowVersion as conflict_policy.hpp's pure functions take it (valid while v lives). */
kafka_sync::VersionRef version_ref(const RowVersion &v);

/* <0, 0, >0: a older than, same as, newer than b (time, then node name). */
int compare_versions(const RowVersion &a, const RowVersion &b);

/* The ERROR of a conflict under the "error" strategy (local NULL: nothing local known). */
[[noreturn]] void raise_conflict(const char *kind, const char *table, const char *key_json, const RowVersion *local,
                                 const RowVersion &remote);

/* One resolved conflict, as a row of kafka_sync.conflicts (texts may be NULL). */
struct ConflictRecord {
    const char *sub_name;
    const char *peer;
    const char *table;
    const char *kind;
    const char *key_json;
    const char *local_row_json;
    const RowVersion *local; /* NULL: no local version */
    const char *remote_row_json;
    const RowVersion *remote;
    const char *resolution;
};
void log_conflict(const ConflictRecord &c);

/* Key columns in their binary send form, the key of kafka_sync.tombstones. */
bytea *encode_key(int nkeys, const Oid *types, const Datum *values);

/* The encoded key (as encode_key) of a row of rel; NULL when rel has no key or the row a null in it. */
bytea *row_key(Relation rel, HeapTuple tuple);

/* The tombstone of (relid, key): *found false when none. */
RowVersion find_tombstone(Oid relid, bytea *key, const char *local_node, bool *found);

/* Whether kafka_sync.tombstones holds any key of relid (committed, or written by this transaction). */
bool tombstones_exist(Oid relid);

/* Records (or renews) a tombstone written by the current transaction. */
void write_tombstone(Oid relid, bytea *key);

/*
 * text itself when it is within kafka_sync.max_logged_value_size, else a
 * small JSON object in its place that gives its size: {"kafka_sync.omitted_bytes": N}.
 */
const char *bounded_json_image(const char *text);

/* Deletes tombstones older than kafka_sync.tombstone_retention (now and then). */
void prune_tombstones_if_due();
