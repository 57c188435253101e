// Subscription settings -> start offset and consumer properties (see
// subscription.hpp).
#include "subscription.hpp"

#include "common/kafka_properties.hpp"
#include "common/secrets_file.hpp"

#include <jansson.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>

namespace kafka_sync_sidecar {

namespace {

// Bounded memory (a 1M-row transaction must not be prefetched whole) while
// values of up to 50 MB still arrive: the broker always returns at least the
// first record batch of a partition, even when it is larger than the fetch
// limits, and a response may be as large as receive.message.max.bytes.
//
// The prefetch limit is librdkafka's default size (64 MB), and the count limit
// is lifted above it: once the queue is over either limit, librdkafka 2.0
// looks at it again only when its broker thread next wakes, up to a second
// later. With 16 MB (~40,000 of our records) the apply side emptied the queue
// well within that second and then waited: a big transaction was applied in
// bursts, 0.3-0.4 s idle in every second (sidecar debug log, fetch).
const ConsumerProperty kDefaults[] = {
    {"queued.max.messages.kbytes", "65536"},
    {"queued.min.messages", "1000000"},
    {"fetch.message.max.bytes", "4194304"},
    {"fetch.max.bytes", "16777216"},
    {"receive.message.max.bytes", "134217728"},
    {"socket.keepalive.enable", "true"},
    // A broker answers a fetch as soon as there is data; this only bounds how
    // long an empty one waits (on Apache Kafka 4.1, 10 ms instead made no
    // measurable difference to S4's latency).
    {"fetch.wait.max.ms", "100"},
};

} // namespace

bool resolve_start_offset(const SubscriptionConfig &sub, int64_t &offset, std::string &error) {
    if (sub.next_offset) {
        offset = *sub.next_offset;
        return true;
    }
    if (sub.start == "earliest") {
        offset = kOffsetBeginning;
        return true;
    }
    if (sub.start == "latest") {
        offset = kOffsetEnd;
        return true;
    }
    if (!sub.start.empty() && sub.start.size() <= 18 && strspn(sub.start.c_str(), "0123456789") == sub.start.size()) {
        offset = strtoll(sub.start.c_str(), nullptr, 10);
        return true;
    }
    error = "invalid start \"" + sub.start + "\" (expected earliest, latest or an offset)";
    return false;
}

std::string describe_offset(int64_t offset) {
    if (offset == kOffsetBeginning)
        return "the beginning";
    if (offset == kOffsetEnd)
        return "the end";
    return "offset " + std::to_string(offset);
}

bool consumer_properties(const SubscriptionConfig &sub, std::vector<ConsumerProperty> &out, std::string &error) {
    out.clear();
    // librdkafka refuses rd_kafka_assign() without a group; no offsets are
    // ever committed to it.
    out.push_back({"group.id", "kafka_sync_sidecar." + sub.name});
    out.push_back({"client.id", "kafka_sync_sidecar." + sub.name});
    for (const auto &p : kDefaults)
        out.push_back(p);

    const std::string text = sub.kafka_config.empty() ? "{}" : sub.kafka_config;
    json_error_t jerr;
    json_t *root = json_loadb(text.data(), text.size(), 0, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        error = "kafka_config is not a JSON object";
        return false;
    }
    const char *key;
    json_t *value;
    bool ok = true;
    std::string secrets_file;
    json_object_foreach(root, key, value) {
        if (strcmp(key, kafka_sync::kSecretsFileSetting) == 0 && json_is_string(value))
            secrets_file = json_string_value(value);
        if (strncmp(key, "kafka_sync.", 11) == 0)
            continue;
        char buf[64];
        switch (json_typeof(value)) {
        case JSON_STRING:
            out.push_back({key, std::string(json_string_value(value), json_string_length(value)), true});
            break;
        case JSON_INTEGER:
            snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(value));
            out.push_back({key, buf, true});
            break;
        case JSON_REAL:
            snprintf(buf, sizeof buf, "%.17g", json_real_value(value));
            out.push_back({key, buf, true});
            break;
        case JSON_TRUE: out.push_back({key, "true", true}); break;
        case JSON_FALSE: out.push_back({key, "false", true}); break;
        case JSON_NULL: break;
        default:
            error = std::string("kafka_config property \"") + key + "\" must be a string, number or boolean";
            ok = false;
            break;
        }
        if (!ok)
            break;
    }
    json_decref(root);
    if (!ok)
        return false;
    if (!secrets_file.empty()) {
        std::vector<std::pair<std::string, std::string>> secrets;
        if (!kafka_sync::read_secrets_file(secrets_file, secrets, error))
            return false;
        for (auto &[k, v] : secrets)
            out.push_back({k, v, true, true}); // every value of the file is a secret
    }
    // the same refusal as the extension's, before librdkafka sees them (plugin.library.paths loads code when set)
    for (const ConsumerProperty &p : out) {
        std::string hint;
        if (p.from_kafka_config &&
            kafka_sync::kafka_property_refused(p.name, sub.allowed_kafka_properties, error, hint)) {
            error += ". " + hint;
            return false;
        }
    }

    // librdkafka's default kinit command pastes sasl.kerberos.principal and
    // keytab into a shell command line: off unless the operator allows kinit
    if (!kafka_sync::kinit_allowed(sub.allowed_kafka_properties))
        out.push_back({kafka_sync::kNoKinitProperty, "0"});
    out.push_back({"bootstrap.servers", sub.brokers});
    out.push_back({"enable.auto.commit", "false"});
    out.push_back({"enable.auto.offset.store", "false"});
    out.push_back({"enable.partition.eof", "false"});
    // An offset that is out of range (the topic's retention deleted records
    // not yet applied) is an error to report, never a silent jump.
    out.push_back({"auto.offset.reset", "error"});
    return true;
}

void note_secrets_file(SubscriptionConfig &sub) {
    sub.secrets_file_hash = 0;
    json_error_t jerr;
    json_t *root = json_loadb(sub.kafka_config.data(), sub.kafka_config.size(), 0, &jerr);
    json_t *path = root ? json_object_get(root, kafka_sync::kSecretsFileSetting) : nullptr;
    if (path && json_is_string(path)) {
        std::string error;
        std::string content = kafka_sync::secrets_file_content(json_string_value(path), error);
        // unreadable: 1, so that it differs from any content (the consumer reports the error)
        sub.secrets_file_hash = error.empty() ? std::hash<std::string>{}(content) : 1;
    }
    json_decref(root);
}

} // namespace kafka_sync_sidecar
