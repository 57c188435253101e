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
bool kafka_property_refused(const std::string &key, const std::string &allowed, std::string &error, std::string &hint);

// librdkafka runs its default kinit command, into which it pastes
// sasl.kerberos.principal and sasl.kerberos.keytab, through the shell. Unless
// the operator allows sasl.kerberos.kinit.cmd, kafka_sync sets this property
// last, which turns kinit off altogether (a ticket cache must then be there).
extern const char *const kNoKinitProperty; // "sasl.kerberos.min.time.before.relogin"
bool kinit_allowed(const std::string &allowed);

} // namespace kafka_sync
