// librdkafka consumer of one subscription (see kafka_consumer.hpp).
//
// librdkafka's own log lines arrive on its internal threads; they go to the
// sidecar's (thread-safe) log at debug level, except configuration warnings.
// Errors (error_cb) and statistics (stats_cb) are served by
// rd_kafka_consumer_poll on our thread.
#include "kafka_consumer.hpp"

#include "kafka_stats.hpp"
#include "log.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace kafka_sync_sidecar {

static_assert(kOffsetBeginning == RD_KAFKA_OFFSET_BEGINNING && kOffsetEnd == RD_KAFKA_OFFSET_END,
              "logical offsets must match librdkafka's");

namespace {

// A numeric property as the configuration holds it (its default or the user's).
int64_t conf_int(rd_kafka_conf_t *conf, const char *name, int64_t fallback) {
    char buf[32];
    size_t size = sizeof buf;
    if (rd_kafka_conf_get(conf, name, buf, &size) != RD_KAFKA_CONF_OK)
        return fallback;
    char *end = nullptr;
    const long long v = strtoll(buf, &end, 10);
    return end != buf && v > 0 ? v : fallback;
}

constexpr auto kUnreachableAfter = std::chrono::seconds(3);

// The value of a property that holds a secret (sasl.password,
// ssl.key.password, sasl.oauthbearer.client.secret, ...).
bool is_secret(const ConsumerProperty &p) {
    if (p.secret && !p.value.empty())
        return true;
    if (!p.from_kafka_config || p.value.size() < 3)
        return false;
    for (const char *word : {"password", "secret", "key", "token", "jaas", "oauthbearer.config", "credential"})
        if (p.name.find(word) != std::string::npos)
            return true;
    return false;
}

} // namespace

void KafkaConsumer::on_error(rd_kafka_t *, int err, const char *reason, void *opaque) {
    auto *self = static_cast<KafkaConsumer *>(opaque);
    auto code = static_cast<rd_kafka_resp_err_t>(err);
    if (code == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || code == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) {
        // A broker reaches us this way for a topic it does not have (never as
        // a consumer error message); the brokers themselves are fine.
        self->fetch_problem_ = "topic " + self->topic_ + " does not exist";
        LOG_DEBUG("subscription %s: %s", self->sub_name_.c_str(), self->fetch_problem_.c_str());
        return;
    }
    self->broker_error_ = mask_values(reason ? reason : rd_kafka_err2str(code), self->secrets_);
    LOG_DEBUG("subscription %s: Kafka error %s: %s", self->sub_name_.c_str(), rd_kafka_err2name(code),
              self->broker_error_.c_str());
}

void KafkaConsumer::on_log(const rd_kafka_t *rk, int level, const char *facility, const char *message) {
    auto *self = static_cast<KafkaConsumer *>(rd_kafka_opaque(rk));
    bool config_warning = level <= 4 && facility && strncmp(facility, "CONF", 4) == 0;
    LogLevel ours = config_warning ? LogLevel::Warning : LogLevel::Debug;
    if (!log_enabled(ours))
        return;
    std::string text = self ? mask_values(message, self->secrets_) : std::string(message);
    log_line(ours, "subscription %s: librdkafka %s: %s", self ? self->sub_name_.c_str() : "?", facility, text.c_str());
}

int KafkaConsumer::on_stats(rd_kafka_t *, char *json, size_t len, void *opaque) {
    auto *self = static_cast<KafkaConsumer *>(opaque);
    PartitionStats stats;
    if (!parse_partition_stats(json, len, self->topic_, stats))
        return 0;
    if (stats.high_water >= 0)
        self->stats_high_water_ = stats.high_water;
    if (stats.leader_up) {
        self->leader_up_ = true;
        if (stats.fetching)
            self->fetch_problem_.clear();
    } else if (self->leader_up_) {
        self->leader_up_ = false;
        self->leader_down_since_ = Clock::now();
    }
    return 0; // librdkafka frees the JSON
}

bool KafkaConsumer::open(const SubscriptionConfig &sub, std::string &error) {
    close();
    sub_name_ = sub.name;
    topic_ = sub.topic;
    std::vector<ConsumerProperty> props;
    if (!consumer_properties(sub, props, error))
        return false;
    secrets_.clear();
    for (const auto &p : props)
        if (is_secret(p))
            secrets_.push_back(p.value);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[512];
    for (const auto &p : props) {
        rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, p.name.c_str(), p.value.c_str(), errstr, sizeof errstr);
        if (res != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            error = std::string(res == RD_KAFKA_CONF_UNKNOWN ? "unknown" : "invalid value for") + " Kafka property \"" +
                    p.name + "\"";
            return false;
        }
    }
    rd_kafka_conf_set(conf, "statistics.interval.ms", "1000", errstr, sizeof errstr);
    queue_max_bytes_ = conf_int(conf, "queued.max.messages.kbytes", 65536) * 1024;
    queue_max_records_ = conf_int(conf, "queued.min.messages", 100000);
    rd_kafka_conf_set_opaque(conf, this);
    rd_kafka_conf_set_error_cb(conf, &KafkaConsumer::on_error);
    rd_kafka_conf_set_log_cb(conf, &KafkaConsumer::on_log);
    rd_kafka_conf_set_stats_cb(conf, &KafkaConsumer::on_stats);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        error = "cannot create the Kafka consumer: " + mask_values(errstr, secrets_);
        return false;
    }
    rd_kafka_poll_set_consumer(rk); // errors and statistics are served by rd_kafka_consumer_poll
    rk_ = rk;
    leader_up_ = true;
    stats_high_water_ = -1;
    broker_error_.clear();
    fetch_problem_.clear();
    offset_problem_.clear();
    return true;
}

void KafkaConsumer::close() {
    if (!rk_)
        return;
    // Nothing to leave or commit: the group exists only because assign() needs one.
    rd_kafka_destroy_flags(rk_, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    rk_ = nullptr;
}

bool KafkaConsumer::assign(int64_t offset, std::string &error) {
    if (!rk_) {
        error = "no Kafka consumer";
        return false;
    }
    rd_kafka_assign(rk_, nullptr); // drops the old position's prefetched records
    // The partition's leader known before the assignment: otherwise the first
    // fetch waits for librdkafka's next periodic metadata scan (up to ~1 s,
    // measured at every resume). Bounded; on failure librdkafka finds it itself.
    if (rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk_, topic_.c_str(), nullptr)) {
        const rd_kafka_metadata_t *md = nullptr;
        if (rd_kafka_metadata(rk_, 0, rkt, &md, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR)
            rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
    }
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, topic_.c_str(), 0)->offset = offset;
    rd_kafka_resp_err_t err = rd_kafka_assign(rk_, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        error = std::string("cannot assign partition 0 of ") + topic_ + ": " + rd_kafka_err2str(err);
        return false;
    }
    min_offset_ = offset >= 0 ? offset : 0;
    assigned_offset_ = offset;
    next_offset_ = -1;
    burst_bytes_ = burst_records_ = 0;
    if (offset != problem_offset_)
        offset_problem_.clear(); // trying the same offset again: still a problem until it works
    return true;
}

bool KafkaConsumer::poll(int timeout_ms, Record &out) {
    if (!rk_)
        return false;
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk_, timeout_ms);
    if (!msg) {
        nudge_fetcher_if_stopped();
        return false;
    }
    if (msg->err) {
        std::string text = mask_values(rd_kafka_message_errstr(msg), secrets_);
        switch (msg->err) {
        case RD_KAFKA_RESP_ERR__PARTITION_EOF: break;
        case RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET:
        case RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE:
            offset_problem_ = "records of " + topic_ + " from offset " + std::to_string(assigned_offset_) +
                              " on, not applied here yet, are no longer in Kafka (deleted by retention or "
                              "compaction, or the topic was re-created): the peer's changes in them are missing "
                              "from this database; the subscription waits at that offset (see the README, "
                              "Troubleshooting) [" +
                              text + "]";
            problem_offset_ = assigned_offset_;
            break;
        case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
        case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART: fetch_problem_ = "topic " + topic_ + " does not exist"; break;
        default: fetch_problem_ = "consuming " + topic_ + ": " + text; break;
        }
        LOG_DEBUG("subscription %s: consumer error %s: %s", sub_name_.c_str(), rd_kafka_err2name(msg->err),
                  text.c_str());
        rd_kafka_message_destroy(msg);
        return false;
    }
    // Below the position: a previous position's record, or one delivered
    // twice. Records come in offset order, each once.
    if (msg->offset < min_offset_ || msg->offset < next_offset_) {
        rd_kafka_message_destroy(msg);
        return false;
    }
    std::vector<HeaderView> &headers = header_views_; // reused: no allocation per record
    headers.clear();
    rd_kafka_headers_t *hdrs = nullptr;
    if (rd_kafka_message_headers(msg, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && hdrs) {
        const char *name;
        const void *value;
        size_t size;
        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
            headers.push_back({name, static_cast<const char *>(value), value ? size : 0});
    }
    next_offset_ = msg->offset + 1;
    burst_bytes_ += static_cast<int64_t>(msg->len + msg->key_len);
    burst_records_++;
    out = record_from_message(msg->offset, static_cast<const char *>(msg->key), msg->key_len,
                              static_cast<const char *>(msg->payload), msg->len, headers, &schemas_);
    rd_kafka_message_destroy(msg);
    leader_up_ = true;
    fetch_problem_.clear();
    offset_problem_.clear();
    problem_offset_ = INT64_MIN;
    return true;
}

std::optional<int64_t> KafkaConsumer::high_water() const {
    if (!rk_)
        return std::nullopt;
    int64_t low = 0, high = -1;
    if (rd_kafka_get_watermark_offsets(rk_, topic_.c_str(), 0, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        return std::max(high, stats_high_water_);
    if (stats_high_water_ >= 0)
        return stats_high_water_;
    return std::nullopt;
}

// librdkafka 2.0 stops fetching a partition while its prefetched records
// reach queued.max.messages.kbytes (decompressed: some 25,000 records of a
// node on its defaults in the 64 MB) or queued.min.messages, and decides
// again only when its broker thread next wakes: on a reply, or up to a
// second later. Reading a backlog, the sidecar emptied that queue in a
// quarter of a second and then waited for the rest of the second, again and
// again (S1 of the bench: 35,000 txn/s where payload-only records went at
// 130,000). (2.1 made that wait a setting, fetch.queue.backoff.ms.)
//
// So when the queue ran dry after at least half of either limit was read
// since it was last dry (the fetcher can have stopped only then), while
// Kafka holds records past the last one read (the high watermark of the last
// fetch), a ListOffsets request for the partition wakes the broker thread,
// which then fetches. It changes nothing of the consumer's position or
// prefetched records (a seek did, and a seek's version barrier races with a
// reply on its way). Once per dry spell. In librdkafka 2.0 the call waits
// for the reply whatever its timeout: a broker that hangs just then holds
// the runner up to socket.timeout.ms, as it holds the fetch.
void KafkaConsumer::nudge_fetcher_if_stopped() {
    const bool full_queue_read = burst_bytes_ * 2 >= queue_max_bytes_ || burst_records_ * 2 >= queue_max_records_;
    burst_bytes_ = burst_records_ = 0;
    int64_t low = 0, high = 0;
    if (!full_queue_read || next_offset_ < 0 ||
        rd_kafka_get_watermark_offsets(rk_, topic_.c_str(), 0, &low, &high) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        high <= next_offset_)
        return;
    LOG_DEBUG("subscription %s: prefetch queue read out at offset %" PRId64 ", waking the fetcher", sub_name_.c_str(),
              next_offset_);
    std::string ignored; // the wake-up is what counts; a failure shows in the next fetch
    query_watermarks(low, high, ignored, 1000);
}

bool KafkaConsumer::query_watermarks(int64_t &low, int64_t &high, std::string &error, int timeout_ms) {
    if (!rk_) {
        error = "no consumer";
        return false;
    }
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(rk_, topic_.c_str(), 0, &low, &high, timeout_ms);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        error = std::string("cannot read the offsets of ") + topic_ + ": " + rd_kafka_err2str(err);
        return false;
    }
    return true;
}

std::string KafkaConsumer::problem() const {
    if (!offset_problem_.empty())
        return offset_problem_;
    if (!fetch_problem_.empty())
        return fetch_problem_;
    if (!leader_up_ && Clock::now() - leader_down_since_ >= kUnreachableAfter)
        return broker_error_.empty() ? "no connection to the leader of partition 0 of " + topic_
                                     : "Kafka is unreachable: " + broker_error_;
    return std::string();
}

} // namespace kafka_sync_sidecar
