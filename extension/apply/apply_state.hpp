// The apply side's state, by lifetime. Everything the apply functions keep
// between one record and the next lives in one of these three, and each is
// reset at one place, when its lifetime ends:
//
//   ApplySession  the backend (the sidecar's session): the replication
//                 origin it has set up. (The table and plan caches of
//                 table_apply.cpp are backend-wide too; relcache
//                 invalidations, not lifetimes, decide when they go.)
//   ApplyTxn      one local transaction, possibly spanning several
//                 apply_chunk calls (a streamed source transaction): the
//                 apply lock, the tables locked, the executor state of the
//                 table last written, the version of the last row writer
//                 looked up. Ended by the transaction callback at commit or
//                 abort; what a subtransaction takes is not noted (careful
//                 mode's subtransactions may roll it back).
//   ApplyCall     one call of apply_chunk / apply_transactions, or one of
//                 apply_transactions' local transactions: facts looked up
//                 once per call (the target of the previous record, which
//                 tables have tombstones). Begun by apply_begin_call.
//
// No stamps: a field is valid until its owner is reset.
#pragma once

#include "apply/conflicts.hpp"

extern "C" {
#include "postgres.h"

#include "replication/origin.h"
}

struct RowWriter;

namespace kafka_sync {

struct ApplySession {
    RepOriginId origin = InvalidRepOriginId; // set up with replorigin_session_setup by this backend
    // kafka_sync.apply_hold(): the Kafka offset the subscription hold_sub's
    // stored next_offset must not pass (the first record of a streamed
    // transaction not applied yet); -1: none.
    char hold_sub[NAMEDATALEN] = "";
    int64 hold_offset = -1;
};

struct ApplyTxn {
    static constexpr int kMaxLocked = 64; // tables whose lock is noted; more are locked again (cheap)

    bool apply_lock_held = false;
    // kafka_sync.apply_stream_begin(): this local transaction applies a
    // peer's transaction while it is still in progress (its records have no
    // commit LSN or time yet); apply_stream_commit() ends it.
    bool in_progress = false;
    int nlocked = 0;
    Oid locked[kMaxLocked];
    // The executor state of the table last written (in TopTransactionContext).
    RowWriter *open_writer = nullptr;
    Oid open_writer_relid = InvalidOid;
    // The version of the transaction that last wrote the previous row looked up.
    TransactionId version_xid = InvalidTransactionId;
    RowVersion version;
    char version_for_node[NAMEDATALEN] = "";

    bool has_locked(Oid relid) const;
    // A lock taken at the top level of the transaction is held until it ends.
    void note_locked(Oid relid);
    bool may_note() const;
};

struct ApplyCall {
    static constexpr int kMaxChecked = 64;

    bool keep_writers = false; // executor state stays open from one change to the next
    // The target of the previous record.
    char last_schema[NAMEDATALEN] = "";
    char last_table[NAMEDATALEN] = "";
    Oid last_relid = InvalidOid;
    // Tables looked at for tombstones in this call (has_tombstones, once true, stays in the target cache).
    int nchecked = 0;
    Oid checked[kMaxChecked];
    bool tombstones_checked(Oid relid) const;
    void note_tombstones_checked(Oid relid);
};

ApplySession &apply_session();
// The current local transaction's (a new one when the last ended).
ApplyTxn &apply_txn();
ApplyCall &apply_call();
// A new call (or, in apply_transactions, a new local transaction) begins.
void begin_apply_call(bool keep_writers);

} // namespace kafka_sync
