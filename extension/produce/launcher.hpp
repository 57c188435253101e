// The launcher and the per-database producer worker entry points.
#pragma once

extern "C" {
#include "postgres.h"

PGDLLEXPORT void kafka_sync_launcher_main(Datum main_arg);
PGDLLEXPORT void kafka_sync_node_worker_main(Datum main_arg);
}

extern bool kafka_sync_preloaded;
