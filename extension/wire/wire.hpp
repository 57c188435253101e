// The wire contract between a node's producer and its subscribers, in one
// place (extension/wire/, pure C++: no PostgreSQL, librdkafka or libpq
// headers): here the names of the kafka_sync.* record headers, the LSN text
// form, the header blob the sidecar hands to the apply functions, and what a
// record's headers say; beside it the record value's encoder
// (record_encoder, change_event) and decoder (record_decoder). This part is
// compiled into the extension and into the sidecar, so that both read every
// record's headers, hostile ones included, the same way
// (test/unit/wire_tests.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kafka_sync::wire {

// Header names (DESIGN.md, "Wire format").
inline constexpr std::string_view kOrigin = "kafka_sync.origin";           // the node that made the change
inline constexpr std::string_view kIncarnation = "kafka_sync.incarnation"; // <system id>/<timeline>/<created_at us>
inline constexpr std::string_view kLsn = "kafka_sync.lsn";                 // the source transaction's commit LSN, "X/X"
inline constexpr std::string_view kXid = "kafka_sync.xid";
inline constexpr std::string_view kCommitTs = "kafka_sync.commit_ts"; // unix milliseconds
inline constexpr std::string_view kSeq = "kafka_sync.seq";            // 1-based position in the transaction
inline constexpr std::string_view kTxnEnd = "kafka_sync.txn_end";     // on the last record: the record count
inline constexpr std::string_view kSnapshot = "kafka_sync.snapshot";  // a row of a node's snapshot
// A node with kafka_sync.streaming: a record of a transaction still in
// progress ("change"), or that transaction's end ("commit", "abort"): see
// StreamEvent. Such records have no kLsn, kCommitTs or kTxnEnd of their
// own; the commit record carries them for the whole transaction.
inline constexpr std::string_view kStream = "kafka_sync.stream";
inline constexpr std::string_view kSubxid = "kafka_sync.subxid"; // the change's (sub)transaction; what aborted

// An incarnation longer than this is no incarnation (a hostile header).
inline constexpr size_t kMaxIncarnationBytes = 128;

// The prefix of the replication origins subscriptions apply under:
// kafka_sync_<database oid>_<peer> (extension/common/origin_names.cpp).
inline constexpr std::string_view kOriginNamePrefix = "kafka_sync_";

// PostgreSQL's LSN text form: two groups of 1 to 8 hex digits, "16/B374D848".
// Nothing else is accepted (no blanks, signs or "0x").
bool parse_lsn(std::string_view text, uint64_t &lsn);
std::string format_lsn(uint64_t lsn);

// A positive decimal count without sign, blanks or trailing text (seq, txn_end).
bool parse_count(std::string_view text, int64_t &out);
// An optional '-' and 1 to 18 digits (commit_ts).
bool parse_int64(std::string_view text, int64_t &out);

// The header blob: per header, uint32 big-endian name length, name, uint32
// big-endian value length or kNullValue for a null value, value.
inline constexpr uint32_t kNullValue = 0xFFFFFFFFu;
void append_header(std::string &blob, std::string_view name, const char *value, size_t size); // value nullptr: null

// Reads a blob header by header. next() is false at the end, and also when
// the blob is malformed (malformed() then says so); nothing is read past len.
class HeaderReader {
  public:
    HeaderReader(const char *data, size_t len) : data_(data), len_(len) {}
    bool next(std::string_view &name, const char *&value, size_t &size);
    bool malformed() const { return malformed_; }

  private:
    const char *data_;
    size_t len_;
    size_t pos_ = 0;
    bool malformed_ = false;
};

// What a record's headers say. Each header is noted in order; where a name
// repeats, the last one counts, a null value included. A txn_end header
// ends the transaction whatever its value (waiting for more records of a
// transaction whose end is unreadable would wait for ever); its count is
// known only when it is a valid count.
enum class StreamEvent : uint8_t {
    None,   // a committed transaction's record (no kafka_sync.stream header)
    Change, // a record of an in-progress transaction: xid, seq, subxid
    Commit, // that transaction committed: xid, lsn, commit_ts, txn_end = its records streamed
    Abort,  // it aborted (subxid == xid), or its subtransaction subxid did
    Reset,  // the producer started decoding again: what was open is streamed again, or never ends
    Invalid // a kafka_sync.stream header of another value
};

struct HeaderFacts {
    bool has_lsn = false;
    uint64_t lsn = 0;
    int64_t seq = 0; // 0: absent or invalid
    bool txn_end = false;
    int64_t txn_records = 0; // 0: absent or invalid
    bool snapshot = false;
    bool has_commit_ts = false;
    int64_t commit_ts_ms = 0;
    std::string_view origin;      // empty: absent or null; points into the header's value
    std::string_view incarnation; // the same
    StreamEvent stream = StreamEvent::None;
    bool has_xid = false; // kafka_sync.xid, a valid transaction id
    uint32_t xid = 0;
    bool has_subxid = false;
    uint32_t subxid = 0;

    // value nullptr: a header with a null value.
    void note(std::string_view name, const char *value, size_t size);
};

} // namespace kafka_sync::wire
