// librdkafka properties that load code, run commands or change how the
// process handles signals: refused in kafka_config and in secrets files
// unless the server's operator allows them by name
// (kafka_sync.allowed_kafka_properties, a postgresql.conf setting). One list
// for the extension and the sidecar. Pure C++.
#pragma once

#include <string>

namespace kafka_sync {

// The risky property names, comma-separated, for messages and documentation.
const char *risky_kafka_properties();

// True when key is risky and not named in allowed (a comma-separated list of
// property names, as kafka_sync.allowed_kafka_properties holds it); error and
// hint then say why and what to do.
bool kafka_property_refused(const std::string &key, const std::string &allowed, std::string &error,
                            std::string &hint);

} // namespace kafka_sync
