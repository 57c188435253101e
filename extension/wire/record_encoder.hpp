// Debezium-compatible record encoding of one table's changes.
//
// A TableEncoder is built once per published relation (when its metadata is
// loaded into the relation cache) and reused for every row: the Kafka Connect
// schemas and the escaped column names are serialised once, so the per-row
// cost is appending values to a string.
#pragma once

#include "wire/change_event.hpp"

#include <string>
#include <vector>

namespace kafka_sync {

// Version of the record format, written into source.version.
inline constexpr const char *kRecordFormatVersion = "kafka_sync-1";

class TableEncoder {
  public:
    TableEncoder(TableDesc desc, EncodeOptions options);

    const TableDesc &desc() const { return desc_; }

    // Kafka key: the identity columns. Returns false (no key) for tables
    // published without a replica identity (INSERT-only tables).
    bool encode_key(const RowImage &key, std::string &out) const;

    // Kafka value: the change-event envelope.
    void encode_value(const ChangeEvent &event, std::string &out) const;

  private:
    void append_row(const RowImage *row, bool key_only, std::string &out) const;
    void append_source(const SourceMeta &src, std::string &out) const;

    TableDesc desc_;
    EncodeOptions options_;
    std::vector<std::string> quoted_names_; // "\"name\":" per column
    std::string key_schema_;                // serialised Connect schema
    std::string value_schema_;
    std::string source_static_; // constant head of "source"
};

// Append s as a JSON string literal (with quotes), escaping as RFC 8259 asks.
void append_json_string(std::string &out, const char *s, size_t len);

} // namespace kafka_sync
