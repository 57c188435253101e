// Unit tests of the sidecar's pure parts: grouping records into source
// transactions and local transactions (txn_assembler), the binary array and
// header encodings sent to apply_chunk, consumer settings and log masking.
// No PostgreSQL, no Kafka: `make test/unit/sidecar_tests && test/unit/sidecar_tests`.

#include "check.hpp"
#include "kafka_stats.hpp"
#include "log.hpp"
#include "pg_array.hpp"
#include "record.hpp"
#include "stream_tracker.hpp"
#include "subscription.hpp"
#include "txn_assembler.hpp"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

using unit_check::checks;
using unit_check::failures;

#define CHECK_EQ(actual, expected)                                                                                     \
    do {                                                                                                               \
        checks++;                                                                                                      \
        const std::string a_ = (actual), e_ = (expected);                                                              \
        if (a_ != e_) {                                                                                                \
            failures++;                                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n  got:      %s\n  expected: %s\n", __FILE__, __LINE__, #actual,  \
                    a_.c_str(), e_.c_str());                                                                           \
        }                                                                                                              \
    } while (0)

using namespace kafka_sync_sidecar;

// A record of source transaction `lsn` at position `seq`; txn_end > 0 marks
// the last record with that count.
Record rec(int64_t offset, uint64_t lsn, int seq, int txn_end = 0, size_t value_size = 10) {
    std::vector<KafkaHeader> h;
    h.push_back({"kafka_sync.origin", std::string("chat1")});
    h.push_back({"kafka_sync.lsn", format_lsn(lsn)});
    h.push_back({"kafka_sync.seq", std::to_string(seq)});
    if (txn_end > 0)
        h.push_back({"kafka_sync.txn_end", std::to_string(txn_end)});
    std::string value(value_size, 'v');
    return make_record(offset, "k", 1, value.data(), value.size(), h);
}

// A record without kafka_sync headers (foreign input).
Record foreign(int64_t offset) {
    return make_record(offset, nullptr, 0, "garbage", 7, {});
}

// The steps as text: S(offsets) a Send (S! when careful), C a Commit, R a Rollback.
std::string trace(TxnAssembler &a) {
    std::string out;
    for (const ApplyStep &s : a.take_steps()) {
        if (!out.empty())
            out += ' ';
        if (s.kind == ApplyStep::Kind::Commit) {
            out += 'C';
        } else if (s.kind == ApplyStep::Kind::Rollback) {
            out += 'R';
        } else {
            out += s.careful ? "S!(" : "S(";
            for (size_t i = 0; i < s.records.size(); i++)
                out += (i ? "," : "") + std::to_string(s.records[i].offset);
            out += ')';
        }
    }
    return out;
}

AssemblerLimits limits(size_t records, size_t bytes = 1u << 30) {
    AssemblerLimits l;
    l.max_records = records;
    l.max_bytes = bytes;
    return l;
}

std::string hex(const std::string &bytes) {
    static const char *digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

// ---- grouping and local transactions ----

void small_transactions_share_one_local_transaction_until_idle() {
    TxnAssembler a(limits(100));
    a.add(rec(0, 100, 1));
    a.add(rec(1, 100, 2, 2));
    a.add(rec(2, 200, 1, 1));
    a.add(rec(3, 300, 1));
    a.add(rec(4, 300, 2, 2));
    CHECK_EQ(trace(a), ""); // more may come: nothing sent yet
    CHECK(a.has_pending());
    a.idle();
    CHECK_EQ(trace(a), "S(0,1,2,3,4) C");
    CHECK(!a.has_pending());
    a.idle();
    CHECK_EQ(trace(a), "");
}

// A snapshot row (kafka_sync.snapshot header) of the snapshot transaction `lsn`.
Record snap(int64_t offset, uint64_t lsn, int seq, int txn_end = 0) {
    std::vector<KafkaHeader> h;
    h.push_back({"kafka_sync.origin", std::string("chat1")});
    h.push_back({"kafka_sync.lsn", format_lsn(lsn)});
    h.push_back({"kafka_sync.seq", std::to_string(seq)});
    h.push_back({"kafka_sync.snapshot", std::string("true")});
    if (txn_end > 0)
        h.push_back({"kafka_sync.txn_end", std::to_string(txn_end)});
    return make_record(offset, "k", 1, "row", 3, h);
}

bool record_reads_snapshot_header() {
    return snap(0, 1, 1).snapshot && !rec(0, 1, 1).snapshot;
}

void snapshot_rows_travel_like_small_transactions_never_streamed() {
    TxnAssembler a(limits(3));
    a.add(rec(0, 100, 1));
    a.add(snap(1, 101, 1)); // the open transaction was a partial copy
    for (int i = 2; i <= 7; i++)
        a.add(snap(i, 101, i, i == 7 ? 7 : 0));
    a.add(rec(8, 200, 1, 1));
    a.idle();
    CHECK_EQ(trace(a), "S(1,2,3) C S(4,5,6) C S(7,8) C");
    CHECK_EQ(std::to_string(a.take_notes().size()), "1");
    CHECK(record_reads_snapshot_header());
}

void incomplete_transaction_is_not_sent_at_idle() {
    TxnAssembler a(limits(100));
    a.add(rec(0, 100, 1, 1));
    a.add(rec(1, 200, 1));
    a.idle();
    CHECK_EQ(trace(a), "S(0) C");
    a.add(rec(2, 200, 2, 2));
    a.idle();
    CHECK_EQ(trace(a), "S(1,2) C");
}

void pipelining_commits_at_the_record_limit() {
    TxnAssembler a(limits(4));
    a.add(rec(0, 100, 1));
    a.add(rec(1, 100, 2, 2));
    a.add(rec(2, 200, 1));
    a.add(rec(3, 200, 2, 2));
    CHECK_EQ(trace(a), "S(0,1,2,3) C");
    a.add(rec(4, 300, 1, 1));
    CHECK_EQ(trace(a), "");
    a.idle();
    CHECK_EQ(trace(a), "S(4) C");
}

void pipelining_commits_at_the_byte_limit() {
    // each record holds 1000 bytes of value (+ key, headers): three pass 2500
    TxnAssembler a(limits(1000, 2500));
    a.add(rec(0, 100, 1, 1, 1000));
    a.add(rec(1, 200, 1, 1, 1000));
    CHECK_EQ(trace(a), "");
    a.add(rec(2, 300, 1, 1, 1000));
    CHECK_EQ(trace(a), "S(0,1) C"); // the third would pass the limit: it starts the next batch
    a.idle();
    CHECK_EQ(trace(a), "S(2) C");
}

void transaction_that_would_overflow_the_batch_starts_the_next_one() {
    TxnAssembler a(limits(4));
    a.add(rec(0, 100, 1));
    a.add(rec(1, 100, 2));
    a.add(rec(2, 100, 3, 3));
    a.add(rec(3, 200, 1));
    a.add(rec(4, 200, 2));
    CHECK_EQ(trace(a), "");
    a.add(rec(5, 200, 3, 3)); // 3 + 3 > 4: never split, the first batch commits alone
    CHECK_EQ(trace(a), "S(0,1,2) C");
    a.idle();
    CHECK_EQ(trace(a), "S(3,4,5) C");
}

void large_transaction_streams_in_chunks_inside_one_local_transaction() {
    TxnAssembler a(limits(3));
    for (int i = 0; i < 7; i++)
        a.add(rec(i, 100, i + 1));
    CHECK(a.streaming());
    CHECK_EQ(trace(a), "S(0,1,2) S(3,4,5)"); // no commit between chunks
    a.idle();
    CHECK_EQ(trace(a), ""); // an open streamed transaction waits for its end
    a.add(rec(7, 100, 8, 8));
    CHECK_EQ(trace(a), "S(6,7) C");
    CHECK(!a.streaming());
}

void large_transaction_commits_waiting_small_ones_first() {
    TxnAssembler a(limits(3));
    a.add(rec(0, 100, 1, 1));
    a.add(rec(1, 200, 1));
    a.add(rec(2, 200, 2));
    CHECK_EQ(trace(a), "");
    a.add(rec(3, 200, 3));
    // the streamed transaction gets a local transaction of its own
    CHECK_EQ(trace(a), "S(0) C S(1,2,3)");
    a.add(rec(4, 200, 4, 4));
    CHECK_EQ(trace(a), "S(4) C");
}

void streaming_stays_within_the_byte_limit() {
    TxnAssembler a(limits(1000, 2500));
    for (int i = 0; i < 5; i++)
        a.add(rec(i, 100, i + 1, 0, 1000));
    a.add(rec(5, 100, 6, 6, 1000));
    CHECK_EQ(trace(a), "S(0,1,2) S(3,4,5) C");
}

void partial_copy_is_discarded_when_the_transaction_starts_over() {
    TxnAssembler a(limits(100));
    a.add(rec(0, 100, 1, 1));
    a.add(rec(1, 200, 1));
    a.add(rec(2, 200, 2)); // producer restarts here; the whole transaction follows
    a.add(rec(3, 200, 1));
    a.add(rec(4, 200, 2));
    a.add(rec(5, 200, 3, 3));
    a.idle();
    CHECK_EQ(trace(a), "S(0,3,4,5) C");
    auto notes = a.take_notes();
    CHECK(notes.size() == 1 && notes[0].find("discarded") != std::string::npos);
}

void partial_copy_is_discarded_when_another_transaction_begins() {
    TxnAssembler a(limits(100));
    a.add(rec(0, 100, 1));
    a.add(rec(1, 100, 2)); // no txn_end: the producer restarted from an earlier LSN
    a.add(rec(2, 90, 1, 1));
    a.add(rec(3, 100, 1));
    a.add(rec(4, 100, 2));
    a.add(rec(5, 100, 3, 3));
    a.idle();
    CHECK_EQ(trace(a), "S(2,3,4,5) C");
    CHECK(a.take_notes().size() == 1);
}

void streamed_partial_copy_is_rolled_back() {
    TxnAssembler a(limits(2));
    a.add(rec(0, 100, 1));
    a.add(rec(1, 100, 2));
    a.add(rec(2, 100, 3));
    CHECK_EQ(trace(a), "S(0,1)");
    a.add(rec(3, 100, 1)); // started over: what was sent is rolled back
    CHECK_EQ(trace(a), "R");
    CHECK(!a.streaming());
    a.add(rec(4, 100, 2));
    a.add(rec(5, 100, 3, 3));
    CHECK_EQ(trace(a), "S(3,4) S(5) C");
}

void duplicate_is_never_in_the_local_transaction_of_its_original() {
    TxnAssembler a(limits(100));
    a.add(rec(0, 100, 1, 1));
    a.add(rec(1, 200, 1, 1));
    a.add(rec(2, 200, 1, 1)); // a duplicate copy of 200 (LSN equal)
    CHECK_EQ(trace(a), "S(0,1) C");
    a.add(rec(3, 150, 1, 1)); // below the 200 now pending again
    CHECK_EQ(trace(a), "S(2) C");
    a.add(rec(4, 300, 1, 1));
    a.idle();
    CHECK_EQ(trace(a), "S(3,4) C");
}

void lsn_order_is_per_local_transaction_only() {
    // Already committed LSNs do not force boundaries: the extension skips them.
    TxnAssembler a(limits(100));
    a.add(rec(0, 500, 1, 1));
    a.idle();
    CHECK_EQ(trace(a), "S(0) C");
    a.add(rec(1, 100, 1, 1));
    a.add(rec(2, 200, 1, 1));
    a.idle();
    CHECK_EQ(trace(a), "S(1,2) C");
}

void record_without_headers_is_a_transaction_of_its_own() {
    TxnAssembler a(limits(100));
    a.add(foreign(0));
    a.add(rec(1, 100, 1));
    a.add(rec(2, 100, 2, 2));
    a.add(foreign(3));
    CHECK(a.has_pending());
    a.idle();
    CHECK_EQ(trace(a), "S(0,1,2,3) C");
    Record f = foreign(9);
    CHECK(!f.has_lsn && f.seq == 0 && !f.txn_end && f.headers.empty());
}

void record_without_headers_inside_a_transaction_does_not_split_it() {
    TxnAssembler a(limits(100));
    a.add(rec(0, 100, 1));
    a.add(foreign(1));
    a.add(rec(2, 100, 2, 2));
    a.idle();
    CHECK_EQ(trace(a), "S(0,1,2) C");
    CHECK(a.take_notes().empty());
}

void invalid_lsn_counts_as_no_lsn() {
    Record r = make_record(0, nullptr, 0, "v", 1,
                           {{"kafka_sync.lsn", std::string("zz/1")}, {"kafka_sync.txn_end", std::string("1")}});
    CHECK(!r.has_lsn);
    Record n = make_record(0, nullptr, 0, "v", 1, {{"kafka_sync.lsn", std::nullopt}});
    CHECK(!n.has_lsn);
    TxnAssembler a(limits(100));
    a.add(std::move(r));
    a.idle();
    CHECK_EQ(trace(a), "S(0) C");
}

void careful_mode_applies_one_source_transaction_per_local_transaction() {
    TxnAssembler a(limits(100));
    a.apply_carefully_through(4);
    CHECK(a.careful());
    a.add(rec(0, 100, 1));
    a.add(rec(1, 100, 2, 2));
    CHECK_EQ(trace(a), "S!(0,1) C");
    a.add(foreign(2));
    CHECK_EQ(trace(a), "S!(2) C");
    a.add(rec(3, 300, 1));
    a.add(rec(4, 300, 2));
    a.add(rec(5, 300, 3, 3)); // began inside the range: careful to its end
    CHECK_EQ(trace(a), "S!(3,4,5) C");
    a.add(rec(6, 400, 1, 1)); // past the failed local transaction: normal again
    CHECK(!a.careful());
    CHECK_EQ(trace(a), "");
    a.add(rec(7, 500, 1, 1));
    a.idle();
    CHECK_EQ(trace(a), "S(6,7) C");
}

void careful_mode_streams_large_transactions_with_the_careful_flag() {
    TxnAssembler a(limits(2));
    a.apply_carefully_through(0);
    a.add(rec(0, 100, 1));
    a.add(rec(1, 100, 2));
    a.add(rec(2, 100, 3, 3));
    CHECK_EQ(trace(a), "S!(0,1) S!(2) C");
}

void finish_commits_complete_and_rolls_back_streamed() {
    TxnAssembler a(limits(100));
    a.add(rec(0, 100, 1, 1));
    a.add(rec(1, 200, 1)); // incomplete, never sent: forgotten
    a.finish();
    CHECK_EQ(trace(a), "S(0) C");
    TxnAssembler b(limits(2));
    b.add(rec(0, 100, 1));
    b.add(rec(1, 100, 2));
    CHECK_EQ(trace(b), "S(0,1)");
    b.finish();
    CHECK_EQ(trace(b), "R");
}

void reset_forgets_everything() {
    TxnAssembler a(limits(2));
    a.apply_carefully_through(10);
    a.add(rec(0, 100, 1, 1));
    a.add(rec(1, 200, 1));
    a.add(rec(2, 200, 2));
    a.reset();
    CHECK(!a.careful() && !a.has_pending() && !a.streaming());
    CHECK_EQ(trace(a), "");
    a.add(rec(2, 200, 2, 2)); // a tail after a re-seek is its own group
    a.idle();
    CHECK_EQ(trace(a), "S(2) C");
}

void odd_record_count_is_noted() {
    TxnAssembler a(limits(100));
    a.add(rec(0, 100, 1));
    a.add(rec(1, 100, 2, 5));
    auto notes = a.take_notes();
    CHECK(notes.size() == 1 && notes[0].find("says 5") != std::string::npos);
    a.idle();
    CHECK_EQ(trace(a), "S(0,1) C");
}

// ---- records and encodings ----

void lsn_text_round_trips() {
    uint64_t lsn = 0;
    CHECK(parse_lsn("0/1BAD398", lsn) && lsn == 0x1BAD398);
    CHECK(parse_lsn("16/B374D848", lsn) && lsn == 0x16B374D848ull);
    CHECK(parse_lsn("FFFFFFFF/FFFFFFFF", lsn) && lsn == ~0ull);
    CHECK(format_lsn(0x16B374D848ull) == "16/B374D848");
    CHECK(format_lsn(0) == "0/0" && format_lsn(0xFFFFFFFF00000001ull) == "FFFFFFFF/1");
    CHECK(!parse_lsn("", lsn));
    CHECK(!parse_lsn("1/", lsn));
    CHECK(!parse_lsn("/1", lsn));
    CHECK(!parse_lsn("123456789/0", lsn));
    CHECK(!parse_lsn("1/2/3", lsn));
    CHECK(!parse_lsn("-1/0", lsn));
}

void record_reads_the_kafka_sync_headers() {
    Record r = rec(42, 0x1BAD398, 3, 3);
    CHECK(r.offset == 42 && r.has_lsn && r.lsn == 0x1BAD398 && r.seq == 3 && r.txn_end && r.txn_records == 3);
    CHECK(r.key && *r.key == "k" && r.value && r.value->size() == 10);
    Record t = make_record(1, nullptr, 0, nullptr, 0, {{"kafka_sync.seq", std::string("x")}});
    CHECK(!t.key && !t.value && t.seq == 0 && !t.txn_end); // a tombstone without a key
    Record e = make_record(1, "", 0, "", 0, {{"kafka_sync.txn_end", std::string("-3")}});
    CHECK(e.key && e.key->empty() && e.value && e.value->empty() && e.txn_end && e.txn_records == 0);
}

// The expected bytes are laid out field by field.
// clang-format off
void headers_are_encoded_for_apply_chunk() {
    std::string blob = encode_headers({{"ab", "xyz", 3}, {"n", nullptr, 0}, {"e", "", 0}});
    CHECK_EQ(hex(blob), "00000002" "6162" "00000003" "78797a"
                        "00000001" "6e" "ffffffff"
                        "00000001" "65" "00000000");
    CHECK(encode_headers({}).empty());
    std::string bin("\0\xff", 2);
    CHECK_EQ(hex(encode_headers({{"b", bin.data(), bin.size()}})), "00000001" "62" "00000002" "00ff");
}

void int8_array_has_postgres_binary_layout() {
    CHECK_EQ(hex(encode_int8_array({1, -2})), "00000001" "00000000" "00000014" // ndim 1, no nulls, int8
                                              "00000002" "00000001"             // 2 elements from 1
                                              "00000008" "0000000000000001"
                                              "00000008" "fffffffffffffffe");
    CHECK_EQ(hex(encode_int8_array({})), "00000000" "00000000" "00000014");
    CHECK_EQ(hex(encode_int8_array({0x0102030405060708ll})).substr(48), "0102030405060708");
}

void bytea_array_has_postgres_binary_layout() {
    std::string a("\x01\x02", 2), empty;
    CHECK_EQ(hex(encode_bytea_array({&a, nullptr, &empty})),
             "00000001" "00000001" "00000011" // ndim 1, has nulls, bytea
             "00000003" "00000001"
             "00000002" "0102"
             "ffffffff"
             "00000000");
    CHECK_EQ(hex(encode_bytea_array({&a})).substr(8, 8), "00000000"); // no nulls
    CHECK_EQ(hex(encode_bytea_array({})), "00000000" "00000000" "00000011");
}

// clang-format on

// ---- subscription settings ----

std::string property(const std::vector<ConsumerProperty> &props, const std::string &name) {
    std::string value = "(unset)";
    for (const auto &p : props)
        if (p.name == name)
            value = p.value; // the last one set wins, as with rd_kafka_conf_set
    return value;
}

void consumer_properties_apply_kafka_config_but_keep_the_guarantees() {
    SubscriptionConfig s;
    s.name = "from_chat2";
    s.brokers = "k1:9092,k2:9092";
    s.kafka_config = R"({"kafka_sync.schemas": false, "security.protocol": "SASL_SSL", "fetch.wait.max.ms": 100,
                         "enable.auto.commit": true, "bootstrap.servers": "evil:1", "check.crcs": true,
                         "queued.max.messages.kbytes": 4096, "nothing": null})";
    std::vector<ConsumerProperty> props;
    std::string error;
    CHECK(consumer_properties(s, props, error));
    CHECK_EQ(property(props, "kafka_sync.schemas"), "(unset)");
    CHECK_EQ(property(props, "nothing"), "(unset)");
    CHECK_EQ(property(props, "security.protocol"), "SASL_SSL");
    CHECK_EQ(property(props, "fetch.wait.max.ms"), "100");
    CHECK_EQ(property(props, "check.crcs"), "true");
    CHECK_EQ(property(props, "queued.max.messages.kbytes"), "4096"); // defaults are overridable
    CHECK_EQ(property(props, "bootstrap.servers"), "k1:9092,k2:9092");
    CHECK_EQ(property(props, "enable.auto.commit"), "false");
    CHECK_EQ(property(props, "enable.auto.offset.store"), "false");
    CHECK_EQ(property(props, "auto.offset.reset"), "error");
    CHECK_EQ(property(props, "group.id"), "kafka_sync_sidecar.from_chat2");

    s.kafka_config = "{}";
    CHECK(consumer_properties(s, props, error));
    CHECK_EQ(property(props, "queued.max.messages.kbytes"), "65536"); // bounded prefetch by default
    CHECK(std::stoll(property(props, "receive.message.max.bytes")) > 50ll * 1024 * 1024);

    s.kafka_config = R"({"sasl.password": {"nested": "s3cret"}})";
    CHECK(!consumer_properties(s, props, error));
    CHECK(error.find("sasl.password") != std::string::npos && error.find("s3cret") == std::string::npos);
    s.kafka_config = "[1]";
    CHECK(!consumer_properties(s, props, error));
}

void properties_that_load_code_or_run_commands_need_the_operators_allowance() {
    SubscriptionConfig s;
    s.name = "from_chat2";
    s.brokers = "k1:9092";
    std::vector<ConsumerProperty> props;
    std::string error;
    for (const char *key : {"plugin.library.paths", "sasl.kerberos.kinit.cmd", "ssl.engine.location", "ssl.providers",
                            "internal.termination.signal", "ssl.engine.id"}) {
        s.kafka_config = std::string(R"({")") + key + R"(": "x"})";
        s.allowed_kafka_properties = "";
        CHECK(!consumer_properties(s, props, error));
        CHECK(error.find(key) != std::string::npos && error.find("allowed_kafka_properties") != std::string::npos);
        s.allowed_kafka_properties = std::string("ssl.ca.location, ") + key;
        CHECK(consumer_properties(s, props, error));
        CHECK_EQ(property(props, key), "x");
    }
    // kinit pastes sasl.kerberos.principal into a shell command: off unless allowed
    s.kafka_config = R"({"sasl.kerberos.principal": "x;touch /tmp/p", "sasl.kerberos.min.time.before.relogin": 1})";
    s.allowed_kafka_properties = "";
    CHECK(consumer_properties(s, props, error));
    CHECK_EQ(property(props, "sasl.kerberos.min.time.before.relogin"), "0");
    s.allowed_kafka_properties = "sasl.kerberos.kinit.cmd";
    CHECK(consumer_properties(s, props, error));
    CHECK_EQ(property(props, "sasl.kerberos.min.time.before.relogin"), "1");
}

void start_offset_comes_from_the_database_first() {
    SubscriptionConfig s;
    int64_t offset = 0;
    std::string error;
    s.start = "earliest";
    CHECK(resolve_start_offset(s, offset, error) && offset == kOffsetBeginning);
    s.start = "latest";
    CHECK(resolve_start_offset(s, offset, error) && offset == kOffsetEnd);
    s.start = "1234";
    CHECK(resolve_start_offset(s, offset, error) && offset == 1234);
    s.next_offset = 77;
    CHECK(resolve_start_offset(s, offset, error) && offset == 77);
    s.next_offset.reset();
    s.start = "-5";
    CHECK(!resolve_start_offset(s, offset, error));
    SubscriptionConfig t = s;
    t.next_offset = 5;
    CHECK(s.same_settings(t));
    t.kafka_config = "{\"x\": 1}";
    CHECK(!s.same_settings(t));
}

void statistics_tell_whether_the_partition_leader_is_connected() {
    const char *up = R"({"brokers": {
        "GroupCoordinator": {"nodeid": 1, "source": "logical", "state": "DOWN"},
        "k1:9092/1": {"nodeid": 1, "source": "configured", "state": "UP"},
        "k2:9092/2": {"nodeid": 2, "source": "learned", "state": "DOWN"}},
      "topics": {"kafka_sync.chat1": {"partitions": {
        "0": {"leader": 1, "fetch_state": "active", "hi_offset": 5309},
        "-1": {"leader": -1, "hi_offset": -1001}}}}})";
    PartitionStats s;
    CHECK(parse_partition_stats(up, strlen(up), "kafka_sync.chat1", s));
    CHECK(s.leader == 1 && s.leader_up && s.fetching && s.high_water == 5309);

    const char *down = R"({"brokers": {
        "GroupCoordinator": {"nodeid": 1, "source": "logical", "state": "UP"},
        "k1:9092/1": {"nodeid": 1, "source": "configured", "state": "CONNECT"}},
      "topics": {"kafka_sync.chat1": {"partitions": {"0": {"leader": 1, "fetch_state": "active", "hi_offset": 7}}}}})";
    CHECK(parse_partition_stats(down, strlen(down), "kafka_sync.chat1", s));
    CHECK(!s.leader_up && s.high_water == 7); // a logical broker's connection is not the leader's

    const char *no_topic = R"({"brokers": {"k1:9092/1": {"nodeid": 1, "source": "configured", "state": "UP"}},
                               "topics": {}})";
    CHECK(parse_partition_stats(no_topic, strlen(no_topic), "kafka_sync.chat1", s));
    CHECK(s.leader == -1 && !s.leader_up && s.high_water == -1);
    CHECK(!parse_partition_stats("{", 1, "t", s));
}

// ---- logging ----

// libpq 15's secret keywords (dispchar "*"); the sidecar reads them from
// libpq, so a keyword a later libpq adds is masked too, like this one.
const std::vector<std::string> kSecretKeywords = {"password", "sslpassword", "oauth_client_secret"};

std::string masked(const std::string &dsn) {
    return mask_conninfo(dsn, kSecretKeywords);
}

void every_libpq_secret_in_a_keyword_connection_string_is_masked() {
    CHECK_EQ(masked("host=db dbname=chat1 password=s3cret user=x"), "host=db dbname=chat1 password=**** user=x");
    CHECK_EQ(masked("host=db sslpassword=k3y sslkey=/k.pem"), "host=db sslpassword=**** sslkey=/k.pem");
    CHECK_EQ(masked("oauth_client_secret=x1 password=p1 sslpassword=s1"),
             "oauth_client_secret=**** password=**** sslpassword=****");
    // quoted values with escapes, blanks around "=", tabs and newlines as separators
    CHECK_EQ(masked("password = 'a b\\' c' host=db"), "password = **** host=db");
    CHECK_EQ(masked("host=db\n\tpassword=\t'x y'\nsslpassword=z\\ z dbname=d"),
             "host=db\n\tpassword=\t****\nsslpassword=**** dbname=d");
    CHECK_EQ(masked("password=''"), "password=****");
    CHECK_EQ(masked("password="), "password=****");
    // a keyword is matched whole, as libpq matches it
    CHECK_EQ(masked("dbname=passwords user=password"), "dbname=passwords user=password");
    CHECK_EQ(masked("application_name=sslpassword passfile=/p"), "application_name=sslpassword passfile=/p");
    CHECK_EQ(masked("host=db dbname=chat1"), "host=db dbname=chat1");
    // what libpq takes as a database name is not a connection string
    CHECK_EQ(masked("chat1"), "chat1");
    CHECK_EQ(masked(""), "");
}

void every_libpq_secret_in_a_uri_is_masked() {
    CHECK_EQ(masked("postgresql://ann:s3cret@db:5432/chat1"), "postgresql://ann:****@db:5432/chat1");
    CHECK_EQ(masked("postgres://ann:s3cret@db/chat1"), "postgres://ann:****@db/chat1");
    CHECK_EQ(masked("postgresql://ann@db/chat1"), "postgresql://ann@db/chat1");
    CHECK_EQ(masked("postgresql://:s3cret@/chat1?host=/tmp"), "postgresql://:****@/chat1?host=/tmp");
    // a "?" or ":" in the password ends nothing: libpq looks for the "@"
    CHECK_EQ(masked("postgresql://ann:s3?c:ret@db/chat1"), "postgresql://ann:****@db/chat1");
    CHECK_EQ(masked("postgresql://db/chat1?user=ann&password=s3cret&sslmode=require"),
             "postgresql://db/chat1?user=ann&password=****&sslmode=require");
    CHECK_EQ(masked("postgresql://db/chat1?sslpassword=k3y&sslkey=/k.pem"),
             "postgresql://db/chat1?sslpassword=****&sslkey=/k.pem");
    // a percent-encoded keyword is still that keyword
    CHECK_EQ(masked("postgresql://db/chat1?pass%77ord=s3cret"), "postgresql://db/chat1?pass%77ord=****");
    CHECK_EQ(masked("postgresql://db/chat1?user=ann@example.com"), "postgresql://db/chat1?user=ann@example.com");
    // an unencoded "/" in the password: libpq reads port and dbname from it, still not shown
    CHECK_EQ(masked("postgresql://ann:pa/ss@db/chat1"), "postgresql://ann:****@db/chat1");
}

void a_connection_string_that_does_not_parse_shows_no_password() {
    // an unquoted blank: libpq stops at "b" (missing "="); the rest is masked
    CHECK_EQ(masked("host=db password=s3 cret dbname=chat1"), "host=db password=**** ****");
    CHECK_EQ(masked("host=db password='a b dbname=chat1"), "host=db password=****");
    CHECK_EQ(masked("postgresql://db/chat1?user=ann&s3cret&password=x"), "postgresql://db/chat1?user=ann&****");
    // libpq's messages quote the piece it stumbled on, or the whole URI
    CHECK_EQ(mask_conninfo_message("missing \"=\" after \"cret\" in connection info string",
                                   "password=s3 cret dbname=x", kSecretKeywords),
             "missing \"=\" after \"****\" in connection info string");
    CHECK_EQ(mask_conninfo_message("invalid connection option \"pasword\"", "host=db pasword=x", kSecretKeywords),
             "invalid connection option \"pasword\"");
    CHECK_EQ(mask_conninfo_message("invalid percent-encoded token: \"s3%zz\"", "postgresql://ann:s3%zz@db/chat1",
                                   kSecretKeywords),
             "invalid percent-encoded token: \"****\"");
    CHECK_EQ(mask_conninfo_message("unexpected character \"x\" at position 27 in URI (expected \":\" or \"/\"): "
                                   "\"postgresql://ann:s3cret@[::1]x\"",
                                   "postgresql://ann:s3cret@[::1]x", kSecretKeywords),
             "unexpected character \"x\" at position 27 in URI (expected \":\" or \"/\"): "
             "\"postgresql://ann:****@[::1]x\"");
    // a decoded value, wherever it is
    CHECK_EQ(mask_conninfo_message("cannot use 'a b' or a b here", "password='a b'", kSecretKeywords),
             "cannot use **** or **** here");
    CHECK_EQ(mask_conninfo_message("could not translate host name \"db\"", "host=db password=s3cret", kSecretKeywords),
             "could not translate host name \"db\"");
}

void passwords_never_reach_the_log() {
    CHECK_EQ(mask_values("Invalid value \"s3cret\" for sasl.password", {"s3cret"}),
             "Invalid value \"****\" for sasl.password");
    CHECK_EQ(one_line("server closed the connection\n\tThis probably means\n"),
             "server closed the connection This probably means");
}

// A record of streamed transaction xid: a change (subxid, seq), its commit
// (lsn, txn_end = records streamed) or an abort (subxid).
Record streamed(int64_t offset, const char *event, uint32_t xid, uint32_t subxid, int seq = 0, uint64_t lsn = 0,
                int txn_end = 0) {
    std::vector<KafkaHeader> h;
    h.push_back({"kafka_sync.origin", std::string("chat1")});
    h.push_back({"kafka_sync.xid", std::to_string(xid)});
    h.push_back({"kafka_sync.stream", std::string(event)});
    if (strcmp(event, "commit") != 0)
        h.push_back({"kafka_sync.subxid", std::to_string(subxid)});
    if (seq > 0)
        h.push_back({"kafka_sync.seq", std::to_string(seq)});
    if (lsn > 0) {
        h.push_back({"kafka_sync.lsn", format_lsn(lsn)});
        h.push_back({"kafka_sync.commit_ts", std::string("1700000000000")});
        h.push_back({"kafka_sync.txn_end", std::to_string(txn_end)});
    }
    const bool change = strcmp(event, "change") == 0;
    return make_record(offset, change ? "k" : nullptr, change ? 1 : 0, change ? "row" : nullptr, change ? 3 : 0, h);
}

StreamTracker::Outcome feed(StreamTracker &t, Record r, uint64_t applied_lsn) {
    return t.add(r, applied_lsn);
}

std::string kind_of(const StreamTracker::Outcome &o) {
    switch (o.kind) {
    case StreamTracker::Outcome::Kind::Wait: return "wait";
    case StreamTracker::Outcome::Kind::Replay: return "replay";
    case StreamTracker::Outcome::Kind::Skip: return "skip";
    case StreamTracker::Outcome::Kind::Foreign: return "foreign";
    }
    return "?";
}

// The offsets a replay applies, of the records in [from, to].
std::string replayed(const StreamReplay &r, const std::vector<Record> &records) {
    std::string out;
    for (const Record &rec : records)
        if (r.applies(rec))
            out += (out.empty() ? "" : " ") + std::to_string(rec.offset);
    return out;
}

void streamed_transaction_is_replayed_at_its_commit_and_holds_the_offset_meanwhile() {
    StreamTracker t;
    std::vector<Record> topic = {streamed(10, "change", 700, 700, 1), rec(11, 0x100, 1, 1),
                                 streamed(12, "change", 700, 700, 2), streamed(13, "change", 701, 701, 1),
                                 streamed(14, "change", 700, 700, 3), streamed(15, "commit", 700, 0, 0, 0x200, 3)};
    CHECK_EQ(std::to_string(t.hold()), "-1");
    CHECK_EQ(kind_of(t.add(topic[0], 0)), "wait");
    CHECK_EQ(std::to_string(t.hold()), "10");
    CHECK_EQ(kind_of(t.add(topic[2], 0)), "wait");
    CHECK_EQ(kind_of(t.add(topic[3], 0)), "wait");
    CHECK_EQ(std::to_string(t.open()), "2");
    CHECK_EQ(kind_of(t.add(topic[4], 0)), "wait");
    // read again (a retry went back): changes nothing
    CHECK_EQ(kind_of(t.add(topic[2], 0)), "wait");
    StreamTracker::Outcome o = t.add(topic[5], 0);
    CHECK_EQ(kind_of(o), "replay");
    CHECK_EQ(o.note, "");
    CHECK_EQ(std::to_string(o.replay.first_offset) + ".." + std::to_string(o.replay.commit_offset), "10..15");
    CHECK_EQ(format_lsn(o.replay.lsn), "0/200");
    CHECK_EQ(replayed(o.replay, topic), "10 12 14"); // not the committed record, nor the other stream's
    CHECK_EQ(std::to_string(o.replay.kept), "1");    // and they are kept: nothing to read again
    CHECK_EQ(replayed(o.replay, o.replay.records), "10 12 14");
    CHECK_EQ(std::to_string(t.kept_bytes() > 0), "1"); // 701's record
    t.finished(700);
    CHECK_EQ(std::to_string(t.hold()), "13"); // 701 is still open
    CHECK_EQ(kind_of(feed(t, streamed(16, "abort", 701, 701), 0)), "wait");
    CHECK_EQ(std::to_string(t.hold()), "-1");
}

void aborted_subtransaction_takes_back_its_records_and_those_begun_after_it() {
    StreamTracker t;
    std::vector<Record> topic = {
        streamed(0, "change", 5, 5, 1),          streamed(1, "change", 5, 6, 2), streamed(2, "change", 5, 7, 3),
        streamed(3, "change", 5, 6, 4),          streamed(4, "abort", 5, 6),     streamed(5, "change", 5, 8, 5),
        streamed(6, "change", 5, 5, 6),          streamed(7, "abort", 5, 99), // nothing of 99 was streamed
        streamed(8, "commit", 5, 0, 0, 0x300, 6)};
    StreamTracker::Outcome o;
    for (Record &r : topic)
        o = t.add(r, 0);
    CHECK_EQ(kind_of(o), "replay");
    CHECK_EQ(replayed(o.replay, topic), "0 5 6");
    CHECK_EQ(replayed(o.replay, o.replay.records), "0 5 6"); // what aborted was dropped from what is kept
}

void kept_records_stay_within_the_budget_and_the_largest_is_read_again() {
    StreamTracker t(3 * 200); // about three records of a few bytes each
    for (int i = 0; i < 3; i++) {
        Record a = streamed(2 * i, "change", 1, 1, i + 1);
        t.add(a, 0);
        if (i < 2) {
            Record b = streamed(2 * i + 1, "change", 2, 2, i + 1);
            t.add(b, 0);
        }
    }
    CHECK_EQ(std::to_string(t.kept_bytes() <= 3 * 200), "1");
    Record c1 = streamed(10, "commit", 1, 0, 0, 0x100, 3);
    StreamTracker::Outcome o1 = t.add(c1, 0);
    CHECK_EQ(kind_of(o1) + " kept " + std::to_string(o1.replay.kept), "replay kept 0"); // the largest went back
    t.finished(1);
    Record c2 = streamed(11, "commit", 2, 0, 0, 0x200, 2);
    StreamTracker::Outcome o2 = t.add(c2, 0);
    CHECK_EQ(kind_of(o2) + " kept " + std::to_string(o2.replay.kept) + " " + replayed(o2.replay, o2.replay.records),
             "replay kept 1 1 3");
    t.finished(2);
    CHECK_EQ(std::to_string(t.kept_bytes()), "0");
}

void stream_started_over_or_begun_before_the_start_is_not_applied_in_part() {
    StreamTracker t;
    // a producer restart: the transaction streams again from its first record
    feed(t, streamed(0, "change", 9, 9, 1), 0);
    feed(t, streamed(1, "change", 9, 9, 2), 0);
    StreamTracker::Outcome again = feed(t, streamed(2, "change", 9, 9, 1), 0);
    CHECK_EQ(std::to_string(again.note.find("discarded an incomplete copy") != std::string::npos), "1");
    CHECK_EQ(std::to_string(t.hold()), "2");
    feed(t, streamed(3, "change", 9, 9, 2), 0);
    StreamTracker::Outcome o = feed(t, streamed(4, "commit", 9, 0, 0, 0x500, 2), 0);
    CHECK_EQ(kind_of(o), "replay");
    CHECK_EQ(std::to_string(o.replay.first_offset), "2");
    t.finished(9);

    // its first records lie before where reading began: skipped, with a warning unless applied before
    StreamTracker late;
    feed(late, streamed(20, "change", 11, 11, 7), 0);
    StreamTracker::Outcome skipped = feed(late, streamed(21, "commit", 11, 0, 0, 0x600, 7), 0x500);
    CHECK_EQ(kind_of(skipped), "skip");
    CHECK_EQ(std::to_string(skipped.note.find("before where this subscription began reading") != std::string::npos),
             "1");
    CHECK_EQ(std::to_string(late.hold()), "-1");
    feed(late, streamed(30, "change", 12, 12, 7), 0);
    StreamTracker::Outcome applied_before = feed(late, streamed(31, "commit", 12, 0, 0, 0x600, 7), 0x600);
    CHECK_EQ(kind_of(applied_before), "skip");
    CHECK_EQ(applied_before.note, "");
}

void nested_aborts_merge_and_a_reset_or_a_whole_copy_closes_what_is_open() {
    StreamTracker t;
    // 10 top, 11 sub 2, 12 sub 3 (inside 2), 13 abort 3, 14 sub 2, 15 abort 2, 16 top, 17 sub 4, 18 abort 4
    std::vector<Record> topic = {streamed(10, "change", 1, 1, 1), streamed(11, "change", 1, 2, 2),
                                 streamed(12, "change", 1, 3, 3), streamed(13, "abort", 1, 3),
                                 streamed(14, "change", 1, 2, 4), streamed(15, "abort", 1, 2),
                                 streamed(16, "change", 1, 1, 5), streamed(17, "change", 1, 4, 6),
                                 streamed(18, "abort", 1, 4),     streamed(19, "commit", 1, 0, 0, 0x700, 6)};
    StreamTracker::Outcome o;
    for (Record &r : topic)
        o = t.add(r, 0);
    CHECK_EQ(kind_of(o), "replay");
    CHECK_EQ(replayed(o.replay, topic), "10 16");
    CHECK_EQ(std::to_string(o.replay.discarded.size()), "2"); // [11,15) took [12,13) in, then [17,18)

    StreamTracker r;
    feed(r, streamed(0, "change", 7, 7, 1), 0);
    feed(r, streamed(1, "change", 8, 8, 1), 0);
    CHECK_EQ(std::to_string(r.hold()), "0");
    std::vector<KafkaHeader> h = {{"kafka_sync.stream", std::string("reset")}};
    CHECK_EQ(kind_of(feed(r, make_record(2, nullptr, 0, nullptr, 0, h), 0)), "wait");
    CHECK_EQ(std::to_string(r.open()) + " " + std::to_string(r.hold()) + " " + std::to_string(r.kept_bytes()),
             "0 -1 0");
    feed(r, streamed(3, "change", 9, 9, 1), 0);
    r.committed_whole(9); // committed as an ordinary transaction after a producer restart
    CHECK_EQ(std::to_string(r.open()), "0");
}

void unreadable_stream_records_go_to_apply_as_they_are() {
    StreamTracker t;
    std::vector<KafkaHeader> h = {{"kafka_sync.stream", std::string("change")}}; // no xid
    CHECK_EQ(kind_of(feed(t, make_record(0, nullptr, 0, "v", 1, h), 0)), "foreign");
    h = {{"kafka_sync.stream", std::string("sideways")}, {"kafka_sync.xid", std::string("5")}};
    CHECK_EQ(kind_of(feed(t, make_record(1, nullptr, 0, "v", 1, h), 0)), "foreign");
    // a commit without an lsn
    h = {{"kafka_sync.stream", std::string("commit")}, {"kafka_sync.xid", std::string("5")}};
    CHECK_EQ(kind_of(feed(t, make_record(2, nullptr, 0, nullptr, 0, h), 0)), "foreign");
    CHECK_EQ(std::to_string(t.open()), "0");
}

void replayed_record_becomes_a_record_of_the_committed_transaction() {
    Record r = streamed(7, "change", 700, 700, 3);
    CHECK_EQ(std::to_string(r.has_lsn), "0");
    mark_committed(r, 0x1234, 1700000000123, 1, false);
    CHECK_EQ(format_lsn(r.lsn) + " " + std::to_string(r.seq) + " " + std::to_string(r.txn_end), "0/1234 1 0");
    // the header blob says the same, read as apply reads it
    kafka_sync::wire::HeaderReader reader(r.headers.data(), r.headers.size());
    kafka_sync::wire::HeaderFacts facts;
    std::string_view name;
    const char *value;
    size_t size;
    while (reader.next(name, value, size))
        facts.note(name, value, size);
    CHECK_EQ(std::to_string(facts.has_lsn) + " " + format_lsn(facts.lsn) + " seq " + std::to_string(facts.seq) +
                 " ts " + std::to_string(facts.commit_ts_ms) + " end " + std::to_string(facts.txn_end),
             "1 0/1234 seq 1 ts 1700000000123 end 0");
    Record last = streamed(9, "commit", 700, 0, 0, 0x1234, 3);
    mark_committed(last, 0x1234, 1700000000123, 2, true);
    CHECK_EQ(std::to_string(last.txn_end) + " " + std::to_string(last.txn_records), "1 2");
}

} // namespace

int main() {
    small_transactions_share_one_local_transaction_until_idle();
    snapshot_rows_travel_like_small_transactions_never_streamed();
    incomplete_transaction_is_not_sent_at_idle();
    pipelining_commits_at_the_record_limit();
    pipelining_commits_at_the_byte_limit();
    transaction_that_would_overflow_the_batch_starts_the_next_one();
    large_transaction_streams_in_chunks_inside_one_local_transaction();
    large_transaction_commits_waiting_small_ones_first();
    streaming_stays_within_the_byte_limit();
    partial_copy_is_discarded_when_the_transaction_starts_over();
    partial_copy_is_discarded_when_another_transaction_begins();
    streamed_partial_copy_is_rolled_back();
    duplicate_is_never_in_the_local_transaction_of_its_original();
    lsn_order_is_per_local_transaction_only();
    record_without_headers_is_a_transaction_of_its_own();
    record_without_headers_inside_a_transaction_does_not_split_it();
    invalid_lsn_counts_as_no_lsn();
    careful_mode_applies_one_source_transaction_per_local_transaction();
    careful_mode_streams_large_transactions_with_the_careful_flag();
    finish_commits_complete_and_rolls_back_streamed();
    reset_forgets_everything();
    odd_record_count_is_noted();
    lsn_text_round_trips();
    record_reads_the_kafka_sync_headers();
    headers_are_encoded_for_apply_chunk();
    int8_array_has_postgres_binary_layout();
    bytea_array_has_postgres_binary_layout();
    consumer_properties_apply_kafka_config_but_keep_the_guarantees();
    properties_that_load_code_or_run_commands_need_the_operators_allowance();
    start_offset_comes_from_the_database_first();
    statistics_tell_whether_the_partition_leader_is_connected();
    every_libpq_secret_in_a_keyword_connection_string_is_masked();
    every_libpq_secret_in_a_uri_is_masked();
    a_connection_string_that_does_not_parse_shows_no_password();
    passwords_never_reach_the_log();
    streamed_transaction_is_replayed_at_its_commit_and_holds_the_offset_meanwhile();
    aborted_subtransaction_takes_back_its_records_and_those_begun_after_it();
    stream_started_over_or_begun_before_the_start_is_not_applied_in_part();
    nested_aborts_merge_and_a_reset_or_a_whole_copy_closes_what_is_open();
    kept_records_stay_within_the_budget_and_the_largest_is_read_again();
    unreadable_stream_records_go_to_apply_as_they_are();
    replayed_record_becomes_a_record_of_the_committed_transaction();
    if (failures) {
        fprintf(stderr, "%d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("sidecar unit tests: all %d checks passed\n", checks);
    return 0;
}
