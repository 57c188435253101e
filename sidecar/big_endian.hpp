// Appending big-endian integers: PostgreSQL's binary formats and the header
// encoding apply_chunk reads are both in network byte order.
#pragma once

#include <cstdint>
#include <string>

namespace kafka_sync_sidecar {

inline void put_u32(std::string &out, uint32_t v) {
    const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                       static_cast<char>(v)};
    out.append(b, 4);
}

inline void put_u64(std::string &out, uint64_t v) {
    put_u32(out, static_cast<uint32_t>(v >> 32));
    put_u32(out, static_cast<uint32_t>(v));
}

} // namespace kafka_sync_sidecar
