// See origin_names.hpp.
#include "common/origin_names.hpp"
#include "wire/wire.hpp"

extern "C" {
#include "miscadmin.h"
}

#include <cstdio>
#include <cstring>

namespace kafka_sync {

namespace {

/* "kafka_sync_<MyDatabaseId>_": the part every origin of this database starts with. */
int this_database_prefix(char *buf, size_t size) {
    return snprintf(buf, size, "%.*s%u_", int(wire::kOriginNamePrefix.size()), wire::kOriginNamePrefix.data(),
                    MyDatabaseId);
}

} // namespace

char *peer_origin_name(const char *peer) {
    char prefix[32];
    this_database_prefix(prefix, sizeof(prefix));
    return psprintf("%s%s", prefix, peer);
}

const char *peer_of_origin_name(const char *roname) {
    if (roname == nullptr)
        return nullptr;
    char prefix[32];
    int len = this_database_prefix(prefix, sizeof(prefix));
    if (strncmp(roname, prefix, len) != 0 || roname[len] == '\0')
        return nullptr;
    return roname + len;
}

} // namespace kafka_sync
