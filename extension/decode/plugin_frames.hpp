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

} // namespace kafka_sync
