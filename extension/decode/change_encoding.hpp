// Heap tuples in, Kafka key and value bytes out.
//
// Shared by the output plugin (changes from WAL) and the initial snapshot
// (rows read from the tables), so both produce byte-identical records.
#pragma once

#include "decode/relation_info.hpp"

#include <string>

extern "C" {
#include "access/htup.h"
}

/* Source metadata of the transaction a change belongs to. */
struct ChangeSource {
    int64 commit_ts_ms;
    uint32 xid;
    uint64 commit_lsn;
    const char *snapshot; /* "false", "true" or "last" */
    uint64 txn_seq;       /* distinct per transaction within a session, never 0 */
};

/*
 * The version of a row read from a table (snapshot records only): commit time
 * and node of its last change, for receivers that resolve conflicts by last
 * update. Changes decoded from WAL need none: their transaction is the version.
 */
struct SnapshotRowVersion {
    bool has_ts;
    int64 ts_ms;
    const char *origin; /* NULL: unknown, left out of the record */
};

/* Output buffers, owned (new/delete) by the session that encodes. */
struct EncodedRecord {
    std::string key;
    std::string value;
    bool has_key = false;
};

/*
 * Encode one change. op is 'c', 'u', 'd' or 'r'. oldtuple/newtuple may be
 * NULL as the operation allows. total_order counts records of the source
 * transaction (1-based). version (may be NULL) is the row's own version,
 * for op 'r'. Works in CurrentMemoryContext, which the caller resets after
 * each change.
 */
void encode_row_change(RelationInfo *info, Relation rel, char op, HeapTuple oldtuple, HeapTuple newtuple,
                       const ChangeSource *source, uint64 total_order, EncodedRecord *out,
                       const SnapshotRowVersion *version = nullptr);

/* Encode a TRUNCATE of rel (no key, no row images). */
void encode_truncate(RelationInfo *info, const ChangeSource *source, uint64 total_order, EncodedRecord *out);
