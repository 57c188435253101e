// Records carry times as milliseconds since the Unix epoch (Debezium's
// ts_ms); PostgreSQL counts microseconds since 2000-01-01. The one place
// that converts between them.
#pragma once

extern "C" {
#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/timestamp.h"
}

constexpr int64 kPostgresEpochUnixMs = (int64)(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;

inline int64 timestamptz_to_unix_ms(TimestampTz ts) {
    return ts / 1000 + kPostgresEpochUnixMs;
}

inline TimestampTz unix_ms_to_timestamptz(int64 ms) {
    return (ms - kPostgresEpochUnixMs) * 1000;
}

inline int64 unix_ms_now() {
    return timestamptz_to_unix_ms(GetCurrentTimestamp());
}
