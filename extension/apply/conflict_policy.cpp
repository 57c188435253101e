// See conflict_policy.hpp.
#include "apply/conflict_policy.hpp"

#include <climits>
#include <cstring>

namespace kafka_sync {

const char *conflict_kind_name(ConflictKind kind) {
    switch (kind) {
    case ConflictKind::None: return "none";
    case ConflictKind::InsertExists: return "insert_exists";
    case ConflictKind::InsertDeleted: return "insert_deleted";
    case ConflictKind::UpdateUpdate: return "update_update";
    case ConflictKind::UpdateMissing: return "update_missing";
    case ConflictKind::UpdateDeleted: return "update_deleted";
    case ConflictKind::DeleteUpdated: return "delete_updated";
    case ConflictKind::DeleteMissing: return "delete_missing";
    case ConflictKind::Constraint: return "constraint";
    }
    return "unknown";
}

int compare_versions(const VersionRef &a, const VersionRef &b) {
    /*
     * Milliseconds, the precision records carry: a local write keeps its
     * microseconds here, the same write applied on a peer does not. Every
     * node must reach the same verdict, so both are compared truncated.
     */
    auto ms = [](const VersionRef &v) -> int64_t {
        if (!v.known)
            return INT64_MIN;
        return v.ts >= 0 ? v.ts / 1000 : -((-v.ts + 999) / 1000);
    };
    const int64_t ta = ms(a);
    const int64_t tb = ms(b);
    if (ta != tb)
        return ta < tb ? -1 : 1;
    const int c = strcmp(a.node ? a.node : "", b.node ? b.node : "");
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
}

bool same_origin(const VersionRef &local, const VersionRef &remote) {
    return local.current_xact ||
           (local.node && local.node[0] != '\0' && remote.node && strcmp(local.node, remote.node) == 0);
}

Action resolve(ConflictStrategy strategy, const VersionRef &remote, const VersionRef *local) {
    if (strategy == ConflictStrategy::Error)
        return Action::Refuse;
    if (!local)
        return strategy == ConflictStrategy::KeepLocal ? Action::Skip : Action::Apply;
    bool wins = false;
    switch (strategy) {
    case ConflictStrategy::LastUpdateWins: wins = compare_versions(remote, *local) > 0; break;
    case ConflictStrategy::FirstUpdateWins: wins = compare_versions(remote, *local) < 0; break;
    case ConflictStrategy::ApplyRemote: wins = true; break;
    case ConflictStrategy::KeepLocal:
    case ConflictStrategy::Error: wins = false; break;
    }
    return wins ? Action::Apply : Action::Skip;
}

namespace {

Decision conflict(ConflictKind kind, ConflictStrategy strategy, const VersionRef &remote, const VersionRef *local) {
    return {resolve(strategy, remote, local), kind};
}

// A snapshot row never takes a key back in time: from the same node it
// applies only when newer.
Decision newer_only(const VersionRef &remote, const VersionRef &local) {
    return {compare_versions(remote, local) > 0 ? Action::Apply : Action::Skip, ConflictKind::None};
}

} // namespace

Decision decide(ChangeOp op, LocalState local, const VersionRef &lv, const VersionRef &remote,
                ConflictStrategy strategy) {
    const bool same = local != LocalState::Nothing && same_origin(lv, remote);
    switch (op) {
    case ChangeOp::Insert:
    case ChangeOp::SnapshotRow: {
        const bool snapshot = op == ChangeOp::SnapshotRow;
        if (local == LocalState::Nothing)
            return {Action::Apply, ConflictKind::None};
        if (same)
            return snapshot ? newer_only(remote, lv) : Decision{Action::Apply, ConflictKind::None};
        return conflict(local == LocalState::Row ? ConflictKind::InsertExists : ConflictKind::InsertDeleted, strategy,
                        remote, &lv);
    }
    case ChangeOp::Update:
        if (local == LocalState::Row)
            return same ? Decision{Action::Apply, ConflictKind::None}
                        : conflict(ConflictKind::UpdateUpdate, strategy, remote, &lv);
        if (local == LocalState::Tombstone)
            return same ? Decision{Action::Apply, ConflictKind::None}
                        : conflict(ConflictKind::UpdateDeleted, strategy, remote, &lv);
        return conflict(ConflictKind::UpdateMissing, strategy, remote, nullptr);
    case ChangeOp::Delete:
        if (local == LocalState::Row)
            return same ? Decision{Action::Apply, ConflictKind::None}
                        : conflict(ConflictKind::DeleteUpdated, strategy, remote, &lv);
        if (local == LocalState::Tombstone && same)
            return {Action::Apply, ConflictKind::None};
        return conflict(ConflictKind::DeleteMissing, strategy, remote, local == LocalState::Tombstone ? &lv : nullptr);
    }
    return {Action::Skip, ConflictKind::None};
}

} // namespace kafka_sync
