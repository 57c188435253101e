// Records and their kafka_sync.* headers (see record.hpp).
#include "record.hpp"

namespace kafka_sync_sidecar {

std::string encode_headers(const std::vector<HeaderView> &headers) {
    size_t size = 0;
    for (const auto &h : headers)
        size += 8 + h.name.size() + (h.value ? h.size : 0);
    std::string out;
    out.reserve(size);
    for (const auto &h : headers)
        kafka_sync::wire::append_header(out, h.name, h.value, h.size);
    return out;
}

Record record_from_message(int64_t offset, const char *key, size_t key_len, const char *value, size_t value_len,
                           const std::vector<HeaderView> &headers, kafka_sync::ConnectSchemas *schemas) {
    Record r;
    r.offset = offset;
    if (key)
        r.key.emplace(key, key_len);
    if (value) {
        const std::optional<std::string_view> payload =
            schemas ? kafka_sync::connect_payload(std::string_view(value, value_len), *schemas) : std::nullopt;
        if (payload)
            r.value.emplace(*payload);
        else
            r.value.emplace(value, value_len);
    }
    r.headers = encode_headers(headers);

    kafka_sync::wire::HeaderFacts facts;
    for (const auto &h : headers)
        facts.note(h.name, h.value, h.size);
    r.has_lsn = facts.has_lsn;
    r.lsn = facts.lsn;
    r.seq = facts.seq;
    r.txn_end = facts.txn_end;
    r.txn_records = facts.txn_records;
    r.snapshot = facts.snapshot;
    r.stream = facts.stream;
    r.xid = facts.has_xid ? facts.xid : 0;
    r.subxid = facts.has_subxid ? facts.subxid : r.xid;
    r.has_commit_ts = facts.has_commit_ts;
    r.commit_ts_ms = facts.commit_ts_ms;
    return r;
}

void mark_committed(Record &record, uint64_t lsn, int64_t commit_ts_ms, int64_t seq, bool last) {
    namespace wire = kafka_sync::wire;
    const std::string lsn_text = wire::format_lsn(lsn);
    const std::string ts = std::to_string(commit_ts_ms);
    const std::string seq_text = std::to_string(seq);
    wire::append_header(record.headers, wire::kLsn, lsn_text.data(), lsn_text.size());
    wire::append_header(record.headers, wire::kCommitTs, ts.data(), ts.size());
    wire::append_header(record.headers, wire::kSeq, seq_text.data(), seq_text.size());
    if (last)
        wire::append_header(record.headers, wire::kTxnEnd, seq_text.data(), seq_text.size());
    record.has_lsn = true;
    record.lsn = lsn;
    record.seq = seq;
    record.txn_end = last;
    record.txn_records = last ? seq : 0;
    record.has_commit_ts = true;
    record.commit_ts_ms = commit_ts_ms;
}

Record make_record(int64_t offset, const char *key, size_t key_len, const char *value, size_t value_len,
                   const std::vector<KafkaHeader> &headers) {
    std::vector<HeaderView> views;
    views.reserve(headers.size());
    for (const auto &h : headers)
        views.push_back({h.name, h.value ? h.value->data() : nullptr, h.value ? h.value->size() : 0});
    return record_from_message(offset, key, key_len, value, value_len, views);
}

} // namespace kafka_sync_sidecar
