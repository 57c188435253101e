// Per-relation metadata cache of the output plugin and the snapshot reader.
//
// Everything a row change needs that does not change from row to row — is
// the table published, which actions, which columns, which are the key,
// each column's output function, the prebuilt TableEncoder — is looked up
// once and kept until a relcache or publication invalidation marks it stale.
// Invalidation callbacks only set a flag; the entry is rebuilt on next use,
// so an invalidation arriving in the middle of a change never frees memory
// that change is still using.
#pragma once

extern "C" {
#include "postgres.h"

#include "fmgr.h"
#include "utils/rel.h"
}

namespace kafka_sync {
class TableEncoder;
struct EncodeOptions;
} // namespace kafka_sync

struct RelationInfo {
    Oid relid; /* hash key */
    bool valid;
    bool published;
    bool pub_insert;
    bool pub_update;
    bool pub_delete;
    bool pub_truncate;
    int ncolumns;          /* published columns */
    AttrNumber *attnums;   /* their attribute numbers, in order */
    bool *is_key;          /* part of the record key */
    FmgrInfo *out_funcs;   /* type output functions */
    bool has_key;
    kafka_sync::TableEncoder *encoder; /* C++-owned; deleted on rebuild */
    /* per-transaction counter for transaction.data_collection_order */
    uint64 txn_seen;
    uint64 txn_changes;
};

/* Settings shared by every relation of one decoding session. */
struct RelationInfoSettings {
    const char *node_name;
    const char *publication;
    bool include_schema;
    bool include_xids;
    bool include_lsn;
    bool include_timestamps;
};

/*
 * Start a session: (re)initialise the cache for these settings. Entries built
 * for other settings are dropped. Must be called in a transaction-free or
 * transaction context alike; it does no catalog access.
 */
void relation_info_begin_session(const RelationInfoSettings *settings);

/* The (possibly rebuilt) entry for rel. Needs catalog access. */
RelationInfo *relation_info_get(Relation rel);

/* Drop every entry, e.g. when a session ends. */
void relation_info_reset(void);

/*
 * Raise a clear error when the publication cannot be used by kafka_sync
 * (missing, row filters). Needs catalog access.
 */
void relation_info_check_publication(const char *publication);
