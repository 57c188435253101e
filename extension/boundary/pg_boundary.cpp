// Out-of-line half of the C++/PostgreSQL error boundary (see pg_boundary.hpp).
#include "boundary/pg_boundary.hpp"

namespace kafka_sync {

void raise_guarded_error(ErrorData *pg_error, const char *cpp_message) {
    if (pg_error)
        ReThrowError(pg_error);
    ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg("kafka_sync: %s", cpp_message)));
    pg_unreachable();
}

} // namespace kafka_sync
