// Records and their kafka_sync.* headers (see record.hpp).
#include "record.hpp"

#include "big_endian.hpp"

#include <cstdio>
#include <cstdlib>

namespace kafka_sync_sidecar {

namespace {

bool parse_hex32(std::string_view s, uint32_t &out) {
    if (s.empty() || s.size() > 8)
        return false;
    uint32_t v = 0;
    for (char c : s) {
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return false;
        v = v << 4 | static_cast<uint32_t>(d);
    }
    out = v;
    return true;
}

// A positive decimal integer without sign, blanks or trailing text.
bool parse_count(std::string_view s, int64_t &out) {
    if (s.empty() || s.size() > 18)
        return false;
    int64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    if (v <= 0)
        return false;
    out = v;
    return true;
}

} // namespace

bool parse_lsn(std::string_view text, uint64_t &lsn) {
    size_t slash = text.find('/');
    if (slash == std::string::npos)
        return false;
    uint32_t hi, lo;
    if (!parse_hex32(text.substr(0, slash), hi) || !parse_hex32(text.substr(slash + 1), lo))
        return false;
    lsn = static_cast<uint64_t>(hi) << 32 | lo;
    return true;
}

std::string format_lsn(uint64_t lsn) {
    char buf[32];
    snprintf(buf, sizeof buf, "%X/%X", static_cast<unsigned>(lsn >> 32), static_cast<unsigned>(lsn));
    return buf;
}

std::string encode_headers(const std::vector<HeaderView> &headers) {
    size_t size = 0;
    for (const auto &h : headers)
        size += 8 + h.name.size() + (h.value ? h.size : 0);
    std::string out;
    out.reserve(size);
    for (const auto &h : headers) {
        put_u32(out, static_cast<uint32_t>(h.name.size()));
        out += h.name;
        if (h.value) {
            put_u32(out, static_cast<uint32_t>(h.size));
            out.append(h.value, h.size);
        } else {
            put_u32(out, 0xFFFFFFFFu);
        }
    }
    return out;
}

Record record_from_message(int64_t offset, const char *key, size_t key_len, const char *value, size_t value_len,
                           const std::vector<HeaderView> &headers) {
    Record r;
    r.offset = offset;
    if (key)
        r.key.emplace(key, key_len);
    if (value)
        r.value.emplace(value, value_len);
    r.headers = encode_headers(headers);

    const HeaderView *lsn = nullptr, *seq = nullptr, *end = nullptr;
    for (const auto &h : headers) {
        if (h.name == "kafka_sync.lsn")
            lsn = &h;
        else if (h.name == "kafka_sync.seq")
            seq = &h;
        else if (h.name == "kafka_sync.txn_end")
            end = &h;
        else if (h.name == "kafka_sync.snapshot")
            r.snapshot = true;
    }
    auto text = [](const HeaderView *h) { return std::string_view(h->value, h->size); };
    r.has_lsn = lsn && lsn->value && parse_lsn(text(lsn), r.lsn);
    if (!r.has_lsn)
        r.lsn = 0;
    if (!(seq && seq->value && parse_count(text(seq), r.seq)))
        r.seq = 0;
    // The header marks the end even when its count is unreadable: waiting for
    // more records of this transaction would wait for ever.
    r.txn_end = end != nullptr;
    if (!(end && end->value && parse_count(text(end), r.txn_records)))
        r.txn_records = 0;
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
