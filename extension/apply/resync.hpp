// Resynchronising a subscription from its peer's snapshot after a gap in the
// peer's topic (see resync.cpp).
#pragma once

extern "C" {
#include "postgres.h"

#include "access/xlogdefs.h"
}

/* Notes the key of a row of the snapshot the subscription resynchronises from. */
void resync_note_key(const char *sub_name, Oid relid, bytea *key);

/* A record during the resynchronisation was not applied (a dead letter, or skipped): nothing is deleted at its end. */
void resync_mark_incomplete(const char *sub_name);

/*
 * The snapshot's last record is applied: deletes the rows the peer wrote
 * last that the snapshot did not have, and ends the resynchronisation.
 * Runs in the local transaction that completes the snapshot; returns the
 * number of rows deleted.
 */
uint64 resync_finish(const char *sub_name, const char *peer, XLogRecPtr snapshot_lsn);
