// A row change as the encoder sees it: plain C++ data, no PostgreSQL types.
//
// The decoding side (decode/) fills these from tuples; the encoder (wire/record_encoder)
// turns them into the Debezium-compatible key and value. Keeping this seam
// free of PostgreSQL headers lets the encoder use jansson (whose json_object()
// clashes with utils/fmgrprotos.h) and be unit-tested without a server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kafka_sync {

// One column of a published table, as it appears in records and schemas.
struct ColumnDesc {
    std::string name;
    std::string type_name; // format_type output, e.g. "numeric(10,2)"
    bool optional = true;  // false when NOT NULL
    bool is_key = false;   // part of the replica identity (primary key)
};

struct TableDesc {
    std::string node; // node name: first part of the Debezium schema names
    std::string db;
    std::string schema;
    std::string table;
    std::vector<ColumnDesc> columns; // only the published columns, in attnum order
    bool has_key = false;
};

// One column's value in one row image.
struct FieldValue {
    enum class State : uint8_t {
        Null,    // SQL NULL -> JSON null
        Present, // text holds PostgreSQL's output of the value (UTF-8)
        Absent,  // unchanged TOASTed value or not part of this image: omitted
    };
    State state = State::Absent;
    const char *text = nullptr;
    size_t len = 0;
};

// A row image: values parallel to TableDesc::columns.
struct RowImage {
    const FieldValue *values = nullptr;
    size_t count = 0;
};

enum class Op : char {
    Create = 'c',
    Update = 'u',
    Delete = 'd',
    Read = 'r', // initial snapshot
    Truncate = 't',
};

// Where a change came from; volatile parts are left out of the JSON when the
// corresponding EncodeOptions flag is off (deterministic regression output).
struct SourceMeta {
    int64_t commit_ts_ms = 0; // source commit time, ms since the Unix epoch
    uint32_t xid = 0;
    uint64_t lsn = 0;               // commit (end) LSN of the source transaction
    const char *snapshot = "false"; // "true", "last" or "false", as Debezium
    // The version of the row itself, on snapshot records: a receiver that
    // resolves conflicts by last update needs when and where the row last
    // changed, not when the snapshot was taken. Omitted when unknown.
    bool has_row_ts = false;
    int64_t row_ts_ms = 0;            // commit time of the row's last change
    const char *row_origin = nullptr; // node that made that change; null: omitted
};

struct ChangeEvent {
    Op op = Op::Create;
    const RowImage *before = nullptr; // null -> JSON null
    const RowImage *after = nullptr;
    const RowImage *key = nullptr; // identity values; null -> no key
    SourceMeta source;
    int64_t event_ts_ms = 0;            // when the record was made (payload.ts_ms)
    uint64_t total_order = 0;           // 1-based position in the source transaction
    uint64_t data_collection_order = 0; // same, counted per table
};

struct EncodeOptions {
    bool include_schema = true; // Kafka Connect "schema" + "payload" wrapper
    bool include_xids = true;
    bool include_lsn = true;
    bool include_timestamps = true;
};

} // namespace kafka_sync
