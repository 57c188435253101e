// Out-of-line half of the C++/PostgreSQL error boundary (see pg_boundary.hpp).
#include "boundary/pg_boundary.hpp"

extern "C" {
#include "access/xact.h"
#include "utils/resowner.h"
}

namespace kafka_sync {

void raise_guarded_error(ErrorData *pg_error, const GuardedError &error) {
    if (pg_error)
        ReThrowError(pg_error);
    if (error.internal)
        ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("kafka_sync: %s", error.message)));
    ereport(ERROR,
            (errcode(error.sqlstate), errmsg("%s", error.message), error.detail[0] ? errdetail("%s", error.detail) : 0,
             error.hint[0] ? errhint("%s", error.hint) : 0));
    pg_unreachable();
}

ErrorData *run_in_subtransaction(void (*fn)(void *), void *arg) {
    MemoryContext outer_context = CurrentMemoryContext;
    ResourceOwner outer_owner = CurrentResourceOwner;
    ErrorData *volatile edata = nullptr;
    BeginInternalSubTransaction(nullptr);
    MemoryContextSwitchTo(outer_context);
    PG_TRY();
    {
        fn(arg);
        ReleaseCurrentSubTransaction();
    }
    PG_CATCH();
    {
        MemoryContextSwitchTo(outer_context);
        edata = CopyErrorData();
        FlushErrorState();
        RollbackAndReleaseCurrentSubTransaction();
    }
    PG_END_TRY();
    MemoryContextSwitchTo(outer_context);
    CurrentResourceOwner = outer_owner;
    return edata;
}

} // namespace kafka_sync
