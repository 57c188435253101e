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

/*
 * Becomes owner (ERROR when the role that called the apply function may not);
 * restore_user undoes it. The apply functions run their own bookkeeping as
 * their owner (SECURITY DEFINER), so the check is made for the role that
 * called them (the sidecar's), as SET ROLE would.
 */
void switch_to_owner(Oid owner, const char *table, OwnerContext *ctx);
void restore_user(const OwnerContext *ctx);

/*
 * Becomes the owner of function fn_oid, as SECURITY DEFINER does (with
 * search_path pinned to pg_catalog, pg_temp), and notes the caller as the
 * role switch_to_owner checks. apply_chunk and apply_transactions (which
 * commits, so it could not be SECURITY DEFINER) use it. Call restore_user
 * before each commit and this again after it: an error then restores the
 * caller with the transaction's abort, which resets the user (and the
 * settings) to what its transaction started with.
 */
void become_function_owner(Oid fn_oid, OwnerContext *ctx);

/* The owner of a table. */
Oid table_owner(Oid relid);
