// Wakes a node's producer worker at every commit in its database (commit_wake.cpp).
#pragma once

namespace kafka_sync {

/* Called once per backend (_PG_init, when preloaded). */
void commit_wake_install();

} // namespace kafka_sync
