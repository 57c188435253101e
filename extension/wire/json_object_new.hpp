// A new, empty jansson object, without naming json_object().
//
// Inside the backend, a call to json_object() from this library binds, by the
// dynamic linker's rules, to the first definition in the global scope: the
// PostgreSQL executable's own json_object (the SQL function), not jansson's.
// jansson's functions bind their internal calls directly, so asking json_pack
// for "{}" yields a genuine jansson object. The Makefile fails the build if
// kafka_sync.so ever references json_object again.
#pragma once

#include <jansson.h>

namespace kafka_sync {

inline json_t *json_object_new() {
    return json_pack("{}");
}

} // namespace kafka_sync
