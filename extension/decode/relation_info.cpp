// Per-relation metadata cache (see relation_info.hpp).
#include "decode/relation_info.hpp"
#include "common/identity_key.hpp"

#include "boundary/pg_boundary.hpp"
#include "wire/record_encoder.hpp"

extern "C" {
#include "access/htup_details.h"
#include "access/sysattr.h"
#include "access/table.h"
#include "catalog/partition.h"
#include "catalog/pg_publication.h"
#include "catalog/pg_publication_rel.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/bitmapset.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
}

struct RelationInfoCache {
    HTAB *hash;
    MemoryContext context; /* everything of this cache, freed with it */
    RelationInfoSettings settings;
    const char *db;
    RelationInfoCache *next; /* in live_caches */
    MemoryContextCallback on_free;
};

namespace {

/* Every cache not freed yet: invalidation callbacks mark entries in all. */
RelationInfoCache *live_caches = nullptr;
bool callbacks_registered = false;

void release_entry(RelationInfo *entry) {
    delete entry->encoder;
    entry->encoder = nullptr;
    if (entry->attnums)
        pfree(entry->attnums);
    if (entry->is_key)
        pfree(entry->is_key);
    if (entry->out_funcs)
        pfree(entry->out_funcs);
    entry->attnums = nullptr;
    entry->is_key = nullptr;
    entry->out_funcs = nullptr;
    entry->ncolumns = 0;
    entry->valid = false;
}

void invalidate_in(RelationInfoCache *cache, Oid relid) {
    if (relid == InvalidOid) {
        HASH_SEQ_STATUS status;
        hash_seq_init(&status, cache->hash);
        while (auto *entry = static_cast<RelationInfo *>(hash_seq_search(&status)))
            entry->valid = false;
        return;
    }
    auto *entry = static_cast<RelationInfo *>(hash_search(cache->hash, &relid, HASH_FIND, nullptr));
    if (entry)
        entry->valid = false;
}

void invalidate_relation(Datum, Oid relid) {
    for (RelationInfoCache *c = live_caches; c; c = c->next)
        invalidate_in(c, relid);
}

/* Publication membership can change without a relcache event on the table. */
void invalidate_all(Datum arg, int, uint32) {
    invalidate_relation(arg, InvalidOid);
}

/* Runs when the cache's memory context goes, by destroy or by an ERROR. */
void cache_freed(void *arg) {
    auto *cache = static_cast<RelationInfoCache *>(arg);
    for (RelationInfoCache **p = &live_caches; *p; p = &(*p)->next)
        if (*p == cache) {
            *p = cache->next;
            break;
        }
    HASH_SEQ_STATUS status;
    hash_seq_init(&status, cache->hash);
    while (auto *entry = static_cast<RelationInfo *>(hash_seq_search(&status)))
        release_entry(entry);
}

Publication *lookup_publication(const char *name) {
    Publication *pub = GetPublicationByName(name, true);
    if (!pub)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT), errmsg("publication \"%s\" does not exist", name),
                        errdetail("kafka_sync publishes the tables of the publication named by the node."),
                        errhint("Create it with CREATE PUBLICATION %s FOR ALL TABLES (or FOR TABLE ...).",
                                quote_identifier(name))));
    return pub;
}

/*
 * The relation through which rel belongs to pub (rel itself or a partition
 * ancestor), InvalidOid if it does not. *via_table is set when membership
 * comes from a FOR TABLE entry, which is where row filters and column lists
 * live.
 */
Oid publication_member(Relation rel, Publication *pub, bool *via_table) {
    *via_table = false;
    if (pub->alltables)
        return RelationGetRelid(rel);
    List *chain = list_make1_oid(RelationGetRelid(rel));
    if (rel->rd_rel->relispartition)
        chain = list_concat(chain, get_partition_ancestors(RelationGetRelid(rel)));
    ListCell *lc;
    foreach (lc, chain) {
        Oid relid = lfirst_oid(lc);
        if (list_member_oid(GetRelationPublications(relid), pub->oid)) {
            *via_table = true;
            return relid;
        }
        if (list_member_oid(GetSchemaPublications(get_rel_namespace(relid)), pub->oid))
            return relid;
    }
    return InvalidOid;
}

/* Column list of a FOR TABLE entry (NULL = all columns); rejects row filters. */
Bitmapset *publication_columns(Oid member_relid, Relation rel, Publication *pub) {
    HeapTuple tup = SearchSysCache2(PUBLICATIONRELMAP, ObjectIdGetDatum(member_relid), ObjectIdGetDatum(pub->oid));
    if (!HeapTupleIsValid(tup))
        return nullptr;
    bool isnull;
    SysCacheGetAttr(PUBLICATIONRELMAP, tup, Anum_pg_publication_rel_prqual, &isnull);
    if (!isnull) {
        ReleaseSysCache(tup);
        ereport(ERROR,
                (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                 errmsg("publication \"%s\" has a row filter on table \"%s\"", pub->name, RelationGetRelationName(rel)),
                 errdetail("kafka_sync publishes whole tables; row filters are not supported."),
                 errhint("Remove the WHERE clause with ALTER PUBLICATION %s SET TABLE ..., or publish a view of the "
                         "rows through another table.",
                         quote_identifier(pub->name))));
    }
    Datum cols = SysCacheGetAttr(PUBLICATIONRELMAP, tup, Anum_pg_publication_rel_prattrs, &isnull);
    Bitmapset *result = isnull ? nullptr : pub_collist_to_bitmapset(nullptr, cols, CurrentMemoryContext);
    ReleaseSysCache(tup);
    return result;
}

/* Plain C description of the columns, turned into a TableEncoder under the guard. */
struct ColumnSpec {
    const char *name;
    const char *type_name;
    bool optional;
    bool is_key;
};

kafka_sync::TableEncoder *make_encoder(const RelationInfoCache *cache, const char *schema, const char *table,
                                       const ColumnSpec *cols, int ncols, bool has_key) {
    return kafka_sync::ks_guard([&]() {
        kafka_sync::TableDesc desc;
        desc.node = cache->settings.node_name;
        desc.db = cache->db;
        desc.schema = schema;
        desc.table = table;
        desc.has_key = has_key;
        for (int i = 0; i < ncols; i++)
            desc.columns.push_back({cols[i].name, cols[i].type_name, cols[i].optional, cols[i].is_key});
        kafka_sync::EncodeOptions opts;
        opts.include_schema = cache->settings.include_schema;
        opts.include_xids = cache->settings.include_xids;
        opts.include_lsn = cache->settings.include_lsn;
        opts.include_timestamps = cache->settings.include_timestamps;
        return new kafka_sync::TableEncoder(std::move(desc), opts);
    });
}

void build_entry(RelationInfoCache *cache, RelationInfo *entry, Relation rel) {
    release_entry(entry);
    entry->published = false;
    entry->pub_insert = entry->pub_update = entry->pub_delete = entry->pub_truncate = false;
    entry->txn_seen = 0;
    entry->txn_changes = 0;

    /* Our own bookkeeping tables are never published. */
    char *nspname = get_namespace_name(RelationGetNamespace(rel));
    if (strcmp(nspname, "kafka_sync") == 0 || !is_publishable_relation(rel)) {
        entry->valid = true;
        return;
    }

    Publication *pub = lookup_publication(cache->settings.publication);
    bool via_table;
    Oid member = publication_member(rel, pub, &via_table);
    if (!OidIsValid(member)) {
        entry->valid = true;
        return;
    }
    Bitmapset *columns = via_table ? publication_columns(member, rel, pub) : nullptr;

    Bitmapset *key_attrs = kafka_sync::identity_key_columns(rel);

    TupleDesc tupdesc = RelationGetDescr(rel);
    MemoryContext old = MemoryContextSwitchTo(cache->context);
    auto *attnums = static_cast<AttrNumber *>(palloc(sizeof(AttrNumber) * Max(tupdesc->natts, 1)));
    auto *is_key = static_cast<bool *>(palloc(sizeof(bool) * Max(tupdesc->natts, 1)));
    auto *out_funcs = static_cast<FmgrInfo *>(palloc0(sizeof(FmgrInfo) * Max(tupdesc->natts, 1)));
    MemoryContextSwitchTo(old);

    auto *specs = static_cast<ColumnSpec *>(palloc(sizeof(ColumnSpec) * Max(tupdesc->natts, 1)));
    int n = 0;
    bool has_key = false;
    for (int i = 0; i < tupdesc->natts; i++) {
        Form_pg_attribute att = TupleDescAttr(tupdesc, i);
        if (att->attisdropped || att->attgenerated)
            continue;
        if (columns && !bms_is_member(att->attnum, columns))
            continue;
        Oid typoutput;
        bool isvarlena;
        getTypeOutputInfo(att->atttypid, &typoutput, &isvarlena);
        fmgr_info_cxt(typoutput, &out_funcs[n], cache->context);
        attnums[n] = att->attnum;
        is_key[n] = bms_is_member(att->attnum - FirstLowInvalidHeapAttributeNumber, key_attrs);
        has_key |= is_key[n];
        specs[n].name = NameStr(att->attname);
        specs[n].type_name = format_type_with_typemod(att->atttypid, att->atttypmod);
        specs[n].optional = !att->attnotnull;
        specs[n].is_key = is_key[n];
        n++;
    }

    entry->encoder = make_encoder(cache, nspname, RelationGetRelationName(rel), specs, n, has_key);
    entry->attnums = attnums;
    entry->is_key = is_key;
    entry->out_funcs = out_funcs;
    entry->ncolumns = n;
    entry->has_key = has_key;
    entry->published = true;
    entry->pub_insert = pub->pubactions.pubinsert;
    entry->pub_update = pub->pubactions.pubupdate;
    entry->pub_delete = pub->pubactions.pubdelete;
    entry->pub_truncate = pub->pubactions.pubtruncate;
    entry->valid = true;
}

} // namespace

RelationInfoCache *relation_info_cache_create(const RelationInfoSettings *settings, MemoryContext parent) {
    if (!callbacks_registered) {
        CacheRegisterRelcacheCallback(invalidate_relation, (Datum)0);
        CacheRegisterSyscacheCallback(PUBLICATIONOID, invalidate_all, (Datum)0);
        CacheRegisterSyscacheCallback(PUBLICATIONRELMAP, invalidate_all, (Datum)0);
        CacheRegisterSyscacheCallback(PUBLICATIONNAMESPACEMAP, invalidate_all, (Datum)0);
        callbacks_registered = true;
    }
    MemoryContext context = AllocSetContextCreate(parent, "kafka_sync relation cache", ALLOCSET_DEFAULT_SIZES);
    auto *cache = static_cast<RelationInfoCache *>(MemoryContextAllocZero(context, sizeof(RelationInfoCache)));
    cache->context = context;
    cache->settings = *settings;
    cache->settings.node_name = MemoryContextStrdup(context, settings->node_name);
    cache->settings.publication = MemoryContextStrdup(context, settings->publication);
    HASHCTL ctl;
    memset(&ctl, 0, sizeof(ctl));
    ctl.keysize = sizeof(Oid);
    ctl.entrysize = sizeof(RelationInfo);
    ctl.hcxt = context;
    cache->hash = hash_create("kafka_sync relations", 128, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
    cache->on_free.func = cache_freed;
    cache->on_free.arg = cache;
    MemoryContextRegisterResetCallback(context, &cache->on_free);
    cache->next = live_caches;
    live_caches = cache;
    return cache;
}

void relation_info_cache_destroy(RelationInfoCache *cache) {
    if (cache)
        MemoryContextDelete(cache->context); /* cache_freed unlinks it */
}

RelationInfo *relation_info_get(RelationInfoCache *cache, Relation rel) {
    if (!cache->db) {
        char *db = get_database_name(MyDatabaseId);
        cache->db = MemoryContextStrdup(cache->context, db ? db : "");
    }
    Oid relid = RelationGetRelid(rel);
    bool found;
    auto *entry = static_cast<RelationInfo *>(hash_search(cache->hash, &relid, HASH_ENTER, &found));
    if (!found) {
        memset(reinterpret_cast<char *>(entry) + sizeof(Oid), 0, sizeof(RelationInfo) - sizeof(Oid));
        entry->relid = relid;
    }
    if (!entry->valid)
        build_entry(cache, entry, rel);
    return entry;
}

void relation_info_check_publication(const char *publication) {
    Publication *pub = lookup_publication(publication);
    if (pub->alltables)
        return;
    /* Row filters are rejected up front rather than at the first change. */
    List *relids = GetPublicationRelations(pub->oid, PUBLICATION_PART_ROOT);
    ListCell *lc;
    foreach (lc, relids) {
        /* An error here aborts the transaction, which releases the relation. */
        Relation rel = table_open(lfirst_oid(lc), AccessShareLock);
        publication_columns(RelationGetRelid(rel), rel, pub);
        table_close(rel, AccessShareLock);
    }
}
