// The streamed transactions of a peer's topic (a node with
// kafka_sync.streaming): which are open, where each began, which of their
// records an aborted subtransaction took back. Pure C++ (no libpq, no
// librdkafka): the runner feeds it the records marked kafka_sync.stream, in
// offset order, and acts on what comes out.
//
// A streamed transaction's records are kept in memory as they come, up to a
// budget; when its commit record arrives they are applied as one committed
// transaction, with the commit record's LSN and time (mark_committed). One
// that outgrew the budget is read again from Kafka from its first record
// instead (a replay). Until then the subscription's stored offset
// is held at the first record of the oldest open one (hold()), so that a
// restart reads it again from its start; what was committed in between is
// skipped by its LSN as any record applied before.
#pragma once

#include "record.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kafka_sync_sidecar {

// What a replay applies: the records of transaction xid from first_offset up
// to its commit record at commit_offset, except those in discarded.
struct StreamReplay {
    uint32_t xid = 0;
    int64_t first_offset = 0;
    int64_t commit_offset = 0;
    uint64_t lsn = 0;
    int64_t commit_ts_ms = 0;
    // [from, to): what aborted subtransactions took back; disjoint, in order
    std::vector<std::pair<int64_t, int64_t>> discarded;
    // kept: every record it applies is in records (nothing to read again)
    bool kept = false;
    std::vector<Record> records;

    // The record at offset, of this transaction, is applied.
    bool applies(const Record &record) const;
};

class StreamTracker {
  public:
    // Bounds for a hostile topic: more open transactions are not followed,
    // and a transaction with more subtransactions is not applied (both with
    // a warning). PostgreSQL's own limit is far above: 2^32 subtransactions.
    static constexpr size_t kMaxOpen = 10000;
    static constexpr size_t kMaxSubtransactions = 1000000;
    // Records of open transactions kept in memory, in Record::bytes(), over
    // all of them; past it the largest is read again from Kafka at its commit.
    static constexpr size_t kDefaultKeepBytes = 64u << 20;

    explicit StreamTracker(size_t keep_bytes = kDefaultKeepBytes) : keep_limit_(keep_bytes) {}

    struct Outcome {
        enum class Kind {
            Wait,    // noted; the record waits in Kafka for its transaction's commit
            Replay,  // a commit: apply replay, then go on after its commit record
            Skip,    // nothing to apply (see note)
            Foreign, // not a readable stream record: apply it as it is (it is refused there, and kept)
        };
        Kind kind = Kind::Wait;
        StreamReplay replay;
        std::string note; // to log as a warning, when not empty
    };

    // The next record marked kafka_sync.stream, in offset order (a reset:
    // forget every open transaction); one at or
    // below what was seen of its transaction is a record read again (after a
    // replay or a retry) and changes nothing. applied_lsn: the commit LSN of
    // the last transaction applied before this run (the subscription's
    // last_applied_lsn), to tell a transaction applied before a restart from
    // one whose start this run never saw.
    // A change it keeps is moved out of record (Wait); any other record is
    // left as it is.
    Outcome add(Record &record, uint64_t applied_lsn);
    // The replay of xid was handed over: forget it.
    void finished(uint32_t xid) { forget(xid); }
    void reset() {
        open_.clear();
        kept_bytes_ = 0;
    }
    // An ordinary (committed) transaction of xid: a copy streamed before a
    // producer restart is not going to end; forget it.
    void committed_whole(uint32_t xid) { forget(xid); }
    size_t kept_bytes() const { return kept_bytes_; }
    // xid's records are applied as they come (the runner's eager path):
    // stop keeping them, and hand over what was kept.
    std::vector<Record> stop_keeping(uint32_t xid);

    // The first offset of the oldest open transaction; -1 when none is open.
    int64_t hold() const;
    size_t open() const { return open_.size(); }

  private:
    struct Open {
        int64_t first_offset = 0;
        int64_t last_offset = 0;
        int64_t records = 0;     // seen, including those an aborted subtransaction took back
        bool from_start = false; // its first record (seq 1) was read
        bool too_many = false;   // more than kMaxSubtransactions: not applied
        // Subtransactions in the order their first record came: (subxid,
        // offset), and where each is in that list.
        std::vector<std::pair<uint32_t, int64_t>> subxacts;
        std::unordered_map<uint32_t, size_t> subxact_index;
        std::vector<std::pair<int64_t, int64_t>> discarded; // as StreamReplay's
        bool keeping = true;                                // every record it applies is in kept
        std::vector<Record> kept;
        size_t kept_bytes = 0;
    };

    void forget(uint32_t xid);
    void drop_kept(Open &o);
    void keep(Open &o, Record &record);

    std::unordered_map<uint32_t, Open> open_;
    size_t keep_limit_;
    size_t kept_bytes_ = 0;
};

} // namespace kafka_sync_sidecar
