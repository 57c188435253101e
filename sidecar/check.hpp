// --check: one look at the database, for deployment scripts.
#pragma once

#include <string>

namespace kafka_sync_sidecar {

// Prints the node's status and the enabled subscriptions (never kafka_config).
// 0 when the database is a node or has subscriptions to apply, else 1.
int run_check(const std::string &dsn);

} // namespace kafka_sync_sidecar
