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
    int ncolumns;        /* published columns */
    AttrNumber *attnums; /* their attribute numbers, in order */
    bool *is_key;        /* part of the record key */
    FmgrInfo *out_funcs; /* type output functions */
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
 * One cache per reader: the output plugin's decoding session (catalog as of
 * each decoded change) and a snapshot (catalog as of now) each have their
 * own, so a snapshot taken while decoding never sees or evicts the other's
 * entries. A cache lives in a child of parent and goes away with it (also
 * when an ERROR frees parent); relation_info_cache_destroy ends it earlier.
 */
struct RelationInfoCache;

RelationInfoCache *relation_info_cache_create(const RelationInfoSettings *settings, MemoryContext parent);
void relation_info_cache_destroy(RelationInfoCache *cache);

/* The (possibly rebuilt) entry for rel. Needs catalog access. */
RelationInfo *relation_info_get(RelationInfoCache *cache, Relation rel);

/*
 * Raise a clear error when the publication cannot be used by kafka_sync
 * (missing, row filters). Needs catalog access.
 */
void relation_info_check_publication(const char *publication);
