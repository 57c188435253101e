// Groups the records of a peer's topic into source transactions and decides
// how they travel to apply_chunk: which records go together in one call, and
// where local transactions begin and end. Pure C++ (no libpq, no librdkafka):
// the runner feeds records in and executes the steps that come out.
//
// The promises it keeps (DESIGN.md, "Whole transactions"):
//  - a source transaction is applied in exactly one local transaction;
//  - small complete transactions share a local transaction (one round trip per
//    commit) while more records are immediately available, up to the limits;
//  - a large transaction is streamed in chunks inside one open local
//    transaction, so memory stays bounded by the limits, not by its size;
//  - an incomplete copy (a producer restarted mid-transaction; a complete copy
//    follows) is discarded, and rolled back if part of it was already sent;
//  - a duplicate (LSN not above one already in the open local transaction) is
//    never put into the same local transaction as its original: the extension
//    recognises duplicates by the *committed* origin progress only.
#pragma once

#include "record.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kafka_sync_sidecar {

struct AssemblerLimits {
    size_t max_records = 1000;   // per apply_chunk call, and per pipelined local transaction
    size_t max_bytes = 8u << 20; // idem, in bytes of keys + values + headers
};

// What the runner does next, in order. A Send opens the local transaction
// (BEGIN) when none is open.
struct ApplyStep {
    enum class Kind { Send, Commit, Rollback };
    Kind kind;
    std::vector<Record> records; // Send: one apply_chunk call, in offset order
    bool careful = false;        // Send: apply_chunk's careful flag
};

class TxnAssembler {
  public:
    explicit TxnAssembler(AssemblerLimits limits = AssemblerLimits()) : limits_(limits) {}

    // The next record of the partition, in offset order.
    void add(Record record);
    // No more records are immediately available: commit what is complete.
    void idle();
    // The runner stops: commit what is complete, roll back a transaction that
    // is being streamed, forget the rest (it is read again next time).
    void finish();
    // A boundary no source transaction crosses (a streamed transaction's
    // commit): an unfinished one is an incomplete copy (a producer restarted;
    // the complete copy follows): discard it, rolling back what was sent.
    void end_unfinished(const char *why) {
        if (current_.active)
            discard_current(why);
    }
    // The runner rolled back, lost its connection or re-positioned the
    // consumer: forget everything, including pending steps and careful mode.
    void reset();
    // After a failed local transaction: the source transactions starting at or
    // before last_offset are applied one per local transaction, careful=true.
    void apply_carefully_through(int64_t last_offset) { careful_through_ = last_offset; }

    bool careful() const { return careful_through_ >= 0; }
    int64_t careful_through() const { return careful_through_; }
    // Complete transactions wait in memory: idle() would send them.
    bool has_pending() const { return !pending_.empty(); }
    // Nothing waits, nothing is half read.
    bool empty() const { return pending_.empty() && !current_.active && steps_.empty(); }
    // Part of an unfinished source transaction is in the open local transaction.
    bool streaming() const { return current_.active && current_.streaming; }
    // The source transaction being streamed: its LSN and first offset.
    uint64_t streaming_lsn() const { return current_.lsn; }
    int64_t streaming_first_offset() const { return current_.first_offset; }

    std::vector<ApplyStep> take_steps();
    // Human-readable notes about the stream (discarded copies, odd counts) to log.
    std::vector<std::string> take_notes();

  private:
    // The source transaction being read (not yet complete).
    struct OpenGroup {
        bool active = false;
        uint64_t lsn = 0;
        int64_t first_offset = 0;
        int64_t count = 0;      // records so far, sent or not
        bool streaming = false; // some of it was sent: a local transaction is open
        bool careful = false;
        std::vector<Record> unsent;
        size_t unsent_bytes = 0;
    };

    bool careful_from(int64_t first_offset);
    // A record that is a complete transaction of its own (foreign, or a snapshot row).
    void add_alone(Record record);
    void open_group(Record record);
    void append(Record record);
    void complete_current();
    void stream_current();
    void discard_current(const char *why);
    void add_complete(std::vector<Record> records, size_t bytes, bool has_lsn, uint64_t lsn, bool careful);
    void flush_pending();
    void send(std::vector<Record> records, bool careful);
    void emit(ApplyStep::Kind kind);

    AssemblerLimits limits_;
    int64_t careful_through_ = -1;
    OpenGroup current_;
    // Complete source transactions waiting to share one local transaction.
    std::vector<Record> pending_;
    size_t pending_bytes_ = 0;
    bool pending_has_lsn_ = false;
    uint64_t pending_max_lsn_ = 0;
    std::vector<ApplyStep> steps_;
    std::vector<std::string> notes_;
};

} // namespace kafka_sync_sidecar
