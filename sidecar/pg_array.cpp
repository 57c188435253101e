// Binary array encoding (see pg_array.hpp). The layout array_recv reads, all
// integers big-endian: int32 ndim, int32 has-nulls flag, uint32 element type,
// per dimension int32 length + int32 lower bound, then per element an int32
// length (-1: NULL) and the element's binary form.
#include "pg_array.hpp"

#include "big_endian.hpp"

namespace kafka_sync_sidecar {

namespace {

void put_header(std::string &out, size_t count, bool has_nulls, uint32_t element_type) {
    // An empty array has no dimensions at all (ndim 0), as array_send writes it.
    put_u32(out, count == 0 ? 0 : 1);
    put_u32(out, has_nulls ? 1 : 0);
    put_u32(out, element_type);
    if (count > 0) {
        put_u32(out, static_cast<uint32_t>(count));
        put_u32(out, 1); // lower bound
    }
}

} // namespace

std::string encode_int8_array(const std::vector<int64_t> &values) {
    std::string out;
    out.reserve(20 + values.size() * 12);
    put_header(out, values.size(), false, kInt8Oid);
    for (int64_t v : values) {
        put_u32(out, 8);
        put_u64(out, static_cast<uint64_t>(v));
    }
    return out;
}

std::string encode_bytea_array(const std::vector<const std::string *> &values) {
    size_t size = 20;
    bool has_nulls = false;
    for (const std::string *v : values) {
        size += 4 + (v ? v->size() : 0);
        has_nulls = has_nulls || !v;
    }
    std::string out;
    out.reserve(size);
    put_header(out, values.size(), has_nulls, kByteaOid);
    for (const std::string *v : values) {
        if (!v) {
            put_u32(out, 0xFFFFFFFFu);
            continue;
        }
        put_u32(out, static_cast<uint32_t>(v->size()));
        out += *v;
    }
    return out;
}

} // namespace kafka_sync_sidecar
