// Changes from a peer run as the owner of the table they write, as
// PostgreSQL 16's apply worker does with run_as_owner = false: triggers,
// defaults, check constraints and index expressions of the table run with
// its owner's rights, never with the sidecar's. When the owner could not
// become the sidecar's role itself, they run as a security-restricted
// operation, and setting changes they make are undone.
#pragma once

extern "C" {
#include "postgres.h"
}

struct OwnerContext {
    Oid save_userid;
    int save_sec_context;
    int save_nestlevel; /* -1: no GUC nest level */
};

/* Becomes owner (ERROR when the current role may not); restore_user undoes it. */
void switch_to_owner(Oid owner, const char *table, OwnerContext *ctx);
void restore_user(const OwnerContext *ctx);

/* The owner of a table. */
Oid table_owner(Oid relid);
