// Validation of a node's kafka_config (see kafka_config.hpp).
#include "produce/kafka_config.hpp"

#include "common/kafka_properties.hpp"
#include "common/secrets_file.hpp"

#include <librdkafka/rdkafka.h>

#include <cstdlib>
#include <cstring>
#include <memory>

namespace kafka_sync {

namespace {

// Set by kafka_sync itself: changing them would break the delivery promise.
const char *const kFixedProperties[] = {"acks",
                                        "request.required.acks",
                                        "enable.idempotence",
                                        "bootstrap.servers",
                                        "metadata.broker.list",
                                        "dr_cb",
                                        "dr_msg_cb",
                                        "log.queue"};

bool parse_bool(const std::string &v, bool &out) {
    if (v == "true" || v == "on" || v == "1") {
        out = true;
        return true;
    }
    if (v == "false" || v == "off" || v == "0") {
        out = false;
        return true;
    }
    return false;
}

bool parse_int(const std::string &v, long lo, long hi, int &out) {
    if (v.empty())
        return false;
    char *end = nullptr;
    long n = strtol(v.c_str(), &end, 10);
    if (*end != '\0' || n < lo || n > hi)
        return false;
    out = static_cast<int>(n);
    return true;
}

bool own_setting(const std::string &key, const std::string &value, NodeKafkaSettings &out, std::string &error,
                 std::string &hint) {
    const std::string name = key.substr(strlen("kafka_sync."));
    bool ok;
    if (name == "schemas")
        ok = parse_bool(value, out.schemas);
    else if (name == "tombstones")
        ok = parse_bool(value, out.tombstones);
    else if (name == "streaming")
        ok = parse_bool(value, out.streaming);
    else if (name == "streaming_work_mem")
        ok = parse_int(value, 64, 1048576, out.streaming_work_mem_kb);
    else if (name == "topic_partitions")
        ok = parse_int(value, 1, 100000, out.topic_partitions);
    else if (name == "topic_replication_factor")
        ok = parse_int(value, -1, 1000, out.topic_replication_factor) && out.topic_replication_factor != 0;
    else if (key == kSecretsFileSetting) {
        out.secrets_file = value;
        ok = !value.empty() && value[0] == '/';
    } else {
        error = "unknown kafka_sync setting \"" + key + "\"";
        hint = "kafka_sync settings are kafka_sync.schemas, kafka_sync.tombstones, kafka_sync.streaming, "
               "kafka_sync.streaming_work_mem, kafka_sync.topic_partitions, kafka_sync.topic_replication_factor and "
               "kafka_sync.secrets_file.";
        return false;
    }
    if (!ok) {
        error = "invalid value \"" + value + "\" for \"" + key + "\"";
        hint = name == "schemas" || name == "tombstones" || name == "streaming" ? "Use true or false."
               : name == "streaming_work_mem" ? "Use kilobytes from 64 to 1048576 (1 GB)."
               : key == kSecretsFileSetting   ? "Name the file by its absolute path."
                                            : "Use a positive integer (-1 for the broker default replication factor).";
    }
    return ok;
}

} // namespace

bool is_secret_config_key(const std::string &key) {
    static const char *const markers[] = {"password", "secret", "key", "jaas", "token", "credential"};
    for (const char *m : markers)
        if (key.find(m) != std::string::npos)
            return true;
    return false;
}

bool set_kafka_property(rd_kafka_conf_t *conf, const std::string &key, const std::string &value, std::string &error) {
    char errstr[512];
    if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), errstr, sizeof(errstr)) == RD_KAFKA_CONF_OK)
        return true;
    error = is_secret_config_key(key) ? "invalid value for Kafka property \"" + key + "\"" : std::string(errstr);
    return false;
}

namespace {

// One librdkafka property of kafka_config or of the secrets file (where;
// every value of that file is a secret, never echoed).
bool check_rdkafka_property(rd_kafka_conf_t *conf, const std::string &key, const std::string &value, const char *where,
                            bool secret_value, const std::string &allowed, std::string &error, std::string &hint) {
    /* before librdkafka sees it: setting plugin.library.paths loads the plugin */
    if (kafka_property_refused(key, allowed, error, hint)) {
        error += std::string(" (in ") + where + ")";
        return false;
    }
    for (const char *fixed : kFixedProperties) {
        if (key == fixed) {
            error = "the Kafka property \"" + key + "\" cannot be set in " + where;
            hint = "kafka_sync always produces with acks=all and the idempotent producer, and takes the "
                   "brokers from the brokers argument.";
            return false;
        }
    }
    if (!set_kafka_property(conf, key, value, error)) {
        if (secret_value) {
            error = "librdkafka refuses the Kafka property \"" + key + "\" of " + where +
                    " (an unknown name or an invalid value; the value is not shown)";
            hint = "The secrets file holds librdkafka properties (see librdkafka's CONFIGURATION.md).";
        } else {
            hint = "kafka_config takes librdkafka properties (see librdkafka's CONFIGURATION.md) and the "
                   "kafka_sync.* settings.";
        }
        return false;
    }
    return true;
}

} // namespace

bool parse_node_kafka_config(const ConfigPairs &in, NodeKafkaSettings &out, std::string &error, std::string &hint,
                             const std::string &allowed) {
    out = NodeKafkaSettings();
    std::unique_ptr<rd_kafka_conf_t, void (*)(rd_kafka_conf_t *)> conf(rd_kafka_conf_new(), rd_kafka_conf_destroy);
    for (const auto &[key, value] : in) {
        if (key.rfind("kafka_sync.", 0) == 0) {
            if (!own_setting(key, value, out, error, hint))
                return false;
            continue;
        }
        if (!check_rdkafka_property(conf.get(), key, value, "kafka_config", false, allowed, error, hint))
            return false;
        out.rdkafka.emplace_back(key, value);
        if (is_secret_config_key(key) && value.size() >= 3)
            out.secret_values.push_back(value);
    }
    if (out.secrets_file.empty()) {
        if (!kinit_allowed(allowed))
            out.rdkafka.emplace_back(kNoKinitProperty, "0"); /* last: no shell command from principal/keytab */
        return true;
    }
    ConfigPairs secrets;
    if (!read_secrets_file(out.secrets_file, secrets, error)) {
        hint = "The file must be readable by the operating system user of the PostgreSQL server (and of the sidecar "
               "for a subscription).";
        return false;
    }
    const std::string where = "the secrets file " + out.secrets_file;
    for (const auto &[key, value] : secrets) {
        if (key.rfind("kafka_sync.", 0) == 0) {
            error = "the secrets file " + out.secrets_file + " sets \"" + key + "\"";
            hint = "kafka_sync settings belong in kafka_config; the secrets file holds librdkafka properties.";
            return false;
        }
        if (!check_rdkafka_property(conf.get(), key, value, where.c_str(), true, allowed, error, hint))
            return false;
        out.rdkafka.emplace_back(key, value);
        if (!value.empty())
            out.secret_values.push_back(value);
    }
    if (!kinit_allowed(allowed))
        out.rdkafka.emplace_back(kNoKinitProperty, "0");
    return true;
}

} // namespace kafka_sync
