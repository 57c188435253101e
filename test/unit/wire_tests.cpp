// The wire contract, read by both sides: the sidecar groups records into
// transactions by their headers (sidecar/record.cpp), the extension decides
// what is applied and skipped by the same headers (extension/apply/
// record_decoder.cpp, decode_headers). Fed the same header sets, hostile
// ones included, both must reach the same verdict: where they disagreed, the
// sidecar ended a transaction on a null txn_end header that the extension
// did not see, and read LSNs the extension refused (and back).
#include "check.hpp"
#include "wire/record_decoder.hpp"
#include "record.hpp"
#include "wire/wire.hpp"

#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace sc = kafka_sync_sidecar;

namespace {

using unit_check::checks;
using unit_check::failures;

using Headers = std::vector<sc::KafkaHeader>;

std::string describe(const Headers &hs) {
    std::string s;
    for (const auto &h : hs)
        s += h.name + "=" + (h.value ? "\"" + *h.value + "\"" : std::string("null")) + " ";
    return s;
}

// Both sides' verdict on one header set.
void same_verdict(const Headers &hs) {
    const sc::Record r = sc::make_record(7, nullptr, 0, "{}", 2, hs);
    kafka_sync::DecodedHeaders d;
    std::string error;
    const bool ok = kafka_sync::decode_headers(r.headers.data(), r.headers.size(), d, error, true);
    checks++;
    if (!ok || r.has_lsn != d.has_lsn || (r.has_lsn && r.lsn != d.lsn) || r.txn_end != d.has_txn_end) {
        failures++;
        fprintf(stderr, "FAIL headers %s: sidecar lsn %d/%llx end %d, extension ok %d lsn %d/%llx end %d (%s)\n",
                describe(hs).c_str(), r.has_lsn, (unsigned long long)r.lsn, r.txn_end, ok, d.has_lsn,
                (unsigned long long)d.lsn, d.has_txn_end, error.c_str());
    }
}

Headers base(const char *lsn) {
    return {{"kafka_sync.origin", std::string("peer")},
            {"kafka_sync.lsn", std::string(lsn)},
            {"kafka_sync.seq", std::string("1")}};
}

void fixed_cases() {
    same_verdict(base("16/B374D848"));
    // every LSN form either both accept or both refuse
    for (const char *lsn :
         {"0/0", "FFFFFFFF/FFFFFFFF", " 1/2", "1/2 ", "0x1/2", "1/0x2", "+1/2", "-0/1", "1/-0", "123456789/1",
          "1/123456789", "1/", "/1", "1//2", "", "/", "g/1", "1/2/3", "00000001/00000002"}) {
        same_verdict(base(lsn));
        Headers hs = base(lsn);
        hs.push_back({"kafka_sync.txn_end", std::string("1")});
        same_verdict(hs);
    }
    // the end of a transaction: present, null, unreadable, repeated
    for (std::optional<std::string> end :
         {std::optional<std::string>("3"), std::optional<std::string>(), std::optional<std::string>("x"),
          std::optional<std::string>("-1"), std::optional<std::string>("0"), std::optional<std::string>("")}) {
        Headers hs = base("1/2");
        hs.push_back({"kafka_sync.txn_end", end});
        same_verdict(hs);
        hs.push_back({"kafka_sync.txn_end", end});
        same_verdict(hs);
    }
    // repeated LSNs: the last counts, a null one too
    same_verdict({{"kafka_sync.lsn", std::string("1/2")}, {"kafka_sync.lsn", std::nullopt}});
    same_verdict({{"kafka_sync.lsn", std::nullopt}, {"kafka_sync.lsn", std::string("1/2")}});
    same_verdict({{"kafka_sync.lsn", std::string("1/2")}, {"kafka_sync.lsn", std::string("junk")}});
    same_verdict({{"kafka_sync.lsn", std::string("1/2")}, {"kafka_sync.lsn", std::string("3/4")}});
    // names that only look like ours
    same_verdict({{"KAFKA_SYNC.LSN", std::string("1/2")}, {"kafka_sync.txn_end ", std::string("1")}});
    same_verdict({{std::string("kafka_sync.lsn\0", 15), std::string("1/2")}});
    // empty, huge, binary
    same_verdict({});
    same_verdict({{"kafka_sync.incarnation", std::string(1000, 'x')}, {"kafka_sync.origin", std::string("\xff\xfe")}});

    // what the extension keeps of origin and incarnation
    kafka_sync::DecodedHeaders d;
    std::string error;
    const sc::Record r = sc::make_record(1, nullptr, 0, "{}", 2,
                                         {{"kafka_sync.origin", std::string("a")},
                                          {"kafka_sync.origin", std::nullopt},
                                          {"kafka_sync.incarnation", std::string(129, '1')},
                                          {"kafka_sync.commit_ts", std::string("1700000000123")}});
    CHECK(kafka_sync::decode_headers(r.headers.data(), r.headers.size(), d, error));
    CHECK(d.origin.empty());      // the last one, null
    CHECK(d.incarnation.empty()); // longer than 128 bytes: none
    CHECK(d.has_commit_ts && d.commit_ts_ms == 1700000000123LL);
}

void random_cases() {
    std::mt19937 rng(20261206);
    const std::vector<std::string> names = {
        "kafka_sync.lsn",      "kafka_sync.txn_end",   "kafka_sync.seq", "kafka_sync.origin",
        "kafka_sync.snapshot", "kafka_sync.commit_ts", "other",          "kafka_sync.ls"};
    const std::vector<std::optional<std::string>> values = {std::string("1/2"),
                                                            std::string("0/0"),
                                                            std::string("FFFFFFFF/1"),
                                                            std::string(" 1/2"),
                                                            std::string("0x1/2"),
                                                            std::string("1"),
                                                            std::string("-1"),
                                                            std::string("abc"),
                                                            std::string(""),
                                                            std::nullopt,
                                                            std::string("999999999999999999999"),
                                                            std::string("1/2\n")};
    for (int i = 0; i < 20000; i++) {
        Headers hs;
        const int n = rng() % 6;
        for (int k = 0; k < n; k++)
            hs.push_back({names[rng() % names.size()], values[rng() % values.size()]});
        same_verdict(hs);
    }
}

void lsn_forms() {
    uint64_t lsn = 0;
    CHECK(kafka_sync::wire::format_lsn(0x16B374D848ull) == "16/B374D848");
    CHECK(kafka_sync::wire::parse_lsn("16/B374D848", lsn) && lsn == 0x16B374D848ull);
    CHECK(!kafka_sync::wire::parse_lsn(" 1/2", lsn) && !kafka_sync::wire::parse_lsn("0x1/2", lsn));
    // a blob cut anywhere but between two headers is malformed, never read past its end
    std::string blob;
    kafka_sync::wire::append_header(blob, "kafka_sync.lsn", "1/2", 3);
    const size_t boundary = blob.size();
    kafka_sync::wire::append_header(blob, "n", nullptr, 0);
    for (size_t cut = 1; cut < blob.size(); cut++) {
        kafka_sync::wire::HeaderReader reader(blob.data(), cut);
        std::string_view name;
        const char *value;
        size_t size;
        while (reader.next(name, value, size)) {
        }
        CHECK(reader.malformed() == (cut != boundary));
    }
}

} // namespace

int main() {
    fixed_cases();
    random_cases();
    lsn_forms();
    if (failures) {
        fprintf(stderr, "wire tests: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("wire tests: all %d checks passed\n", checks);
    return 0;
}
