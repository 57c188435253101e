// kafka_sync._create_node_slot(slot_name): create_node() makes the node's
// logical slot in the calling backend, so that it returns only once the slot
// is consistent: everything committed after create_node() returns is decoded
// and published as its own transaction (as CREATE SUBSCRIPTION waits for its
// slot). The initial snapshot is not read here: create_node() files it as a
// resnapshot request, which the worker serves before anything it decodes.
//
// A slot is not transactional. The one made here is dropped again when the
// (sub)transaction that made it aborts, so a create_node() that fails later,
// or is rolled back, leaves no slot behind.
#include "boundary/pg_boundary.hpp"
#include "produce/node_worker.hpp"

extern "C" {
#include "postgres.h"

#include "access/xact.h"
#include "access/xlogutils.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "storage/lwlock.h"
#include "utils/elog.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"

PG_FUNCTION_INFO_V1(kafka_sync_create_node_slot);
}

namespace {

/* The slot made in this transaction (empty: none), and the subtransaction that made it. */
char created_slot[NAMEDATALEN];
SubTransactionId created_in = InvalidSubTransactionId;
bool callbacks_registered = false;

/* Runs inside transaction abort: a failure is a WARNING, never an error. */
void drop_created_slot() {
    char name[NAMEDATALEN];
    strlcpy(name, created_slot, sizeof(name));
    created_slot[0] = '\0';
    created_in = InvalidSubTransactionId;
    MemoryContext cxt = CurrentMemoryContext;
    /* another slot still acquired by this backend (a slot function that failed): PostgresMain would release it */
    if (MyReplicationSlot != nullptr)
        ReplicationSlotRelease();
    PG_TRY();
    { ReplicationSlotDrop(name, true); }
    PG_CATCH();
    {
        /* the transaction's abort released its locks before this ran: these are the drop's own */
        LWLockReleaseAll();
        if (MyReplicationSlot != nullptr)
            ReplicationSlotRelease();
        MemoryContextSwitchTo(cxt);
        ErrorData *edata = CopyErrorData();
        FlushErrorState();
        ereport(WARNING, (errmsg("kafka_sync could not drop replication slot \"%s\" of a node that was not created: %s",
                                 name, edata->message),
                          errhint("Drop it with SELECT pg_drop_replication_slot('%s').", name)));
        FreeErrorData(edata);
    }
    PG_END_TRY();
}

void at_xact_event(XactEvent event, void *) {
    if (created_slot[0] == '\0')
        return;
    switch (event) {
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_ABORT: drop_created_slot(); break;
    case XACT_EVENT_COMMIT:
    case XACT_EVENT_PARALLEL_COMMIT:
        created_slot[0] = '\0';
        created_in = InvalidSubTransactionId;
        break;
    case XACT_EVENT_PRE_PREPARE:
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("cannot PREPARE a transaction that has run kafka_sync.create_node()")));
        break;
    default: break;
    }
}

void at_subxact_event(SubXactEvent event, SubTransactionId my_subid, SubTransactionId parent_subid, void *) {
    if (created_slot[0] == '\0' || my_subid != created_in)
        return;
    if (event == SUBXACT_EVENT_ABORT_SUB)
        drop_created_slot();
    else if (event == SUBXACT_EVENT_COMMIT_SUB)
        created_in = parent_subid; /* now the parent's to keep or to undo */
}

} // namespace

extern "C" {

Datum kafka_sync_create_node_slot(PG_FUNCTION_ARGS) {
    const char *slot_name = NameStr(*PG_GETARG_NAME(0));
    if (GetTopTransactionIdIfAny() != InvalidTransactionId)
        ereport(ERROR,
                (errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
                 errmsg("kafka_sync.create_node() must run in a transaction that has not written anything yet"),
                 errdetail("It creates the node's replication slot, which PostgreSQL cannot do in a transaction that "
                           "has already written (for example CREATE EXTENSION or CREATE PUBLICATION in the same "
                           "transaction)."),
                 errhint("Commit what comes before it, then call kafka_sync.create_node() on its own.")));
    if (created_slot[0] != '\0')
        ereport(ERROR, (errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
                        errmsg("kafka_sync.create_node() can run only once in a transaction")));
    if (!callbacks_registered) {
        RegisterXactCallback(at_xact_event, nullptr);
        RegisterSubXactCallback(at_subxact_event, nullptr);
        callbacks_registered = true;
    }

    CheckSlotPermissions();
    CheckLogicalDecodingRequirements();
    /*
     * As pg_create_logical_replication_slot(): ephemeral until it is
     * consistent. Finding the consistent point waits for every transaction
     * that is running now (and has written) to end.
     */
    ReplicationSlotCreate(slot_name, true, RS_EPHEMERAL, false);
    LogicalDecodingContext *ctx = CreateInitDecodingContext(
        "kafka_sync", NIL, false, InvalidXLogRecPtr, kafka_sync::node_local_wal_reader(), nullptr, nullptr, nullptr);
    DecodingContextFindStartpoint(ctx);
    const XLogRecPtr consistent = MyReplicationSlot->data.confirmed_flush;
    FreeDecodingContext(ctx);
    ReplicationSlotPersist();
    ReplicationSlotRelease();
    ereport(LOG, (errmsg("kafka_sync: replication slot %s consistent at %X/%X", slot_name, KS_LSN_ARGS(consistent))));
    strlcpy(created_slot, slot_name, sizeof(created_slot));
    created_in = GetCurrentSubTransactionId();
    PG_RETURN_LSN(consistent);
}
}
