// Conflict policy: what an incoming change does to the local state, as a pure
// function (no PostgreSQL headers; unit-tested over every case).
//
// The vocabulary follows pglogical's: a change meets the local row, a
// tombstone (the version of a delete made here, kept in
// kafka_sync.tombstones) or nothing. It is in conflict when the local state
// was last written by another node than the change's; the subscription's
// strategy then picks the winner, the same way on every node.
#pragma once

#include <cstdint>

namespace kafka_sync {

enum class ConflictStrategy { LastUpdateWins, FirstUpdateWins, ApplyRemote, KeepLocal, Error };

// The values of kafka_sync.conflicts.kind (a CHECK there lists the same names).
enum class ConflictKind : uint8_t {
    None,
    InsertExists,  // an insert meets a row written by another node
    InsertDeleted, // an insert (or snapshot row) meets another node's delete
    UpdateUpdate,  // an update meets a row written by another node
    UpdateMissing, // an update finds no row and no delete
    UpdateDeleted, // an update meets another node's delete
    DeleteUpdated, // a delete meets a row written by another node
    DeleteMissing, // a delete finds no row (the delete is remembered either way)
    Constraint,    // another unique or a foreign key constraint refused the change (not decide()'s: the apply's)
};
const char *conflict_kind_name(ConflictKind kind);

// A version: the commit time (microseconds, PostgreSQL's epoch) and node of
// the transaction that last wrote a row or a delete.
struct VersionRef {
    bool known = false;        // the commit time could be read
    bool current_xact = false; // written by the very local transaction applying
    int64_t ts = 0;
    const char *node = ""; // "" when unknown
};

// <0, 0, >0: a older than, same as, newer than b. Milliseconds (what records
// carry), then the node name: every node reaches the same verdict.
int compare_versions(const VersionRef &a, const VersionRef &b);

// The local state a change meets: the row (version known or not), the
// version of a delete made here, or neither.
enum class LocalState { Nothing, Row, Tombstone };

enum class ChangeOp {
    Insert,
    SnapshotRow, // a row of a peer's snapshot: an insert that never goes back in time
    Update,
    Delete,
};

enum class Action {
    Apply,  // write the change (insert, update, delete; an update that finds nothing inserts)
    Skip,   // leave the local state as it is
    Refuse, // strategy "error": the subscription pauses at the change
};

struct Decision {
    Action action;
    ConflictKind kind; // None: no conflict; else logged with resolution apply_remote (Apply) or keep_local (Skip)
    bool operator==(const Decision &o) const { return action == o.action && kind == o.kind; }
};

// The same node wrote the local state as the change (or the applying
// transaction itself did): no conflict.
bool same_origin(const VersionRef &local, const VersionRef &remote);

// Whether the change beats the local version under strategy; local_known
// false: nothing to compare with (only keep_local refuses the change).
// Strategy Error: Refuse.
Action resolve(ConflictStrategy strategy, const VersionRef &remote, const VersionRef *local);

// What a change does. local_version: of the row or tombstone (ignored for Nothing).
// A delete that meets nothing is Applied as "remember the delete" whatever
// the resolution (its kind and resolution are logged; the tombstone keeps
// the newer version).
Decision decide(ChangeOp op, LocalState local, const VersionRef &local_version, const VersionRef &remote,
                ConflictStrategy strategy);

} // namespace kafka_sync
