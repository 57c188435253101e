// Unit tests of the pure C++ parts: in-flight accounting, record encoding,
// kafka_config validation, the secrets file. No PostgreSQL, no Kafka: run with `make unit-test`.
#include "check.hpp"
#include "wire/record_decoder.hpp"
#include "common/secrets_file.hpp"
#include "wire/record_encoder.hpp"
#include "produce/inflight.hpp"
#include "produce/kafka_config.hpp"
#include "produce/kafka_producer.hpp"

#include <jansson.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <unistd.h>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using unit_check::checks;
using unit_check::failures;

using namespace kafka_sync;

void slot_confirms_only_a_fully_acknowledged_prefix() {
    InflightTransactions t;
    auto a = t.begin(100);
    t.record_produced(a);
    t.record_produced(a);
    t.end(a);
    auto b = t.begin(200);
    t.record_produced(b);
    t.end(b);
    CHECK(t.take_confirmable() == 0);
    // b acknowledged first: still nothing, a is older and incomplete
    t.record_acknowledged(b);
    CHECK(t.take_confirmable() == 0);
    t.record_acknowledged(a);
    CHECK(t.take_confirmable() == 0);
    t.record_acknowledged(a);
    CHECK(t.take_confirmable() == 200);
    CHECK(t.empty());
    CHECK(t.unacknowledged_records() == 0);
}

void open_transaction_blocks_confirmation_even_when_acknowledged() {
    InflightTransactions t;
    auto a = t.begin(100);
    t.record_produced(a);
    t.record_acknowledged(a);
    CHECK(t.take_confirmable() == 0); // more records of a may still come
    t.end(a);
    CHECK(t.take_confirmable() == 100);
}

void empty_transactions_confirm_in_order() {
    InflightTransactions t;
    auto a = t.begin(100);
    t.record_produced(a);
    t.end(a);
    auto b = t.begin(150);
    t.end(b); // no records
    CHECK(t.take_confirmable() == 0);
    t.record_acknowledged(a);
    CHECK(t.take_confirmable() == 150);
}

void snapshot_pseudo_transaction_completes_only_when_acknowledged() {
    // A resnapshot enters the ring at the position of the transaction before
    // it (its lsn header is not a WAL position the slot may restart from).
    InflightTransactions t;
    auto a = t.begin(100);
    t.record_produced(a);
    t.end(a);
    auto snap = t.begin(100);
    t.record_produced(snap);
    t.record_produced(snap);
    t.end(snap);
    t.record_acknowledged(a);
    CHECK(t.take_confirmable() == 100);
    CHECK(t.completed(a));
    CHECK(!t.completed(snap));
    t.record_acknowledged(snap);
    t.record_acknowledged(snap);
    CHECK(!t.completed(snap)); // until take_confirmable has seen it
    t.take_confirmable();
    CHECK(t.completed(snap));
}

void inflight_rejects_out_of_order_and_unknown() {
    InflightTransactions t;
    auto a = t.begin(100);
    bool threw = false;
    try {
        t.begin(50);
    } catch (const std::logic_error &) {
        threw = true;
    }
    CHECK(threw);
    threw = false;
    try {
        t.record_acknowledged(a + 7);
    } catch (const std::logic_error &) {
        threw = true;
    }
    CHECK(threw);
}

std::string json_escape(const std::string &s) {
    std::string out;
    append_json_string(out, s.data(), s.size());
    return out;
}

void json_strings_are_escaped_and_roundtrip() {
    CHECK(json_escape("plain") == "\"plain\"");
    CHECK(json_escape("a\"b\\c") == "\"a\\\"b\\\\c\"");
    CHECK(json_escape(std::string("x\0y", 3)) == "\"x\\u0000y\"");
    CHECK(json_escape("\n\t\x01") == "\"\\n\\t\\u0001\"");
    const std::string unicode = "h\xc3\xa9llo \xf0\x9f\x98\x80";
    std::string doc = "[" + json_escape(unicode) + "]";
    json_error_t err;
    json_t *j = json_loads(doc.c_str(), 0, &err);
    CHECK(j != nullptr);
    if (j) {
        CHECK(std::string(json_string_value(json_array_get(j, 0))) == unicode);
        json_decref(j);
    }
}

TableDesc users_table() {
    TableDesc d;
    d.node = "chat1";
    d.db = "chat";
    d.schema = "public";
    d.table = "user_table";
    d.has_key = true;
    d.columns = {{"user_id", "text", false, true}, {"user_name", "text", true, false}, {"note", "text", true, false}};
    return d;
}

json_t *parse(const std::string &s) {
    json_error_t err;
    json_t *j = json_loads(s.c_str(), 0, &err);
    if (!j)
        fprintf(stderr, "invalid JSON (%s): %s\n", err.text, s.c_str());
    return j;
}

void update_record_has_debezium_envelope_and_omits_absent_columns() {
    EncodeOptions opts;
    TableEncoder enc(users_table(), opts);
    FieldValue after_vals[3];
    after_vals[0] = {FieldValue::State::Present, "u1", 2};
    after_vals[1] = {FieldValue::State::Null, nullptr, 0};
    after_vals[2] = {FieldValue::State::Absent, nullptr, 0}; // unchanged TOAST
    RowImage after{after_vals, 3};
    ChangeEvent ev;
    ev.op = Op::Update;
    ev.after = &after;
    ev.source.commit_ts_ms = 1700000000123;
    ev.source.xid = 42;
    ev.source.lsn = 0x1234;
    ev.total_order = 3;
    ev.data_collection_order = 2;
    std::string key, value;
    CHECK(enc.encode_key(after, key));
    enc.encode_value(ev, value);

    json_t *k = parse(key);
    json_t *v = parse(value);
    CHECK(k && v);
    if (!k || !v)
        return;
    json_t *kp = json_object_get(k, "payload");
    CHECK(std::string(json_string_value(json_object_get(kp, "user_id"))) == "u1");
    CHECK(json_object_size(kp) == 1);
    CHECK(std::string(json_string_value(json_object_get(json_object_get(k, "schema"), "name"))) ==
          "chat1.public.user_table.Key");

    json_t *p = json_object_get(v, "payload");
    CHECK(std::string(json_string_value(json_object_get(p, "op"))) == "u");
    CHECK(json_is_null(json_object_get(p, "before")));
    json_t *a = json_object_get(p, "after");
    CHECK(json_is_null(json_object_get(a, "user_name")));
    CHECK(json_object_get(a, "note") == nullptr); // absent, not a placeholder
    json_t *src = json_object_get(p, "source");
    CHECK(std::string(json_string_value(json_object_get(src, "connector"))) == "kafka_sync");
    CHECK(std::string(json_string_value(json_object_get(src, "origin"))) == "chat1");
    CHECK(json_integer_value(json_object_get(src, "txId")) == 42);
    CHECK(json_integer_value(json_object_get(src, "lsn")) == 0x1234);
    CHECK(json_integer_value(json_object_get(src, "ts_ms")) == 1700000000123);
    json_t *txn = json_object_get(p, "transaction");
    CHECK(std::string(json_string_value(json_object_get(txn, "id"))) == "42:4660");
    CHECK(json_integer_value(json_object_get(txn, "total_order")) == 3);
    json_t *schema = json_object_get(v, "schema");
    CHECK(std::string(json_string_value(json_object_get(schema, "name"))) == "chat1.public.user_table.Envelope");
    json_decref(k);
    json_decref(v);
}

void schemaless_records_are_bare_payloads_without_volatile_fields() {
    EncodeOptions opts;
    opts.include_schema = false;
    opts.include_xids = false;
    opts.include_lsn = false;
    opts.include_timestamps = false;
    TableEncoder enc(users_table(), opts);
    FieldValue vals[3] = {{FieldValue::State::Present, "u\"1", 3},
                          {FieldValue::State::Present, "Ann", 3},
                          {FieldValue::State::Present, "", 0}};
    RowImage row{vals, 3};
    ChangeEvent ev;
    ev.op = Op::Delete;
    ev.before = &row;
    ev.total_order = 1;
    ev.data_collection_order = 1;
    std::string key, value;
    enc.encode_key(row, key);
    enc.encode_value(ev, value);
    CHECK(key == "{\"user_id\":\"u\\\"1\"}");
    CHECK(value == "{\"before\":{\"user_id\":\"u\\\"1\",\"user_name\":\"Ann\",\"note\":\"\"},\"after\":null,"
                   "\"source\":{\"version\":\"kafka_sync-1\",\"connector\":\"kafka_sync\",\"name\":\"chat1\","
                   "\"snapshot\":\"false\",\"db\":\"chat\",\"schema\":\"public\",\"table\":\"user_table\","
                   "\"origin\":\"chat1\"},\"op\":\"d\",\"transaction\":{\"id\":null,\"total_order\":1,"
                   "\"data_collection_order\":1}}");
}

void snapshot_record_carries_the_row_version_in_source() {
    TableEncoder enc(users_table(), EncodeOptions());
    FieldValue vals[3] = {{FieldValue::State::Present, "u1", 2},
                          {FieldValue::State::Present, "Ann", 3},
                          {FieldValue::State::Null, nullptr, 0}};
    RowImage row{vals, 3};
    ChangeEvent ev;
    ev.op = Op::Read;
    ev.after = &row;
    ev.source.commit_ts_ms = 1700000009999; // when the snapshot was taken
    ev.source.lsn = 0x5001;
    ev.source.snapshot = "true";
    ev.source.has_row_ts = true;
    ev.source.row_ts_ms = 1600000000123; // when the row last changed
    ev.source.row_origin = "peer\"x";
    ev.total_order = 1;
    ev.data_collection_order = 1;
    std::string value;
    enc.encode_value(ev, value);
    json_t *v = parse(value);
    CHECK(v != nullptr);
    if (!v)
        return;
    json_t *src = json_object_get(json_object_get(v, "payload"), "source");
    CHECK(json_is_integer(json_object_get(src, "row_ts_ms")));
    CHECK(json_integer_value(json_object_get(src, "row_ts_ms")) == 1600000000123);
    CHECK(std::string(json_string_value(json_object_get(src, "row_origin"))) == "peer\"x");
    CHECK(json_integer_value(json_object_get(src, "ts_ms")) == 1700000009999);
    CHECK(std::string(json_string_value(json_object_get(src, "snapshot"))) == "true");
    // The Connect schema declares both, optional, so JsonConverter keeps them.
    json_t *fields = nullptr;
    json_t *env_fields = json_object_get(json_object_get(v, "schema"), "fields");
    for (size_t i = 0; i < json_array_size(env_fields); i++) {
        json_t *f = json_array_get(env_fields, i);
        if (std::string(json_string_value(json_object_get(f, "field"))) == "source")
            fields = json_object_get(f, "fields");
    }
    int declared = 0;
    for (size_t i = 0; i < json_array_size(fields); i++) {
        json_t *f = json_array_get(fields, i);
        std::string name = json_string_value(json_object_get(f, "field"));
        std::string type = json_string_value(json_object_get(f, "type"));
        if ((name == "row_ts_ms" && type == "int64") || (name == "row_origin" && type == "string")) {
            CHECK(json_is_true(json_object_get(f, "optional")));
            declared++;
        }
    }
    CHECK(declared == 2);
    json_decref(v);
}

void unknown_row_version_is_left_out() {
    EncodeOptions opts;
    opts.include_schema = false;
    TableEncoder enc(users_table(), opts);
    FieldValue vals[3] = {{FieldValue::State::Present, "u1", 2}, {}, {}};
    RowImage row{vals, 3};
    ChangeEvent ev;
    ev.op = Op::Read;
    ev.after = &row;
    ev.source.snapshot = "true";
    std::string plain;
    enc.encode_value(ev, plain);
    CHECK(plain.find("row_ts_ms") == std::string::npos);
    CHECK(plain.find("row_origin") == std::string::npos);

    // known time, unknown origin (a replication origin that is no kafka_sync peer)
    ev.source.has_row_ts = true;
    ev.source.row_ts_ms = 42;
    std::string with_ts;
    enc.encode_value(ev, with_ts);
    CHECK(with_ts.find(",\"origin\":\"chat1\",\"row_ts_ms\":42}") != std::string::npos);
    CHECK(with_ts.find("row_origin") == std::string::npos);

    // regression output without volatile fields drops the time, keeps the origin
    EncodeOptions quiet = opts;
    quiet.include_timestamps = false;
    TableEncoder quiet_enc(users_table(), quiet);
    ev.source.row_origin = "chat1";
    std::string q;
    quiet_enc.encode_value(ev, q);
    CHECK(q.find("row_ts_ms") == std::string::npos);
    CHECK(q.find(",\"origin\":\"chat1\",\"row_origin\":\"chat1\"}") != std::string::npos);
}

void table_without_key_has_no_kafka_key() {
    TableDesc d = users_table();
    d.has_key = false;
    for (auto &c : d.columns)
        c.is_key = false;
    TableEncoder enc(d, EncodeOptions());
    FieldValue vals[3] = {};
    RowImage row{vals, 3};
    std::string key;
    CHECK(!enc.encode_key(row, key));
}

void kafka_config_accepts_librdkafka_properties_and_own_settings() {
    NodeKafkaSettings s;
    std::string err, hint;
    CHECK(parse_node_kafka_config({{"linger.ms", "20"},
                                   {"kafka_sync.tombstones", "true"},
                                   {"kafka_sync.topic_partitions", "3"},
                                   {"sasl.password", "hunter2"}},
                                  s, err, hint));
    CHECK(s.tombstones);
    CHECK(s.topic_partitions == 3);
    CHECK(s.rdkafka.size() == 3);
    // librdkafka's kinit (a shell command with the principal and keytab pasted in) is off, last
    CHECK(s.rdkafka.back().first == "sasl.kerberos.min.time.before.relogin" && s.rdkafka.back().second == "0");
    CHECK(parse_node_kafka_config(
        {{"sasl.kerberos.principal", "x;touch /tmp/p"}, {"sasl.kerberos.min.time.before.relogin", "60000"}}, s, err,
        hint));
    CHECK(s.rdkafka.back().first == "sasl.kerberos.min.time.before.relogin" && s.rdkafka.back().second == "0");
    CHECK(
        parse_node_kafka_config({{"sasl.kerberos.principal", "kafka/host"}}, s, err, hint, "sasl.kerberos.kinit.cmd"));
    CHECK(s.rdkafka.size() == 1);
}

void kafka_config_rejects_typos_and_fixed_properties_without_leaking_secrets() {
    NodeKafkaSettings s;
    std::string err, hint;
    CHECK(!parse_node_kafka_config({{"linger.mss", "20"}}, s, err, hint));
    CHECK(err.find("linger.mss") != std::string::npos);
    CHECK(!parse_node_kafka_config({{"acks", "1"}}, s, err, hint));
    CHECK(!parse_node_kafka_config({{"enable.idempotence", "false"}}, s, err, hint));
    CHECK(!parse_node_kafka_config({{"kafka_sync.schemaz", "true"}}, s, err, hint));
    CHECK(!parse_node_kafka_config({{"kafka_sync.topic_partitions", "0"}}, s, err, hint));
    CHECK(!parse_node_kafka_config({{"ssl.key.password", ""}, {"sasl.mechanism", "s3cr3t-value"}}, s, err, hint) ||
          err.find("s3cr3t") == std::string::npos);
    CHECK(is_secret_config_key("sasl.password"));
    CHECK(is_secret_config_key("ssl.key.pem"));
    CHECK(!is_secret_config_key("linger.ms"));
}

std::string header_bytes(const std::vector<std::pair<std::string, const char *>> &h) {
    std::string out;
    auto u32 = [&](uint32_t n) {
        for (int shift = 24; shift >= 0; shift -= 8)
            out.push_back(static_cast<char>((n >> shift) & 0xff));
    };
    for (const auto &[k, v] : h) {
        u32(static_cast<uint32_t>(k.size()));
        out += k;
        if (!v) {
            u32(0xffffffffU);
            continue;
        }
        u32(static_cast<uint32_t>(strlen(v)));
        out += v;
    }
    return out;
}

void decoder_reads_what_the_encoder_writes() {
    for (bool with_schema : {true, false}) {
        EncodeOptions opts;
        opts.include_schema = with_schema;
        TableEncoder enc(users_table(), opts);
        FieldValue vals[3] = {{FieldValue::State::Present, "u\"1", 3},
                              {FieldValue::State::Null, nullptr, 0},
                              {FieldValue::State::Absent, nullptr, 0}};
        RowImage row{vals, 3};
        ChangeEvent ev;
        ev.op = Op::Update;
        ev.after = &row;
        std::string value;
        enc.encode_value(ev, value);
        RecordDecoder dec;
        DecodedRecord rec;
        std::string err;
        for (int again = 0; again < 2; again++) { // the second time with the schema seen before
            CHECK(dec.decode_value(value.data(), value.size(), rec, err));
            CHECK(dec.read_in_place()); // with the schema too: no jansson tree per row
            CHECK(rec.op == 'u');
            CHECK(std::string(rec.table) == "user_table" && std::string(rec.schema) == "public");
            CHECK(std::string(rec.origin) == "chat1");
            CHECK(!rec.has_before && rec.has_after);
            CHECK(rec.after.size() == 2); // the absent (unchanged TOAST) column stays absent
            CHECK(std::string(rec.after[0].value) == "u\"1");
            CHECK(rec.after[1].value == nullptr);
        }
    }
}

// A record as a node on its defaults writes it: with the Connect schema.
std::string encoded_with_schema(bool with_schema = true) {
    EncodeOptions opts;
    opts.include_schema = with_schema;
    TableEncoder enc(users_table(), opts);
    FieldValue vals[3] = {{FieldValue::State::Present, "u\\1\n\xc3\xa9", 6},
                          {FieldValue::State::Present, "name", 4},
                          {FieldValue::State::Null, nullptr, 0}};
    RowImage row{vals, 3};
    ChangeEvent ev;
    ev.op = Op::Create;
    ev.after = &row;
    ev.source.commit_ts_ms = 1700000000123;
    ev.source.xid = 42;
    ev.source.lsn = 0x1234;
    std::string value;
    enc.encode_value(ev, value);
    return value;
}

std::string describe(const DecodedRecord &r) {
    std::string d = std::string(1, r.op) + "|" + (r.schema ? r.schema : "~") + "|" + (r.table ? r.table : "~") + "|" +
                    (r.origin ? r.origin : "~") + "|" + (r.has_row_ts ? std::to_string(r.row_ts_ms) : "~") + "|" +
                    (r.row_origin ? r.row_origin : "~") + "|" + (r.has_before ? "B" : "-") + (r.has_after ? "A" : "-");
    for (const auto *row : {&r.before, &r.after})
        for (const DecodedColumn &c : *row)
            d += std::string("|") + c.name + "=" + (c.value ? std::string("'") + c.value + "'" : "NULL");
    return d;
}

// Records of every shape the readers meet: kafka_sync's own with and
// without the Connect schema, a foreign producer's, and ones only jansson
// reads. Mutated at random by the tests that use them.
std::vector<std::string> decoder_samples() {
    return {
        R"({"before":null,"after":{"id":"1","n":42,"ok":true,"no":false,"z":null,"s":"a\"b\\c\/d\n\t"},)"
        R"("source":{"version":"kafka_sync-1","connector":"kafka_sync","name":"chat1","snapshot":"false","db":"d",)"
        R"("schema":"public","table":"t","origin":"chat1"},"op":"c","transaction":{"id":null,"total_order":1,)"
        R"("data_collection_order":1}})",
        R"({"op":"r","before":null,"after":{"id":-7},"source":{"schema":"s","table":"t","name":"n2","row_ts_ms":1700000000123,"row_origin":"chat3"}})",
        R"({"op":"d","before":{"id":"x"},"after":null,"source":{"schema":"s","table":"t","row_origin":""}})",
        " { \"op\" : \"u\" , \"after\" : { \"k\" : \"\xc3\xa9 \xe6\xbc\xa2\" } , \"source\" : { \"schema\" : \"s\" , "
        "\"table\" : \"t\" } } ",
        // long strings: read eight bytes at a time up to an escape, a multi-byte character or the end
        "{\"op\":\"c\",\"after\":{\"id\":\"abcdefghijklmnopqrstuvwxyz0123456789\",\"v\":"
        "\"0123456\\\"89abcdef\\\\ghijklm\xc3\xa9nopqrstuvwxyz\"},\"source\":{\"schema\":\"public_schema_name\","
        "\"table\":\"t\"}}",
        // multi-byte characters after an escape (the reader's second loop)
        "{\"op\":\"c\",\"after\":{\"k\":\"a\\n\xc3\xa9\\t\xe6\xbc\xa2\"},\"source\":{\"schema\":\"s\",\"table\":\"t\"}"
        "}",
        R"({"op":"c","after":{"id":1.5,"j":{"a":1}},"source":{"schema":"s","table":"t"}})",
        R"({"op":"c","after":{"id":"\u00e9"},"source":{"schema":"s","table":"t"}})",
        R"({"op":"c","after":{"id":"1","id":"2"},"source":{"schema":"s","table":"t"}})",
        R"({"op":"c","after":{"id":01,"m":-0},"source":{"schema":"s","table":"t"}})",
        R"({"schema":{},"payload":{"op":"c","after":{"id":"1"},"source":{"schema":"s","table":"t"}}})",
        // the Connect wrapper: the encoder's own (most bytes changed land in its schema), and schemas
        // of every kind of JSON value (jansson's checks of what the plain reader passes over)
        encoded_with_schema(),
        encoded_with_schema(),
        " { \"payload\" : {\"op\":\"c\",\"after\":{\"id\":\"1\"},\"source\":{\"schema\":\"s\",\"table\":\"t\"}} , "
        "\"schema\" : { \"a\" : [ 1 , -20 , true , false , null , \"x\\\"\\\\\\/\\b\\f\\n\\r\\t\" , { } , [ ] ] ,"
        " \"b\" : { \"c\" : \"\xc3\xa9\xe6\xbc\xa2\xf0\x90\x80\x80\" , \"d\" : 0 } } } ",
        R"({"schema":{"u":"\u00e9","r":1.5,"e":1e3,"big":1234567890123456789,"k\n":1},"payload":{"op":"c","after":{"id":"1"},"source":{"schema":"s","table":"t"}}})",
        R"({"schema":{"a":{"b":1,"c":2,"b":3}},"payload":{"op":"c","after":{"id":"1"},"source":{"schema":"s","table":"t"}}})",
        R"({"schema":null,"payload":{"op":"c","after":{"id":"1"},"source":{"schema":"s","table":"t"}},"op":"d"})",
        R"({"schema":"s","payload":{"op":"c","after":{"id":"1"},"source":{"schema":"s","table":"t"}},"schema":1})",
        // the edges of UTF-8 (U+0080, U+07FF, U+0800, U+D7FF, U+E000, U+FFFF, U+10000, U+10FFFF): one byte
        // changed makes an overlong form, a surrogate or a code point beyond U+10FFFF
        "{\"op\":\"c\",\"after\":{\"k\":\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf"
        "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"},\"source\":{\"schema\":\"s\",\"table\":\"t\"}}",
    };
}

// A byte changed, removed, or the value cut short, at random (i > 0; the
// sample itself for i == 0).
std::string mutated(const std::string &sample, int i, uint32_t &seed) {
    auto rnd = [&]() {
        seed = seed * 1103515245u + 12345u;
        return (seed >> 16) & 0x7fff;
    };
    const char noise[] = " \"{}:,0a\\-.tn\x80\xff\x8f\x90\x9f\xa0\xbf\xc0\xc1\xed\xf4\xf5\xf7";
    std::string v = sample;
    if (i > 0 && !v.empty()) {
        const size_t at = rnd() % v.size();
        switch (rnd() % 3) {
        case 0: v[at] = noise[rnd() % (sizeof(noise) - 1)]; break;
        case 1: v.erase(at, 1); break;
        default: v.resize(at); break;
        }
    }
    return v;
}

// The in-place reader of plain records and jansson agree on everything the
// former accepts; it gives up (for jansson) on the rest, never crashing.
void plain_reader_agrees_with_jansson_or_gives_up() {
    uint32_t seed = 12345;
    int plain_ok = 0;
    // the fast reader is reused from record to record, as the apply functions use it
    RecordDecoder fast;
    DecodedRecord a;
    for (const std::string &sample : decoder_samples()) {
        for (int i = 0; i < 400; i++) {
            const std::string v = mutated(sample, i, seed);
            RecordDecoder slow;
            DecodedRecord b;
            std::string ea, eb;
            const bool ok_a = fast.decode_value(v.data(), v.size(), a, ea);
            const bool ok_b = slow.decode_value(v.data(), v.size(), b, eb, false);
            CHECK(ok_a == ok_b);
            if (ok_a && ok_b) {
                CHECK(describe(a) == describe(b));
                plain_ok++;
            } else {
                CHECK(ea == eb);
            }
        }
    }
    CHECK(plain_ok > 300); // unmutated samples and harmless mutations
}

// The sidecar hands the apply functions the payload alone of a Connect
// record whose schema passed (connect_payload): whatever the record, hostile
// ones included, the payload decodes to what the whole record decodes to,
// and a record that decodes to nothing gives a payload that decodes to nothing.
void a_connect_payload_decodes_as_its_whole_record() {
    uint32_t seed = 777;
    ConnectSchemas schemas; // one for all, as the sidecar's consumer keeps it
    RecordDecoder whole_reader, payload_reader;
    DecodedRecord a, b;
    int unwrapped = 0, unwrapped_ok = 0;
    for (const std::string &sample : decoder_samples()) {
        for (int i = 0; i < 400; i++) {
            const std::string v = mutated(sample, i, seed);
            const std::optional<std::string_view> payload = connect_payload(v, schemas);
            if (!payload)
                continue;
            unwrapped++;
            std::string ea, eb;
            const bool ok_a = whole_reader.decode_value(v.data(), v.size(), a, ea);
            const bool ok_b = payload_reader.decode_value(payload->data(), payload->size(), b, eb);
            CHECK(ok_a == ok_b);
            if (ok_a && ok_b) {
                CHECK(describe(a) == describe(b));
                unwrapped_ok++;
            }
        }
    }
    CHECK(unwrapped_ok > 200); // the wrapped samples and their harmless mutations (298 of 477 when written)
    CHECK(unwrapped > unwrapped_ok);
    // what is kept whole: no wrapper, other members, a schema the check gives up on, a payload
    // that a reader would unwrap again
    const std::string p = R"({"op":"c","after":{"id":"1"},"source":{"schema":"s","table":"t"}})";
    for (const std::string &v : std::vector<std::string>{
             p, "{\"schema\":{},\"payload\":" + p + ",\"x\":1}", "{\"payload\":" + p + "}",
             "{\"schema\":{\"u\":\"\\u00e9\"},\"payload\":" + p + "}",
             "{\"schema\":{},\"payload\":{\"schema\":{},\"payload\":" + p + "}}",
             "{\"schema\":{},\"payload\":{\"op\":\"c\",\"p\\u0061yload\":1}}", "{\"schema\":{},\"payload\":[]}"})
        CHECK(!connect_payload(v, schemas));
    // a payload nested as deep as a record may be, in the record: one level too deep, which the
    // whole record is refused for
    auto nested = [&](size_t levels) {
        std::string v = "1";
        for (size_t i = 0; i < levels; i++)
            v = "[" + v + "]";
        return "{\"schema\":{},\"payload\":{\"op\":\"c\",\"after\":{\"id\":" + v +
               "},\"source\":{\"schema\":\"s\",\"table\":\"t\"}}}";
    };
    for (size_t levels : {size_t(60), size_t(61), size_t(62), size_t(63)}) {
        const std::string v = nested(levels);
        const std::optional<std::string_view> got = connect_payload(v, schemas);
        std::string ea, eb;
        const bool ok_whole = whole_reader.decode_value(v.data(), v.size(), a, ea);
        CHECK(!got || payload_reader.decode_value(got->data(), got->size(), b, eb) == ok_whole);
        CHECK(got.has_value() == ok_whole); // the deepest the record allows is unwrapped, no deeper
    }
    // and what is not: either order, blanks
    const std::string both = " {\n\"payload\" : " + p + " ,\t\"schema\":{\"a\":[1,{}]} } ";
    const std::optional<std::string_view> got = connect_payload(both, schemas);
    CHECK(got && *got == p);
}

// Every row of a table carries the same schema text, so the plain reader
// checks one only once; a record is never accepted for starting like a
// schema seen before, whatever follows it or whatever the previous records were.
void a_connect_schema_seen_before_is_not_checked_again_but_never_trusted_blindly() {
    const std::string payload = R"({"op":"c","after":{"id":"1"},"source":{"schema":"s","table":"t"}})";
    auto wrapped = [&](const std::string &schema) { return "{\"schema\":" + schema + ",\"payload\":" + payload + "}"; };
    const std::string record = encoded_with_schema();
    const std::string schema = record.substr(10, record.find(",\"payload\":") - 10);
    const std::string variants[] = {
        wrapped(schema),       // the schema seen before
        wrapped(schema + "x"), // ... followed by what is no JSON
        wrapped(schema + "1"),
        wrapped(schema + ",\"schema\":{}"), // ... twice
        wrapped("1"),
        wrapped("12"),
        wrapped("1.5"),
        wrapped("\"a\""),
        wrapped("\"a\"b\""),
        wrapped("[1]"),
        wrapped("[1]]"),
        wrapped("{\"a\":1}"),
        wrapped("{\"a\":1,\"a\":2}"),
        "{\"schema\":" + schema + "}", // no payload: the wrapper is no envelope
        wrapped(schema.substr(0, schema.size() - 1)),
    };
    RecordDecoder fast; // one decoder for all, as the apply functions use it: what it saw before stays
    DecodedRecord a, b;
    int in_place = 0;
    for (int round = 0; round < 3; round++) {
        for (const std::string &v : variants) {
            RecordDecoder slow;
            std::string ea, eb;
            const bool ok_a = fast.decode_value(v.data(), v.size(), a, ea);
            const bool ok_b = slow.decode_value(v.data(), v.size(), b, eb, false);
            CHECK(ok_a == ok_b);
            CHECK(ok_a ? describe(a) == describe(b) : ea == eb);
            in_place += fast.read_in_place();
        }
    }
    // read in place each round: the schema seen before, 1, "a", [1], {"a":1}; not 12, which starts
    // like the 1 seen before: jansson reads it
    CHECK(in_place == 3 * 5);
    // a schema changed after it was seen is checked again
    std::string changed = wrapped(schema);
    changed[changed.find("optional")] = 'O';
    std::string err;
    CHECK(fast.decode_value(changed.data(), changed.size(), a, err) && fast.read_in_place());
    changed = wrapped(schema);
    changed.insert(changed.find("\"optional\""), "\"optional\":true,");
    CHECK(!fast.decode_value(changed.data(), changed.size(), a, err) && err.find("duplicate") != std::string::npos);
}

void decoder_rejects_hostile_values_with_a_message() {
    const char *bad[] = {"",
                         "\x00\xff garbage",
                         "[1,2]",
                         "{\"op\":\"x\"}",
                         "{\"op\":\"c\"}",
                         "{\"op\":\"c\",\"source\":{\"schema\":\"public\",\"table\":\"t\"}}",
                         "{\"op\":\"d\",\"source\":{\"schema\":\"public\",\"table\":\"t\"},\"before\":null}",
                         "{\"op\":\"c\",\"op\":\"c\"}"};
    for (const char *v : bad) {
        RecordDecoder dec;
        DecodedRecord rec;
        std::string err;
        CHECK(!dec.decode_value(v, strlen(v), rec, err));
        CHECK(!err.empty());
    }
    // numbers from a foreign (Debezium) producer become their JSON text
    const char *debezium =
        "{\"op\":\"c\",\"source\":{\"schema\":\"s\",\"table\":\"t\"},\"after\":{\"id\":42,\"ok\":true}}";
    RecordDecoder dec;
    DecodedRecord rec;
    std::string err;
    CHECK(dec.decode_value(debezium, strlen(debezium), rec, err));
    CHECK(rec.after.size() == 2 && std::string(rec.after[0].value) == "42" &&
          std::string(rec.after[1].value) == "true");
}

std::string describe_bytes(const std::string &s) {
    std::string out;
    char buf[4];
    for (unsigned char c : s) {
        snprintf(buf, sizeof(buf), "%02x", c);
        out += buf;
    }
    return out;
}

// PostgreSQL's own rule for UTF-8 text (pg_verify_mbstr: pg_utf_mblen and
// pg_utf8_islegal of src/common/wchar.c, and no NUL), transcribed as the
// reference the decoder must match.
bool postgresql_accepts_utf8(const std::string &s) {
    const auto *p = reinterpret_cast<const unsigned char *>(s.data());
    size_t i = 0;
    while (i < s.size()) {
        const unsigned char c = p[i];
        if (c == 0)
            return false;
        const size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 1;
        if (i + n > s.size())
            return false;
        const unsigned char second = n > 1 ? p[i + 1] : 0;
        for (size_t k = 2; k < n; k++)
            if (p[i + k] < 0x80 || p[i + k] > 0xbf)
                return false;
        if (n > 1) {
            const unsigned char lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
            const unsigned char hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
            if (second < lo || second > hi)
                return false;
        }
        if ((c >= 0x80 && c < 0xc2) || c > 0xf4)
            return false;
        i += n;
    }
    return true;
}

// What a hostile record may cost, in each reader: a bound on linear against
// quadratic work (400,000 members took minutes), not a benchmark.
constexpr double kHostileMaxMs = 100;

// One hostile value through both readers (the fast one and jansson alone):
// the same verdict and the same message from each, each decoded within max_ms.
// inspect: sees the record, if accepted, while its strings live.
bool both_readers_agree(const std::string &v, double max_ms, std::string &error,
                        const std::function<void(const DecodedRecord &)> &inspect = nullptr) {
    RecordDecoder fast, slow;
    DecodedRecord a, b;
    std::string ea, eb;
    const auto t0 = std::chrono::steady_clock::now();
    const bool ok_a = fast.decode_value(v.data(), v.size(), a, ea);
    const auto t1 = std::chrono::steady_clock::now();
    const bool ok_b = slow.decode_value(v.data(), v.size(), b, eb, false);
    const auto t2 = std::chrono::steady_clock::now();
    const double ms_a = std::chrono::duration<double, std::milli>(t1 - t0).count();
    const double ms_b = std::chrono::duration<double, std::milli>(t2 - t1).count();
    CHECK(ms_a < max_ms && ms_b < max_ms);
    if (ms_a >= max_ms || ms_b >= max_ms)
        fprintf(stderr, "  %zu-byte value: %.1f ms fast reader, %.1f ms jansson\n", v.size(), ms_a, ms_b);
    CHECK(ok_a == ok_b);
    CHECK(ok_a ? describe(a) == describe(b) : ea == eb);
    if (inspect && ok_a)
        inspect(a);
    error = ok_a ? std::string() : ea;
    return ok_a && ok_b;
}

std::string record_with_after(const std::string &after_members) {
    return "{\"op\":\"c\",\"after\":{" + after_members + "},\"source\":{\"schema\":\"s\",\"table\":\"t\"}}";
}

// The text a peer sends reaches a table only if PostgreSQL itself would
// accept it: no overlong form, no surrogate, nothing above U+10FFFF, no NUL;
// raw bytes and \u escapes alike, in values and in column names.
void text_is_accepted_exactly_as_postgresql_accepts_it() {
    std::vector<std::string> texts = {
        "\xc0\x80",
        "\xc1\xbf",
        "\xe0\x80\x80",
        "\xe0\x9f\xbf",
        "\xf0\x80\x80\x80",
        "\xf0\x8f\xbf\xbf", // overlong
        "\xed\xa0\x80",
        "\xed\xbf\xbf",
        "\xed\xa0\x80\xed\xb0\x80", // surrogates
        "\xf4\x90\x80\x80",
        "\xf5\x80\x80\x80",
        "\xf7\xbf\xbf\xbf",
        "\xf8\x88\x80\x80\x80",
        "\xff", // beyond U+10FFFF
        "\xc2\x80",
        "\xed\x9f\xbf",
        "\xee\x80\x80",
        "\xef\xbf\xbf",
        "\xf0\x90\x80\x80",
        "\xf4\x8f\xbf\xbf", // valid
        std::string("a\0b", 3),
    };
    const size_t named = texts.size();
    // every two-byte sequence, and three- and four-byte ones around each boundary
    const unsigned char follow[] = {0x00, 'a', 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff};
    for (int c = 0x80; c <= 0xff; c++) {
        for (int d = 0x80; d <= 0xff; d++)
            texts.push_back({char(c), char(d)});
        for (unsigned char d : follow)
            for (unsigned char e : follow) {
                texts.push_back({char(c), char(d), char(e)});
                texts.push_back({char(c), char(d), char(0x80), char(e)});
            }
    }
    int accepted = 0;
    for (size_t i = 0; i < texts.size(); i++) {
        // short strings and long ones (the reader's eight-bytes-at-a-time loop)
        const std::string text = i % 2 ? texts[i] : "abcdefghij" + texts[i] + "klmnopqrstuvwxyz";
        const bool legal = postgresql_accepts_utf8(text);
        std::string err, value;
        const bool ok = both_readers_agree(record_with_after("\"k\":\"" + text + "\""), kHostileMaxMs, err,
                                           [&](const DecodedRecord &r) { value = r.after.at(0).value; });
        CHECK(ok == legal);
        if (ok != legal)
            fprintf(stderr, "  text %s: decoder %s, PostgreSQL %s\n", describe_bytes(text).c_str(),
                    ok ? "accepts" : "rejects", legal ? "accepts" : "rejects");
        if (ok && legal) {
            CHECK(value == text);
            accepted++;
        }
        if (i < named) // also as a column name
            CHECK(both_readers_agree(record_with_after("\"" + texts[i] + "\":\"v\""), kHostileMaxMs, err) ==
                  postgresql_accepts_utf8(texts[i]));
    }
    CHECK(accepted > 1000);
    // \u escapes: a surrogate pair is one character; a lone surrogate or \u0000 no text at all
    const std::pair<const char *, const char *> escapes[] = {
        {"\\u00e9", "\xc3\xa9"},
        {"\\uffff", "\xef\xbf\xbf"},
        {"\\ud800\\udc00", "\xf0\x90\x80\x80"},
        {"\\uDBFF\\uDFFF", "\xf4\x8f\xbf\xbf"},
        {"\\u0000", nullptr},
        {"a\\u0000b", nullptr},
        {"\\ud800", nullptr},
        {"\\udc00", nullptr},
        {"\\ud800x", nullptr},
        {"\\ud800\\u0041", nullptr},
        {"\\udc00\\ud800", nullptr},
    };
    for (const auto &[escaped, expected] : escapes) {
        std::string err, value;
        const std::string v = record_with_after(std::string("\"k\":\"") + escaped + "\"");
        const bool ok =
            both_readers_agree(v, kHostileMaxMs, err, [&](const DecodedRecord &r) { value = r.after.at(0).value; });
        CHECK(ok == (expected != nullptr));
        CHECK(!ok || value == expected);
        CHECK(ok || !err.empty());
    }
    // headers: a value that is not PostgreSQL text is kept as its bytes' hex in the dead-letter JSON
    for (const char *bad : {"\xed\xa0\x80", "\xc0\xaf", "\xf5\x80\x80\x80", "\xf4\x90\x80\x80"}) {
        DecodedHeaders h;
        std::string err;
        const std::string bytes = header_bytes({{"note", bad}});
        CHECK(decode_headers(bytes.data(), bytes.size(), h, err, true));
        CHECK(h.as_json.find("\"note\":\"\\\\x") != std::string::npos);
    }
}

std::string members(size_t n, const char *prefix, const char *value) {
    std::string out;
    out.reserve(n * 14);
    for (size_t i = 0; i < n; i++)
        out += (i ? ",\"" : "\"") + std::string(prefix) + std::to_string(i) + "\":" + value;
    return out;
}

// A peer topic's worst: what would cost minutes of CPU under the apply lock
// is rejected, by the fast reader and jansson alike, in time linear in its size.
void hostile_records_are_rejected_alike_and_in_linear_time() {
    constexpr double kMaxMs = kHostileMaxMs;
    std::string err;
    const std::string source = "\"source\":{\"schema\":\"s\",\"table\":\"t\"}";
    // 400,000 columns (4 MB): far more than a table can have
    CHECK(!both_readers_agree(record_with_after(members(400000, "c", "\"1\"")), kMaxMs, err));
    CHECK(err.find("1600") != std::string::npos);
    // ... in the envelope, in source, and with a duplicate at the very end
    CHECK(!both_readers_agree("{\"op\":\"c\",\"after\":{\"id\":1}," + source + "," + members(400000, "x", "0") + "}",
                              kMaxMs, err));
    CHECK(!both_readers_agree("{\"op\":\"c\",\"after\":{\"id\":1},\"source\":{\"schema\":\"s\",\"table\":\"t\"," +
                                  members(400000, "x", "0") + "}}",
                              kMaxMs, err));
    CHECK(!both_readers_agree(record_with_after(members(400000, "c", "\"1\"") + ",\"c0\":\"2\""), kMaxMs, err));
    // a table's widest row is accepted; a duplicate at the end of it is not
    size_t columns = 0;
    CHECK(both_readers_agree(record_with_after(members(1600, "c", "\"1\"")), kMaxMs, err,
                             [&](const DecodedRecord &r) { columns = r.after.size(); }));
    CHECK(columns == 1600);
    CHECK(!both_readers_agree(record_with_after(members(1599, "c", "\"1\"") + ",\"c0\":\"2\""), kMaxMs, err));
    CHECK(err.find("duplicate") != std::string::npos);
    CHECK(!both_readers_agree(record_with_after(members(1601, "c", "\"1\"")), kMaxMs, err));
    CHECK(err.find("more than 1600 members") != std::string::npos);
    // nesting: 64 levels are plenty (a record is an envelope of flat rows); 100,000 are refused
    auto nested = [&](size_t levels) { // the value of column k, inside the record's two objects
        return record_with_after("\"k\":" + std::string(levels - 2, '[') + std::string(levels - 2, ']'));
    };
    CHECK(both_readers_agree(nested(64), kMaxMs, err));
    CHECK(!both_readers_agree(nested(65), kMaxMs, err));
    CHECK(err.find("64") != std::string::npos);
    CHECK(!both_readers_agree(nested(100000), kMaxMs, err));
    CHECK(!both_readers_agree(record_with_after("\"k\":" + std::string(100000, '{')), kMaxMs, err));
    // a tree of a million values is as large as jansson is asked to build
    std::string many = "\"k\":[0";
    for (size_t i = 0; i < kMaxJsonValues; i++)
        many += ",0";
    CHECK(!both_readers_agree(record_with_after(many + "]"), kMaxMs, err));
    CHECK(err.find("more than 1048576 JSON values") != std::string::npos);
    // ... and all of it in a Connect schema, which the plain reader passes over without reading
    auto in_schema = [](const std::string &schema) {
        return "{\"schema\":" + schema + ",\"payload\":" + record_with_after("\"k\":\"v\"") + "}";
    };
    CHECK(!both_readers_agree(in_schema("{" + members(400000, "c", "\"1\"") + "}"), kMaxMs, err));
    CHECK(err.find("1600") != std::string::npos);
    CHECK(!both_readers_agree(in_schema("{" + members(1599, "c", "\"1\"") + ",\"c0\":\"2\"}"), kMaxMs, err));
    CHECK(err.find("duplicate") != std::string::npos);
    CHECK(!both_readers_agree(in_schema("{" + members(400000, "c", "\"1\"") + ",\"c0\":\"2\"}"), kMaxMs, err));
    CHECK(both_readers_agree(in_schema("{" + members(1600, "c", "\"1\"") + "}"), kMaxMs, err));
    CHECK(both_readers_agree(in_schema(std::string(63, '[') + std::string(63, ']')), kMaxMs, err));
    CHECK(!both_readers_agree(in_schema(std::string(64, '[') + std::string(64, ']')), kMaxMs, err));
    CHECK(err.find("64") != std::string::npos);
    CHECK(!both_readers_agree(in_schema(std::string(100000, '{')), kMaxMs, err));
    CHECK(!both_readers_agree(in_schema(many + "]}"), kMaxMs, err)); // "k":[0,0,... as a member
    CHECK(err.find("more than 1048576 JSON values") != std::string::npos);
    std::string almost = "[0";
    for (size_t i = 0; i < kMaxJsonValues - 12; i++)
        almost += ",0";
    // the limit is the record's, not the schema's (jansson builds the tree of a million values: not quick)
    CHECK(both_readers_agree(in_schema(almost + "]"), 10 * kMaxMs, err));
    CHECK(!both_readers_agree(in_schema(almost + ",0,0,0]"), kMaxMs, err));
    // a long text is no hostile record: a 4 MB value is accepted
    CHECK(both_readers_agree(record_with_after("\"k\":\"" + std::string(4 << 20, 'x') + "\""), 10 * kMaxMs, err));
    // the size of a record is bounded before anything is read or copied
    const size_t too_large = (size_t(256) << 20) + 1;
    std::string huge(too_large, ' ');
    RecordDecoder dec;
    DecodedRecord rec;
    CHECK(!dec.decode_value(huge.data(), huge.size(), rec, err));
    CHECK(err.find("268435457") != std::string::npos && err.find("256 MB") != std::string::npos);
}

// A decode under the apply lock can be cancelled: the interrupt check runs
// while a large record decodes (not for a small one), and what it throws
// leaves decode_value as thrown, never as a bad-record error.
int interrupt_checks = 0;
struct Cancelled {};

void decoding_a_large_record_can_be_cancelled() {
    RecordDecoder dec;
    DecodedRecord rec;
    std::string err;
    dec.set_interrupt_check([] { interrupt_checks++; });
    const std::string small = record_with_after("\"k\":\"v\"");
    const std::string large = record_with_after("\"k\":\"" + std::string(4 << 20, 'x') + "\"");
    // a nested value, which jansson writes out again
    const std::string nested = record_with_after("\"k\":[\"" + std::string(1 << 20, 'x') + "\"]");
    for (bool plain_first : {true, false}) {
        interrupt_checks = 0;
        CHECK(dec.decode_value(small.data(), small.size(), rec, err, plain_first) && interrupt_checks == 0);
        CHECK(dec.decode_value(large.data(), large.size(), rec, err, plain_first) && interrupt_checks > 0);
        interrupt_checks = 0;
        CHECK(dec.decode_value(nested.data(), nested.size(), rec, err, plain_first) && interrupt_checks >= 2);
    }
    dec.set_interrupt_check([] { throw Cancelled(); });
    for (const std::string *v : {&large, &nested}) {
        for (bool plain_first : {true, false}) {
            bool cancelled = false;
            err.clear();
            try {
                dec.decode_value(v->data(), v->size(), rec, err, plain_first);
            } catch (const Cancelled &) {
                cancelled = true;
            }
            CHECK(cancelled && err.empty());
        }
    }
    // wherever it is cancelled: reading the text, in jansson's parse, writing a nested value out again
    dec.set_interrupt_check([] { interrupt_checks++; });
    const std::string nested_300k = record_with_after("\"k\":[\"" + std::string(300 << 10, 'x') + "\"]");
    interrupt_checks = 0;
    CHECK(dec.decode_value(nested_300k.data(), nested_300k.size(), rec, err, false));
    const int checks_in_decode = interrupt_checks;
    CHECK(checks_in_decode >= 9); // one per 64 KB: 300 KB read twice (checked, parsed) and written out once
    static int cancel_at;
    dec.set_interrupt_check([] {
        if (++interrupt_checks == cancel_at)
            throw Cancelled();
    });
    for (cancel_at = 1; cancel_at <= checks_in_decode; cancel_at++) {
        interrupt_checks = 0;
        bool cancelled = false;
        try {
            dec.decode_value(nested_300k.data(), nested_300k.size(), rec, err, false);
        } catch (const Cancelled &) {
            cancelled = true;
        }
        CHECK(cancelled);
        CHECK(dec.decode_value(small.data(), small.size(), rec, err) && rec.after.size() == 1);
    }
    // the decoder goes on with the next record
    dec.set_interrupt_check(nullptr);
    CHECK(dec.decode_value(large.data(), large.size(), rec, err) && rec.after.size() == 1 &&
          strlen(rec.after[0].value) == 4u << 20);
}

void headers_decode_lsn_and_survive_garbage() {
    DecodedHeaders h;
    std::string err;
    std::string bytes = header_bytes({{"kafka_sync.lsn", "1/A0"},
                                      {"kafka_sync.origin", "chat2"},
                                      {"kafka_sync.commit_ts", "1700000000123"},
                                      {"other", nullptr}});
    CHECK(decode_headers(bytes.data(), bytes.size(), h, err, true));
    CHECK(h.has_lsn && h.lsn == ((uint64_t(1) << 32) | 0xA0));
    CHECK(h.has_commit_ts && h.commit_ts_ms == 1700000000123);
    CHECK(h.origin == "chat2");
    CHECK(h.as_json.find("\"other\":null") != std::string::npos);
    DecodedHeaders h2;
    std::string truncated = bytes.substr(0, bytes.size() - 3);
    CHECK(!decode_headers(truncated.data(), truncated.size(), h2, err));
    DecodedHeaders h3;
    std::string binary = header_bytes({{"bin", "\xff\xfe"}});
    CHECK(decode_headers(binary.data(), binary.size(), h3, err, true));
    CHECK(h3.as_json.find("\\\\xfffe") != std::string::npos);
    // the producer writes the lsn header as PostgreSQL prints an LSN
    CHECK(format_lsn(0x16B374D848ull) == "16/B374D848" && format_lsn(0) == "0/0" &&
          format_lsn(0xFFFFFFFF00000001ull) == "FFFFFFFF/1");
    // a decoded header set is reset by the next decode
    CHECK(decode_headers(binary.data(), binary.size(), h, err));
    CHECK(!h.has_lsn && !h.has_commit_ts && h.origin.empty() && h.as_json.empty());
    int64_t v = 0;
    CHECK(parse_int64("1700000000123", v) && v == 1700000000123 && parse_int64("-5", v) && v == -5);
    CHECK(!parse_int64("", v) && !parse_int64("-", v) && !parse_int64("12a", v) && !parse_int64(" 1", v) &&
          !parse_int64("1234567890123456789", v));
    uint64_t lsn;
    CHECK(!parse_lsn("0/", lsn) && !parse_lsn("x/1", lsn) && !parse_lsn("1/2/3", lsn) && parse_lsn("0/0", lsn));
}

} // namespace

void secrets_file_adds_its_properties_and_never_shows_a_value() {
    char path[] = "/tmp/ks_unit_secrets_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char text[] = "# comment\n\n  sasl.password =  p@ss=word  \nsasl.username=chat\n";
    CHECK(write(fd, text, sizeof(text) - 1) == (ssize_t)(sizeof(text) - 1));
    close(fd);
    NodeKafkaSettings s;
    std::string err, hint;
    CHECK(parse_node_kafka_config({{"linger.ms", "5"}, {"kafka_sync.secrets_file", path}}, s, err, hint));
    CHECK(s.secrets_file == path);
    CHECK(s.rdkafka.size() == 4); // + kinit off, last
    CHECK(s.rdkafka.size() == 4 &&
          s.rdkafka[1] == std::make_pair(std::string("sasl.password"), std::string("p@ss=word")));

    // a property librdkafka refuses: named, its value not shown
    FILE *f = fopen(path, "w");
    fputs("socket.timeout.ms=not-a-number-s3cret\n", f);
    fclose(f);
    CHECK(!parse_node_kafka_config({{"kafka_sync.secrets_file", path}}, s, err, hint));
    CHECK(err.find("socket.timeout.ms") != std::string::npos && err.find("s3cret") == std::string::npos);
    // fixed properties and kafka_sync settings are not for the file
    f = fopen(path, "w");
    fputs("acks=1\n", f);
    fclose(f);
    CHECK(!parse_node_kafka_config({{"kafka_sync.secrets_file", path}}, s, err, hint));
    f = fopen(path, "w");
    fputs("kafka_sync.schemas=false\n", f);
    fclose(f);
    CHECK(!parse_node_kafka_config({{"kafka_sync.secrets_file", path}}, s, err, hint));
    // not key=value: the line number, not the line
    f = fopen(path, "w");
    fputs("sasl.password\n=x\n", f);
    fclose(f);
    std::vector<std::pair<std::string, std::string>> pairs;
    CHECK(!read_secrets_file(path, pairs, err) && err.find("line 1") != std::string::npos);
    // a line that is no key=value with a property name: its "key" is not echoed
    f = fopen(path, "w");
    fputs("password: hunter2=x\n", f);
    fclose(f);
    CHECK(!read_secrets_file(path, pairs, err) && err.find("hunter2") == std::string::npos);
    // what librdkafka says is masked with the file's values
    f = fopen(path, "w");
    fputs("sasl.username=chat-user\n", f);
    fclose(f);
    CHECK(parse_node_kafka_config({{"kafka_sync.secrets_file", path}}, s, err, hint));
    CHECK(mask_secrets("auth failed for chat-user at b1", s.secret_values) == "auth failed for **** at b1");
    unlink(path);
    CHECK(!parse_node_kafka_config({{"kafka_sync.secrets_file", path}}, s, err, hint));
    CHECK(err.find("cannot read the secrets file") != std::string::npos);
    CHECK(!parse_node_kafka_config({{"kafka_sync.secrets_file", "relative/path"}}, s, err, hint));
}

int main() {
    const std::vector<std::pair<const char *, std::function<void()>>> tests = {
        {"slot confirms only a fully acknowledged prefix", slot_confirms_only_a_fully_acknowledged_prefix},
        {"open transaction blocks confirmation even when acknowledged",
         open_transaction_blocks_confirmation_even_when_acknowledged},
        {"empty transactions confirm in order", empty_transactions_confirm_in_order},
        {"snapshot pseudo-transaction completes only when acknowledged",
         snapshot_pseudo_transaction_completes_only_when_acknowledged},
        {"inflight rejects out-of-order and unknown", inflight_rejects_out_of_order_and_unknown},
        {"JSON strings are escaped and round-trip", json_strings_are_escaped_and_roundtrip},
        {"update record has the Debezium envelope and omits absent columns",
         update_record_has_debezium_envelope_and_omits_absent_columns},
        {"schemaless records are bare payloads without volatile fields",
         schemaless_records_are_bare_payloads_without_volatile_fields},
        {"snapshot record carries the row version in source", snapshot_record_carries_the_row_version_in_source},
        {"unknown row version is left out", unknown_row_version_is_left_out},
        {"table without key has no Kafka key", table_without_key_has_no_kafka_key},
        {"kafka_config accepts librdkafka properties and own settings",
         kafka_config_accepts_librdkafka_properties_and_own_settings},
        {"kafka_config rejects typos and fixed properties without leaking secrets",
         kafka_config_rejects_typos_and_fixed_properties_without_leaking_secrets},
        {"decoder reads what the encoder writes", decoder_reads_what_the_encoder_writes},
        {"decoder rejects hostile values with a message", decoder_rejects_hostile_values_with_a_message},
        {"plain reader agrees with jansson or gives up", plain_reader_agrees_with_jansson_or_gives_up},
        {"a Connect payload decodes as its whole record", a_connect_payload_decodes_as_its_whole_record},
        {"a Connect schema seen before is not checked again but never trusted blindly",
         a_connect_schema_seen_before_is_not_checked_again_but_never_trusted_blindly},
        {"text is accepted exactly as PostgreSQL accepts it", text_is_accepted_exactly_as_postgresql_accepts_it},
        {"hostile records are rejected alike and in linear time",
         hostile_records_are_rejected_alike_and_in_linear_time},
        {"decoding a large record can be cancelled", decoding_a_large_record_can_be_cancelled},
        {"headers decode the LSN and survive garbage", headers_decode_lsn_and_survive_garbage},
        {"secrets file adds its properties and never shows a value",
         secrets_file_adds_its_properties_and_never_shows_a_value},
    };
    for (const auto &[name, fn] : tests) {
        int before = failures;
        fn();
        printf("%s %s\n", failures == before ? "ok  " : "FAIL", name);
    }
    printf("%d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
