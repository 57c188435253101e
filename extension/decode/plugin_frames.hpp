// How the output plugin talks to the producer worker in the same process.
//
// With the option framing 'kafka' the plugin writes one small binary frame
// per begin, record and commit instead of user-facing JSON text, so the
// worker gets key, value and transaction boundaries without parsing JSON
// back. Frames never leave the process: plain structs, native byte order.
#pragma once

#include <cstdint>

namespace kafka_sync {

enum FrameKind : char {
    kFrameBegin = 'B',
    kFrameRecord = 'R',
    kFrameCommit = 'E',
    // option streaming: a block of an in-progress transaction's records
    // (start, records, stop), its abort or a subtransaction's, its commit
    kFrameStreamStart = 'S',
    kFrameStreamRecord = 'r',
    kFrameStreamStop = 's',
    kFrameStreamAbort = 'A',
    kFrameStreamCommit = 'C',
};

inline constexpr uint32_t kFrameNull = UINT32_MAX; // absent key or value (tombstone)

struct BeginFrame {
    uint64_t commit_lsn;  // end LSN of the commit record: what the slot confirms
    int64_t commit_ts_ms; // commit time, ms since the Unix epoch
    uint32_t xid;
};

// Followed by key_len bytes of key, then value_len bytes of value.
struct RecordFrame {
    uint32_t key_len;
    uint32_t value_len;
};

struct CommitFrame {
    uint64_t commit_lsn;
    uint64_t nrecords; // records written for this transaction
};

// Opens a block of records of in-progress transaction xid (its top level).
struct StreamStartFrame {
    uint32_t xid;
};

// A record of the open block's transaction: the subtransaction the change
// belongs to (the top-level xid for its own), then a RecordFrame with its key
// and value.
struct StreamRecordFrame {
    uint32_t subxid;
};

// subxid == xid: the whole transaction aborted; otherwise that
// subtransaction (and those begun after it) did.
struct StreamAbortFrame {
    uint32_t xid;
    uint32_t subxid;
};

struct StreamCommitFrame {
    uint64_t commit_lsn; // end LSN of the commit record, as BeginFrame's
    int64_t commit_ts_ms;
    uint32_t xid;
};

} // namespace kafka_sync
