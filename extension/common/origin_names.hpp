// Names of the replication origins that subscriptions apply under.
//
// Replication origins are server-wide, subscriptions are per database: the
// origin of the subscription to <peer> in the database with OID <db> is
// kafka_sync_<db>_<peer>, so two databases of one server that subscribe to
// the same peer keep their progress apart. kafka_sync._origin_name() in the
// install script builds the same name.
#pragma once

extern "C" {
#include "postgres.h"
}

namespace kafka_sync {

/* The origin this database applies <peer>'s records under (palloc'd). */
char *peer_origin_name(const char *peer);

/*
 * The peer node an origin of this database stands for, or nullptr when
 * roname is no kafka_sync origin of this database. Points into roname.
 */
const char *peer_of_origin_name(const char *roname);

} // namespace kafka_sync
