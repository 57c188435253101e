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
    return r;
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
