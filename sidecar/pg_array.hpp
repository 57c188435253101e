// PostgreSQL's binary array format (array_recv), for the int8[] and bytea[]
// parameters of apply_chunk: sending them binary avoids escaping every key,
// value and header into bytea's text form and back. Pure C++.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kafka_sync_sidecar {

constexpr uint32_t kInt8Oid = 20;
constexpr uint32_t kByteaOid = 17;
constexpr uint32_t kInt8ArrayOid = 1016;
constexpr uint32_t kByteaArrayOid = 1001;

// A one-dimensional int8[] (an empty array when values is empty).
std::string encode_int8_array(const std::vector<int64_t> &values);

// A one-dimensional bytea[]; a null pointer is a NULL element.
std::string encode_bytea_array(const std::vector<const std::string *> &values);

} // namespace kafka_sync_sidecar
