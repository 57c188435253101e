// See kafka_properties.hpp.
#include "common/kafka_properties.hpp"

#include <cstring>

namespace kafka_sync {

namespace {

// What each one does, from librdkafka's CONFIGURATION.md (2.0).
const char *const kRisky[] = {
    "plugin.library.paths",        // dlopen()s libraries, already when the property is set
    "ssl.engine.location",         // loads an OpenSSL engine
    "ssl.engine.id",               // selects (and initialises) an OpenSSL engine
    "ssl.providers",               // loads OpenSSL 3 providers
    "sasl.kerberos.kinit.cmd",     // a shell command, run periodically
    "internal.termination.signal", // replaces the handling of a signal in the whole process
};

bool listed(const std::string &key, const std::string &list) {
    size_t pos = 0;
    while (pos <= list.size()) {
        size_t end = list.find(',', pos);
        if (end == std::string::npos)
            end = list.size();
        size_t b = pos, e = end;
        while (b < e && (list[b] == ' ' || list[b] == '\t'))
            b++;
        while (e > b && (list[e - 1] == ' ' || list[e - 1] == '\t'))
            e--;
        if (list.compare(b, e - b, key) == 0 && e > b)
            return true;
        pos = end + 1;
    }
    return false;
}

} // namespace

const char *const kNoKinitProperty = "sasl.kerberos.min.time.before.relogin";

bool kinit_allowed(const std::string &allowed) {
    return listed("sasl.kerberos.kinit.cmd", allowed);
}

const char *risky_kafka_properties() {
    return "plugin.library.paths, ssl.engine.location, ssl.engine.id, ssl.providers, sasl.kerberos.kinit.cmd, "
           "internal.termination.signal";
}

bool kafka_property_refused(const std::string &key, const std::string &allowed, std::string &error, std::string &hint) {
    bool risky = false;
    for (const char *r : kRisky)
        if (key == r)
            risky = true;
    if (!risky || listed(key, allowed))
        return false;
    error = "the Kafka property \"" + key + "\" loads code, runs a command or changes signal handling in the " +
            "process that uses it, and is not allowed on this server";
    hint = "A superuser can allow it by name in postgresql.conf: kafka_sync.allowed_kafka_properties = '" + key +
           "' (then reload the configuration).";
    return true;
}

} // namespace kafka_sync
