// A Kafka record as the sidecar carries it from the consumer to apply_chunk:
// key, value, the headers already encoded for apply_chunk, and the
// kafka_sync.* headers that decide how records group into source transactions.
// Pure C++: no librdkafka, no libpq.
#pragma once

#include "wire/json_scan.hpp"
#include "wire/wire.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kafka_sync_sidecar {

struct KafkaHeader {
    std::string name;
    std::optional<std::string> value; // nullopt: a header with a null value
};

// A header as librdkafka lends it (valid while its message is): no copies.
struct HeaderView {
    std::string_view name;
    const char *value = nullptr; // nullptr: a header with a null value
    size_t size = 0;
};

struct Record {
    int64_t offset = 0;
    std::optional<std::string> key; // nullopt: no key
    // nullopt: no value (tombstone). A Kafka Connect record whose schema
    // passed the check holds its payload alone (see record_from_message).
    std::optional<std::string> value;
    std::string headers; // every header, encoded by encode_headers()

    // From the kafka_sync.* headers; a record of foreign origin has none.
    bool has_lsn = false;
    uint64_t lsn = 0;
    int64_t seq = 0;         // 1-based position in the transaction, 0 when absent/invalid
    bool txn_end = false;    // last record of its transaction
    int64_t txn_records = 0; // the txn_end header's record count, 0 when invalid
    bool snapshot = false;   // a snapshot row (kafka_sync.snapshot): applied on its own, by version
    // kafka_sync.streaming: a record of an in-progress transaction, or its end
    // (see stream_tracker.hpp); xid and subxid 0 when absent or invalid.
    kafka_sync::wire::StreamEvent stream = kafka_sync::wire::StreamEvent::None;
    uint32_t xid = 0;
    uint32_t subxid = 0;
    int64_t commit_ts_ms = 0; // a stream's commit record: its commit time
    bool has_commit_ts = false;

    // Memory this record holds, for the chunk size limits.
    size_t bytes() const { return (key ? key->size() : 0) + (value ? value->size() : 0) + headers.size() + 64; }
};

// Builds a record; the grouping fields come from the kafka_sync.* headers,
// read as wire::HeaderFacts reads them (the extension reads them the same way).
// With schemas, a value {"schema": S, "payload": P} whose S passes the check
// the apply functions' reader applies keeps P alone (kafka_sync::connect_payload):
// apply reads nothing of S, and a default record is some six times its
// payload, bytes the sidecar would copy into every apply call and the
// backend out of it. Anything else is kept whole, for the apply side to judge.
Record record_from_message(int64_t offset, const char *key, size_t key_len, const char *value, size_t value_len,
                           const std::vector<HeaderView> &headers, kafka_sync::ConnectSchemas *schemas = nullptr);
// The same from owned headers (tests).
Record make_record(int64_t offset, const char *key, size_t key_len, const char *value, size_t value_len,
                   const std::vector<KafkaHeader> &headers);

// A record of a streamed transaction, made a record of that committed
// transaction: the commit record's lsn and commit time, position seq in it,
// and the txn_end header when last (HeaderFacts reads the last of a repeated
// header). The record keeps its kafka_sync.stream header.
void mark_committed(Record &record, uint64_t lsn, int64_t commit_ts_ms, int64_t seq, bool last);

// apply_chunk's header blob (wire.hpp).
std::string encode_headers(const std::vector<HeaderView> &headers);

// PostgreSQL's LSN text form "X/X" (wire.hpp).
using kafka_sync::wire::format_lsn;
using kafka_sync::wire::parse_lsn;

} // namespace kafka_sync_sidecar
