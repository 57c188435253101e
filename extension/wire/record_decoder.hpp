// Decoding of incoming Kafka records (value JSON and headers) for the apply
// side. Pure C++ with jansson, no PostgreSQL headers, unit-tested.
//
// Input is whatever a peer topic holds, including hostile bytes: every
// failure is a returned error message, never an exception escaping (but a
// cancel, see set_interrupt_check), never a crash; a record beyond the limits
// below is refused at a cost linear in its size. The decoded strings point
// into the decoder's own storage, so the decoder must outlive their use (the
// apply side ties its lifetime to a PostgreSQL memory context).
#pragma once

#include "wire/json_scan.hpp"
#include "wire/wire.hpp"

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

typedef struct json_t json_t;

namespace kafka_sync {

// What a record value may be. Beyond these it is refused with a message that
// names the limit (a dead letter, or a pause, per the subscription's on_error),
// so a hostile peer topic costs at most a bounded, cancellable decode.
//
// Its size: twice the largest value the sidecar receives with its own
// defaults (receive.message.max.bytes, 128 MB), so nothing that arrives is
// refused, while the decoder's copy of a record stays bounded.
constexpr size_t kMaxRecordValueBytes = size_t(256) << 20;
// The other limits of a record: json_scan.hpp.

struct DecodedColumn {
    const char *name;
    const char *value; // nullptr: SQL NULL
};

struct DecodedRecord {
    char op = 0; // c u d r t
    const char *schema = nullptr;
    const char *table = nullptr;
    const char *origin = nullptr; // source.origin (or source.name)
    // "r" (snapshot) records: the row's own last change, when the source knew it
    bool has_row_ts = false;
    int64_t row_ts_ms = 0;
    const char *row_origin = nullptr;
    bool has_before = false;
    bool has_after = false;
    std::vector<DecodedColumn> before;
    std::vector<DecodedColumn> after;

    // Empty again, keeping the vectors' storage (one record after another).
    void reset() {
        op = 0;
        schema = table = origin = row_origin = nullptr;
        has_row_ts = has_before = has_after = false;
        row_ts_ms = 0;
        before.clear();
        after.clear();
    }
};

struct DecodedHeaders {
    bool has_lsn = false;
    uint64_t lsn = 0;
    bool has_commit_ts = false;
    int64_t commit_ts_ms = 0;
    bool has_txn_end = false;   // the last record of its source transaction
    bool stream = false;        // a kafka_sync.stream header: part of a streamed transaction
    bool stream_change = false; // and that header says "change" (a record of it, not its end)
    std::string origin;         // empty when absent
    std::string incarnation;    // kafka_sync.incarnation: the peer's system, timeline and node creation; empty: absent
    std::string as_json;        // every header, for dead letters

    void reset() {
        has_lsn = has_commit_ts = has_txn_end = stream = stream_change = false;
        lsn = 0;
        commit_ts_ms = 0;
        origin.clear();
        incarnation.clear();
        as_json.clear();
    }
};

class RecordDecoder {
  public:
    RecordDecoder() = default;
    ~RecordDecoder();
    RecordDecoder(const RecordDecoder &) = delete;
    RecordDecoder &operator=(const RecordDecoder &) = delete;

    // Decodes a change-event value (Debezium envelope, with or without the
    // Kafka Connect schema wrapper). Returns false with error set. One
    // decoder serves record after record: each call resets out and ends the
    // previous record's strings.
    // plain_first false: jansson alone (the tests compare both readers).
    // Throws nothing but what the interrupt check throws.
    bool decode_value(const char *data, size_t len, DecodedRecord &out, std::string &error, bool plain_first = true);

    // Called while a record decodes, about every 64 KB of it (never for a
    // small record), so that a long decode can be cancelled: the apply side
    // runs CHECK_FOR_INTERRUPTS there (through pg_call). What it throws
    // leaves decode_value as thrown, the record abandoned; a cancel never
    // becomes a bad record.
    using InterruptCheck = kafka_sync::InterruptCheck;
    void set_interrupt_check(InterruptCheck check) { interrupt_check_ = check; }

    // Whether the last record was read in place (not by jansson): for tests.
    bool read_in_place() const { return read_in_place_; }

  private:
    // The common case, a kafka_sync record of scalars (with or without the
    // Connect schema wrapper), parsed in place (no tree, no allocation per
    // value); false for anything else, which jansson then decodes (and
    // reports the error of).
    bool decode_plain(const char *data, size_t len, DecodedRecord &out);
    bool decode_tree(const char *data, size_t len, DecodedRecord &out, std::string &error);
    bool read_row(json_t *obj, const char *which, std::vector<DecodedColumn> &out, std::string &error);
    void reset(DecodedRecord &out);
    // A string for the text of a non-string JSON value, valid until the next record.
    std::string &owned();
    json_t *root_ = nullptr;
    std::deque<std::string> owned_; // texts of non-string JSON values (stable addresses), reused
    size_t owned_used_ = 0;
    std::vector<std::string_view> keys_; // the member names of the record's object, then of an inner one
    std::vector<std::string_view> inner_keys_;
    std::string text_;       // decode_plain's copy of the value, strings unescaped in place
    ConnectSchemas schemas_; // Connect schemas that passed the plain reader's check
    bool read_in_place_ = false;
    InterruptCheck interrupt_check_ = nullptr;
};

// Headers as the sidecar passes them: repeated (u32 BE name length, name,
// u32 BE value length or 0xFFFFFFFF for null, value).
// with_json: also fill as_json (for dead letters; costs a JSON document per record).
bool decode_headers(const char *data, size_t len, DecodedHeaders &out, std::string &error,
                    bool with_json = false) noexcept;

// The wire's number and LSN forms (wire.hpp).
using wire::parse_int64;
using wire::parse_lsn;

} // namespace kafka_sync
