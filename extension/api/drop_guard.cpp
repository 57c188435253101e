// DROP EXTENSION kafka_sync is refused while this database is a node or
// has subscriptions.
//
// The producer worker, the node's replication slot and the subscriptions'
// replication origins live outside the extension's objects: dropping the
// extension would leave the worker running (and retrying, and holding the
// database so that DROP DATABASE fails) and the slot retaining WAL, with
// drop_node() gone. A ProcessUtility hook sees the statement before any
// object is dropped and says what to run first.
#include "api/drop_guard.hpp"

extern "C" {
#include "postgres.h"

#include "commands/extension.h"
#include "executor/spi.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
}

namespace {

ProcessUtility_hook_type prev_process_utility = nullptr;

bool drops_kafka_sync(const Node *stmt) {
    if (!IsA(stmt, DropStmt))
        return false;
    const auto *drop = reinterpret_cast<const DropStmt *>(stmt);
    if (drop->removeType != OBJECT_EXTENSION)
        return false;
    ListCell *lc;
    foreach (lc, drop->objects)
        if (strcmp(strVal(lfirst(lc)), "kafka_sync") == 0)
            return true;
    return false;
}

/* Refuses the drop when this database still has a node or subscriptions. */
void check_nothing_runs() {
    if (!OidIsValid(get_extension_oid("kafka_sync", true)))
        return; /* DROP EXTENSION IF EXISTS of nothing */
    SPI_connect();
    if (SPI_execute("SELECT (SELECT n.node_name FROM kafka_sync.node n LIMIT 1), "
                    "(SELECT count(*) FROM kafka_sync.subscription)",
                    true, 1) != SPI_OK_SELECT ||
        SPI_processed != 1)
        elog(ERROR, "kafka_sync could not read its node and subscriptions");
    char *node = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
    char *subscriptions = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
    if (node)
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_IN_USE),
                 errmsg("cannot drop extension kafka_sync while this database is the kafka_sync node \"%s\"", node),
                 errdetail("The node's producer worker and replication slot live outside the extension and "
                           "would be left running."),
                 errhint("Run SELECT kafka_sync.drop_node(); first, and kafka_sync.drop_subscription() for "
                         "each subscription.")));
    if (subscriptions && strcmp(subscriptions, "0") != 0)
        ereport(ERROR, (errcode(ERRCODE_OBJECT_IN_USE),
                        errmsg("cannot drop extension kafka_sync while this database has %s kafka_sync "
                               "subscription(s)",
                               subscriptions),
                        errdetail("Their replication origins live outside the extension and would be left behind."),
                        errhint("Drop them first: SELECT kafka_sync.drop_subscription(name) FROM "
                                "kafka_sync.subscription_status;")));
    SPI_finish();
}

void guard_utility(PlannedStmt *pstmt, const char *query, bool read_only_tree, ProcessUtilityContext context,
                   ParamListInfo params, QueryEnvironment *query_env, DestReceiver *dest, QueryCompletion *qc) {
    if (drops_kafka_sync(pstmt->utilityStmt))
        check_nothing_runs();
    if (prev_process_utility)
        prev_process_utility(pstmt, query, read_only_tree, context, params, query_env, dest, qc);
    else
        standard_ProcessUtility(pstmt, query, read_only_tree, context, params, query_env, dest, qc);
}

} // namespace

void drop_guard_install() {
    prev_process_utility = ProcessUtility_hook;
    ProcessUtility_hook = guard_utility;
}
