// See apply_state.hpp.
#include "apply/apply_state.hpp"

extern "C" {
#include "access/xact.h"
}

namespace kafka_sync {

namespace {

ApplySession session;
ApplyTxn txn;
ApplyCall call;
bool callback_registered = false;

// The local transaction ended: what it held went with it.
void end_apply_txn(XactEvent event, void *) {
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
        event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PREPARE)
        txn = ApplyTxn();
}

} // namespace

bool ApplyTxn::may_note() const {
    return GetCurrentTransactionNestLevel() == 1;
}

bool ApplyTxn::has_locked(Oid relid) const {
    for (int i = 0; i < nlocked; i++)
        if (locked[i] == relid)
            return true;
    return false;
}

void ApplyTxn::note_locked(Oid relid) {
    if (may_note() && nlocked < kMaxLocked && !has_locked(relid))
        locked[nlocked++] = relid;
}

bool ApplyCall::tombstones_checked(Oid relid) const {
    for (int i = 0; i < nchecked; i++)
        if (checked[i] == relid)
            return true;
    return false;
}

void ApplyCall::note_tombstones_checked(Oid relid) {
    if (nchecked < kMaxChecked)
        checked[nchecked++] = relid;
}

ApplySession &apply_session() {
    return session;
}

ApplyTxn &apply_txn() {
    if (!callback_registered) {
        RegisterXactCallback(end_apply_txn, nullptr);
        callback_registered = true;
    }
    return txn;
}

ApplyCall &apply_call() {
    return call;
}

void begin_apply_call(bool keep_writers) {
    (void)apply_txn(); /* the callback that ends it is in place before anything is noted */
    call = ApplyCall();
    call.keep_writers = keep_writers;
}

} // namespace kafka_sync
