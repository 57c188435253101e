// Debezium-compatible record encoding (see record_encoder.hpp).
//
// Schemas are built with jansson once per table. Row payloads are appended
// by hand: building a jansson object per row costs an allocation per field,
// and this is the hottest loop of the source path.
#include "wire/record_encoder.hpp"

#include "wire/json_object_new.hpp"

#include <jansson.h>

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace kafka_sync {

namespace {

struct JsonRef {
    void operator()(json_t *j) const { json_decref(j); }
};
using JsonPtr = std::unique_ptr<json_t, JsonRef>;

json_t *checked(json_t *j) {
    if (!j)
        throw std::bad_alloc();
    return j;
}

// json_object_set_new steals the reference even on failure.
void set(json_t *obj, const char *key, json_t *value) {
    if (json_object_set_new(obj, key, checked(value)) != 0)
        throw std::runtime_error("could not build record schema");
}

void append(json_t *array, json_t *value) {
    if (json_array_append_new(array, checked(value)) != 0)
        throw std::runtime_error("could not build record schema");
}

json_t *field(const char *type, bool optional, const char *name) {
    json_t *f = checked(json_object_new());
    set(f, "type", json_string(type));
    set(f, "optional", json_boolean(optional));
    set(f, "field", json_string(name));
    return f;
}

json_t *column_field(const ColumnDesc &col) {
    json_t *f = field("string", col.optional, col.name.c_str());
    json_t *params = checked(json_object_new());
    set(params, "__debezium.source.column.type", json_string(col.type_name.c_str()));
    set(f, "parameters", params);
    return f;
}

json_t *row_struct(const TableDesc &desc, bool key_only, const std::string &name, const char *field_name) {
    json_t *s = checked(json_object_new());
    set(s, "type", json_string("struct"));
    json_t *fields = checked(json_array());
    for (const auto &col : desc.columns)
        if (!key_only || col.is_key)
            append(fields, column_field(col));
    set(s, "fields", fields);
    set(s, "optional", json_boolean(field_name != nullptr));
    set(s, "name", json_string(name.c_str()));
    if (field_name)
        set(s, "field", json_string(field_name));
    return s;
}

json_t *source_struct() {
    json_t *s = checked(json_object_new());
    set(s, "type", json_string("struct"));
    json_t *fields = checked(json_array());
    append(fields, field("string", false, "version"));
    append(fields, field("string", false, "connector"));
    append(fields, field("string", false, "name"));
    append(fields, field("int64", true, "ts_ms"));
    append(fields, field("string", true, "snapshot"));
    append(fields, field("string", false, "db"));
    append(fields, field("string", false, "schema"));
    append(fields, field("string", false, "table"));
    append(fields, field("int64", true, "txId"));
    append(fields, field("int64", true, "lsn"));
    append(fields, field("string", false, "origin"));
    append(fields, field("int64", true, "row_ts_ms"));
    append(fields, field("string", true, "row_origin"));
    set(s, "fields", fields);
    set(s, "optional", json_boolean(false));
    set(s, "name", json_string("io.kafka_sync.Source"));
    set(s, "field", json_string("source"));
    return s;
}

json_t *transaction_struct() {
    json_t *s = checked(json_object_new());
    set(s, "type", json_string("struct"));
    json_t *fields = checked(json_array());
    append(fields, field("string", true, "id"));
    append(fields, field("int64", false, "total_order"));
    append(fields, field("int64", false, "data_collection_order"));
    set(s, "fields", fields);
    set(s, "optional", json_boolean(true));
    set(s, "name", json_string("event.block"));
    set(s, "field", json_string("transaction"));
    return s;
}

std::string dump(json_t *j) {
    JsonPtr owner(j);
    char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text)
        throw std::bad_alloc();
    std::string out(text);
    free(text);
    return out;
}

template <typename Int> void append_decimal(std::string &out, Int v) {
    char buf[24];
    out.append(buf, static_cast<size_t>(std::to_chars(buf, buf + sizeof(buf), v).ptr - buf));
}

void append_int(std::string &out, int64_t v) {
    append_decimal(out, v);
}

void append_uint(std::string &out, uint64_t v) {
    append_decimal(out, v);
}

void append_cstr(std::string &out, const std::string &s) {
    append_json_string(out, s.data(), s.size());
}

} // namespace

void append_json_string(std::string &out, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    out.push_back('"');
    size_t run = 0; // start of the current run of bytes needing no escape
    for (size_t i = 0; i < len; i++) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        out.append(s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        case '\b': out.append("\\b"); break;
        case '\f': out.append("\\f"); break;
        default:
            out.append("\\u00");
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 0xf]);
        }
    }
    out.append(s + run, len - run);
    out.push_back('"');
}

TableEncoder::TableEncoder(TableDesc desc, EncodeOptions options) : desc_(std::move(desc)), options_(options) {
    const std::string base = desc_.node + "." + desc_.schema + "." + desc_.table;

    for (const auto &col : desc_.columns) {
        std::string q;
        append_cstr(q, col.name);
        q.push_back(':');
        quoted_names_.push_back(std::move(q));
    }

    if (options_.include_schema) {
        key_schema_ = dump(row_struct(desc_, true, base + ".Key", nullptr));

        json_t *env = checked(json_object_new());
        JsonPtr env_owner(env);
        set(env, "type", json_string("struct"));
        json_t *fields = checked(json_array());
        set(env, "fields", fields);
        append(fields, row_struct(desc_, false, base + ".Value", "before"));
        append(fields, row_struct(desc_, false, base + ".Value", "after"));
        append(fields, source_struct());
        append(fields, field("string", false, "op"));
        append(fields, field("int64", true, "ts_ms"));
        append(fields, transaction_struct());
        set(env, "optional", json_boolean(false));
        set(env, "name", json_string((base + ".Envelope").c_str()));
        value_schema_ = dump(env_owner.release());
    }

    source_static_ = "{\"version\":";
    append_json_string(source_static_, kRecordFormatVersion, strlen(kRecordFormatVersion));
    source_static_ += ",\"connector\":\"kafka_sync\",\"name\":";
    append_cstr(source_static_, desc_.node);
}

void TableEncoder::append_row(const RowImage *row, bool key_only, std::string &out) const {
    if (!row) {
        out.append("null");
        return;
    }
    out.push_back('{');
    bool first = true;
    const size_t n = std::min(row->count, desc_.columns.size());
    for (size_t i = 0; i < n; i++) {
        const FieldValue &v = row->values[i];
        if (v.state == FieldValue::State::Absent || (key_only && !desc_.columns[i].is_key))
            continue;
        if (!first)
            out.push_back(',');
        first = false;
        out.append(quoted_names_[i]);
        if (v.state == FieldValue::State::Null)
            out.append("null");
        else
            append_json_string(out, v.text, v.len);
    }
    out.push_back('}');
}

void TableEncoder::append_source(const SourceMeta &src, std::string &out) const {
    out.append(source_static_);
    if (options_.include_timestamps) {
        out.append(",\"ts_ms\":");
        append_int(out, src.commit_ts_ms);
    }
    out.append(",\"snapshot\":");
    append_json_string(out, src.snapshot, strlen(src.snapshot));
    out.append(",\"db\":");
    append_cstr(out, desc_.db);
    out.append(",\"schema\":");
    append_cstr(out, desc_.schema);
    out.append(",\"table\":");
    append_cstr(out, desc_.table);
    if (options_.include_xids) {
        out.append(",\"txId\":");
        append_uint(out, src.xid);
    }
    if (options_.include_lsn) {
        out.append(",\"lsn\":");
        append_uint(out, src.lsn);
    }
    out.append(",\"origin\":");
    append_cstr(out, desc_.node);
    if (src.has_row_ts && options_.include_timestamps) {
        out.append(",\"row_ts_ms\":");
        append_int(out, src.row_ts_ms);
    }
    if (src.row_origin) {
        out.append(",\"row_origin\":");
        append_json_string(out, src.row_origin, strlen(src.row_origin));
    }
    out.push_back('}');
}

bool TableEncoder::encode_key(const RowImage &key, std::string &out) const {
    if (!desc_.has_key)
        return false;
    if (options_.include_schema) {
        out.append("{\"schema\":");
        out.append(key_schema_);
        out.append(",\"payload\":");
    }
    append_row(&key, true, out);
    if (options_.include_schema)
        out.push_back('}');
    return true;
}

void TableEncoder::encode_value(const ChangeEvent &ev, std::string &out) const {
    if (options_.include_schema) {
        out.append("{\"schema\":");
        out.append(value_schema_);
        out.append(",\"payload\":");
    }
    out.append("{\"before\":");
    append_row(ev.before, false, out);
    out.append(",\"after\":");
    append_row(ev.after, false, out);
    out.append(",\"source\":");
    append_source(ev.source, out);
    out.append(",\"op\":\"");
    out.push_back(static_cast<char>(ev.op));
    out.push_back('"');
    if (options_.include_timestamps) {
        out.append(",\"ts_ms\":");
        append_int(out, ev.event_ts_ms);
    }
    out.append(",\"transaction\":{\"id\":");
    if (options_.include_xids && options_.include_lsn) {
        out.push_back('"');
        append_uint(out, ev.source.xid);
        out.push_back(':');
        append_uint(out, ev.source.lsn);
        out.push_back('"');
    } else {
        out.append("null");
    }
    out.append(",\"total_order\":");
    append_uint(out, ev.total_order);
    out.append(",\"data_collection_order\":");
    append_uint(out, ev.data_collection_order);
    out.append("}}");
    if (options_.include_schema)
        out.push_back('}');
}

} // namespace kafka_sync
