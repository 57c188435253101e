// Refuses DROP EXTENSION kafka_sync while the database is a node or has
// subscriptions (see drop_guard.cpp).
#pragma once

/* Installs the ProcessUtility hook; called once from _PG_init. */
void drop_guard_install();
