// Decoding of incoming Kafka records (see record_decoder.hpp).
#include "apply/record_decoder.hpp"

#include "encode/json_object_new.hpp"

#include <jansson.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace kafka_sync {

namespace {

constexpr size_t kMaxIdentifier = 63; // NAMEDATALEN - 1

bool valid_utf8(const char *s, size_t len) {
    // jansson validates strings it parses; header values are raw bytes.
    size_t i = 0;
    while (i < len) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        if (n == 0 || i + n > len || c == 0)
            return false;
        for (size_t k = 1; k < n; k++)
            if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2)
                return false;
        i += n;
    }
    return true;
}

std::string hex_of(const char *s, size_t len) {
    static const char digits[] = "0123456789abcdef";
    std::string out = "\\x";
    for (size_t i = 0; i < len; i++) {
        out.push_back(digits[static_cast<unsigned char>(s[i]) >> 4]);
        out.push_back(digits[static_cast<unsigned char>(s[i]) & 0xf]);
    }
    return out;
}

uint32_t read_u32(const unsigned char *p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

const char *string_field(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : nullptr;
}

} // namespace

RecordDecoder::~RecordDecoder() {
    if (root_)
        json_decref(root_);
}

bool RecordDecoder::read_row(json_t *obj, const char *which, std::vector<DecodedColumn> &out, std::string &error) {
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v) {
        if (strlen(name) == 0 || strlen(name) > kMaxIdentifier) {
            error = std::string("a column name in \"") + which + "\" is empty or longer than 63 bytes";
            return false;
        }
        if (json_is_null(v)) {
            out.push_back({name, nullptr});
        } else if (json_is_string(v)) {
            out.push_back({name, json_string_value(v)});
        } else {
            // A numeric/boolean/nested value from a foreign producer: use its
            // JSON text, which is what PostgreSQL's input functions accept.
            char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
            if (!text) {
                error = "out of memory";
                return false;
            }
            owned_.emplace_back(text);
            free(text);
            out.push_back({name, owned_.back().c_str()});
        }
    }
    return true;
}

bool RecordDecoder::decode_value(const char *data, size_t len, DecodedRecord &out, std::string &error) noexcept {
    try {
        json_error_t jerr;
        root_ = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root_) {
            error = std::string("the record value is not valid JSON: ") + jerr.text + " at byte " +
                    std::to_string(jerr.position);
            return false;
        }
        json_t *payload = root_;
        if (json_is_object(root_) && json_object_get(root_, "payload") && json_object_get(root_, "schema"))
            payload = json_object_get(root_, "payload");
        if (!json_is_object(payload)) {
            error = "the record value is not a change event (expected a JSON object)";
            return false;
        }
        const char *op = string_field(payload, "op");
        if (!op || strlen(op) != 1 || !strchr("cudrt", op[0])) {
            error = "the record value has no valid \"op\" (one of c, u, d, r, t)";
            return false;
        }
        out.op = op[0];
        json_t *source = json_object_get(payload, "source");
        if (!json_is_object(source)) {
            error = "the record value has no \"source\" object";
            return false;
        }
        out.schema = string_field(source, "schema");
        out.table = string_field(source, "table");
        if (!out.schema || !out.table || !*out.schema || !*out.table || strlen(out.schema) > kMaxIdentifier ||
            strlen(out.table) > kMaxIdentifier) {
            error = "the record's source has no valid \"schema\" and \"table\"";
            return false;
        }
        out.origin = string_field(source, "origin");
        if (!out.origin)
            out.origin = string_field(source, "name");
        // Snapshot rows carry their own version: when and where the row last changed.
        json_t *row_ts = json_object_get(source, "row_ts_ms");
        if (json_is_integer(row_ts)) {
            out.has_row_ts = true;
            out.row_ts_ms = json_integer_value(row_ts);
        }
        out.row_origin = string_field(source, "row_origin");
        if (out.row_origin && (!*out.row_origin || strlen(out.row_origin) > kMaxIdentifier))
            out.row_origin = nullptr;

        json_t *before = json_object_get(payload, "before");
        json_t *after = json_object_get(payload, "after");
        if (before && !json_is_null(before) && !json_is_object(before)) {
            error = "\"before\" is neither an object nor null";
            return false;
        }
        if (after && !json_is_null(after) && !json_is_object(after)) {
            error = "\"after\" is neither an object nor null";
            return false;
        }
        out.has_before = json_is_object(before);
        out.has_after = json_is_object(after);
        if (out.has_before && !read_row(before, "before", out.before, error))
            return false;
        if (out.has_after && !read_row(after, "after", out.after, error))
            return false;
        if ((out.op == 'c' || out.op == 'r' || out.op == 'u') && !out.has_after) {
            error = std::string("a \"") + out.op + "\" record needs an \"after\" row";
            return false;
        }
        if (out.op == 'd' && !out.has_before) {
            error = "a \"d\" record needs a \"before\" row";
            return false;
        }
        return true;
    } catch (const std::bad_alloc &) {
        error = "out of memory";
        return false;
    } catch (...) {
        error = "could not decode the record";
        return false;
    }
}

bool parse_lsn(const std::string &text, uint64_t &out) {
    const char *s = text.c_str();
    char *end;
    unsigned long hi = strtoul(s, &end, 16);
    if (end == s || *end != '/' || hi > 0xffffffffUL)
        return false;
    const char *lo_start = end + 1;
    unsigned long lo = strtoul(lo_start, &end, 16);
    if (end == lo_start || *end != '\0' || lo > 0xffffffffUL)
        return false;
    out = (uint64_t(hi) << 32) | uint64_t(lo);
    return true;
}

bool decode_headers(const char *data, size_t len, DecodedHeaders &out, std::string &error, bool with_json) noexcept {
    try {
        json_t *all = with_json ? json_object_new() : nullptr;
        if (with_json && !all) {
            error = "out of memory";
            return false;
        }
        const auto *p = reinterpret_cast<const unsigned char *>(data);
        size_t pos = 0;
        bool ok = true;
        while (pos < len) {
            if (len - pos < 4) {
                ok = false;
                break;
            }
            uint32_t nlen = read_u32(p + pos);
            pos += 4;
            if (nlen > len - pos || len - pos - nlen < 4) {
                ok = false;
                break;
            }
            std::string name(data + pos, nlen);
            pos += nlen;
            uint32_t vlen = read_u32(p + pos);
            pos += 4;
            bool is_null = vlen == 0xffffffffU;
            if (!is_null && vlen > len - pos) {
                ok = false;
                break;
            }
            std::string value = is_null ? std::string() : std::string(data + pos, vlen);
            pos += is_null ? 0 : vlen;

            if (all) {
                std::string key = valid_utf8(name.data(), name.size()) ? name : hex_of(name.data(), name.size());
                json_t *jv = is_null ? json_null()
                                     : json_stringn(valid_utf8(value.data(), value.size())
                                                        ? value.c_str()
                                                        : hex_of(value.data(), value.size()).c_str(),
                                                    valid_utf8(value.data(), value.size()) ? value.size()
                                                                                           : 2 + 2 * value.size());
                json_object_set_new(all, key.c_str(), jv);
            }

            if (is_null)
                continue;
            if (name == "kafka_sync.lsn")
                out.has_lsn = parse_lsn(value, out.lsn);
            else if (name == "kafka_sync.commit_ts") {
                char *end;
                long long ms = strtoll(value.c_str(), &end, 10);
                out.has_commit_ts = end != value.c_str() && *end == '\0';
                out.commit_ts_ms = ms;
            } else if (name == "kafka_sync.origin")
                out.origin = value;
            else if (name == "kafka_sync.txn_end")
                out.has_txn_end = true;
        }
        if (all) {
            char *text = json_dumps(all, JSON_COMPACT | JSON_PRESERVE_ORDER);
            json_decref(all);
            out.as_json = text ? text : "{}";
            free(text);
        }
        if (!ok)
            error = "the record's headers are malformed";
        return ok;
    } catch (...) {
        error = "could not decode the record's headers";
        return false;
    }
}

} // namespace kafka_sync
