// KafkaProducer (see kafka_producer.hpp).
#include "produce/kafka_producer.hpp"
#include "wire/wire.hpp"

#include "common/secrets_file.hpp"

#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace kafka_sync {

namespace {

int64_t now_ms() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

void set_or_throw(rd_kafka_conf_t *conf, const std::string &key, const std::string &value) {
    std::string error;
    if (!set_kafka_property(conf, key, value, error))
        throw std::runtime_error(error);
}

// Defaults chosen for the delivery promise; the user's kafka_config is
// applied after them and may tune everything but acks/idempotence.
const std::pair<const char *, const char *> kDefaults[] = {
    // Never give up on a record: while Kafka is away, WAL is retained and
    // librdkafka keeps retrying in order, so nothing is lost or reordered.
    {"message.timeout.ms", "0"},
    // The worker is woken at every commit and produces a transaction's
    // records together; while a request is in flight the next records batch
    // up anyway. librdkafka's 5 ms default was half of the latency from a
    // commit to the row on a peer (S4 p50 4.6 ms with 1 ms, 2.3-3.4 with 0).
    {"linger.ms", "0"},
    // On a real broker every byte costs the producer, the broker and the
    // consumer: uncompressed default records (schema + payload, ~2.6 kB a
    // row) held the source path of one 200k-row transaction to 27-46k
    // records/s against 72-109k with lz4, which also halved the broker's CPU.
    {"compression.type", "lz4"},
    // Bounded memory: when librdkafka holds this much, produce() reports
    // QueueFull and decoding waits (back-pressure on the WAL reader).
    {"queue.buffering.max.kbytes", "65536"},
    {"queue.buffering.max.messages", "100000"},
    {"allow.auto.create.topics", "false"},
    {"socket.keepalive.enable", "true"},
};

} // namespace

namespace {

void add_header(rd_kafka_headers_t *hdrs, std::string_view name, const char *value, size_t size) {
    rd_kafka_header_add(hdrs, name.data(), static_cast<ssize_t>(name.size()), value, static_cast<ssize_t>(size));
}

// Adds a header whose value is v in decimal.
template <typename Int> void add_decimal_header(rd_kafka_headers_t *hdrs, std::string_view name, Int v) {
    char buf[24];
    const char *end = std::to_chars(buf, buf + sizeof(buf), v).ptr;
    add_header(hdrs, name, buf, static_cast<size_t>(end - buf));
}

} // namespace

KafkaProducer::KafkaProducer(const ProducerSettings &settings, InflightTransactions &inflight)
    : settings_(settings), inflight_(inflight) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    try {
        for (const auto &[k, v] : kDefaults)
            set_or_throw(conf, k, v);
        for (const auto &[k, v] : settings_.kafka.rdkafka)
            set_or_throw(conf, k, v);
        set_or_throw(conf, "bootstrap.servers", settings_.brokers);
        set_or_throw(conf, "enable.idempotence", "true");
        set_or_throw(conf, "acks", "all");
        set_or_throw(conf, "log.queue", "true");
        set_or_throw(conf, "client.id", "kafka_sync-" + settings_.node_name);
    } catch (...) {
        rd_kafka_conf_destroy(conf);
        throw;
    }
    rd_kafka_conf_set_opaque(conf, this);
    rd_kafka_conf_set_dr_msg_cb(conf, &KafkaProducer::on_delivery);
    rd_kafka_conf_set_error_cb(conf, &KafkaProducer::on_error);
    rd_kafka_conf_set_log_cb(conf, &KafkaProducer::on_log);

    char errstr[512];
    rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk_) {
        rd_kafka_conf_destroy(conf);
        throw std::runtime_error(std::string("could not create the Kafka producer: ") + errstr);
    }
    // Logs are delivered through the main queue, i.e. by poll() on our thread.
    rd_kafka_set_log_queue(rk_, nullptr);
    rkt_ = rd_kafka_topic_new(rk_, settings_.topic.c_str(), nullptr);
    if (!rkt_) {
        rd_kafka_destroy(rk_);
        throw std::runtime_error("could not create the Kafka topic handle for " + settings_.topic);
    }
}

KafkaProducer::~KafkaProducer() {
    // Undelivered records are simply dropped here: the slot was not confirmed
    // past them, so they are decoded and produced again after a restart.
    if (rkt_)
        rd_kafka_topic_destroy(rkt_);
    if (rk_) {
        rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(rk_, 0);
        rd_kafka_destroy_flags(rk_, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    }
}

bool KafkaProducer::ensure_topic(int timeout_ms, bool (*should_stop)()) {
    constexpr int kSliceMs = 250;
    const rd_kafka_metadata_t *md = nullptr;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
    for (int waited = 0; waited < timeout_ms && !should_stop(); waited += kSliceMs) {
        err = rd_kafka_metadata(rk_, 0, rkt_, &md, kSliceMs);
        if (err != RD_KAFKA_RESP_ERR__TIMED_OUT && err != RD_KAFKA_RESP_ERR__TRANSPORT)
            break;
        rd_kafka_poll(rk_, 0); // error and log callbacks: what the brokers said
    }
    if (err) {
        // librdkafka's own code ("Broker transport failure") hides why; its
        // last word on the brokers says which one and what (SSL, SASL, ...)
        error_ = "could not read the metadata of topic " + settings_.topic + " from " + settings_.brokers + ": " +
                 rd_kafka_err2str(err);
        if (!broker_problem_.empty())
            error_ += " (last broker problem: " + broker_problem_ + ")";
        brokers_down_ = true;
        return false;
    }
    rd_kafka_resp_err_t topic_err = md->topic_cnt > 0 ? md->topics[0].err : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    int partitions = md->topic_cnt > 0 ? md->topics[0].partition_cnt : 0;
    rd_kafka_metadata_destroy(md);
    if (topic_err == RD_KAFKA_RESP_ERR_NO_ERROR && partitions > 0)
        return true;
    if (topic_err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
        error_ = "topic " + settings_.topic + " is not usable: " + rd_kafka_err2str(topic_err);
        return false;
    }

    char errstr[512];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(settings_.topic.c_str(), settings_.kafka.topic_partitions,
                                                    settings_.kafka.topic_replication_factor, errstr, sizeof(errstr));
    if (!nt) {
        error_ = std::string("could not create topic ") + settings_.topic + ": " + errstr;
        return false;
    }
    rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk_, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, errstr, sizeof(errstr));
    rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, errstr, sizeof(errstr));
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk_);
    rd_kafka_CreateTopics(rk_, &nt, 1, opts, q);
    rd_kafka_event_t *ev = nullptr;
    for (int waited = 0; !ev && waited < timeout_ms + 1000 && !should_stop(); waited += kSliceMs)
        ev = rd_kafka_queue_poll(q, kSliceMs);
    bool ok = false;
    if (!ev) {
        error_ = "topic " + settings_.topic + " does not exist and creating it timed out";
    } else if (rd_kafka_event_error(ev)) {
        error_ =
            "topic " + settings_.topic + " does not exist and could not be created: " + rd_kafka_event_error_string(ev);
    } else {
        size_t cnt = 0;
        const rd_kafka_topic_result_t **res =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
        rd_kafka_resp_err_t terr = cnt > 0 ? rd_kafka_topic_result_error(res[0]) : RD_KAFKA_RESP_ERR_UNKNOWN;
        if (terr == RD_KAFKA_RESP_ERR_NO_ERROR || terr == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            ok = true;
        else
            error_ = "topic " + settings_.topic + " does not exist and could not be created: " +
                     (cnt > 0 && rd_kafka_topic_result_error_string(res[0]) ? rd_kafka_topic_result_error_string(res[0])
                                                                            : rd_kafka_err2str(terr));
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_NewTopic_destroy(nt);
    return ok;
}

ProduceStatus KafkaProducer::produce(InflightTransactions::Seq seq, const char *key, size_t key_len, const char *value,
                                     size_t value_len, const RecordHeaders &h) {
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
    add_header(hdrs, wire::kOrigin, settings_.node_name.data(), settings_.node_name.size());
    if (!settings_.incarnation.empty())
        add_header(hdrs, wire::kIncarnation, settings_.incarnation.data(), settings_.incarnation.size());
    const bool known_at_commit = h.stream == wire::StreamEvent::None || h.stream == wire::StreamEvent::Commit;
    if (known_at_commit) {
        const std::string lsn = wire::format_lsn(h.commit_lsn);
        add_header(hdrs, wire::kLsn, lsn.data(), lsn.size());
    }
    if (h.stream != wire::StreamEvent::Reset)
        add_decimal_header(hdrs, wire::kXid, h.xid);
    if (known_at_commit)
        add_decimal_header(hdrs, wire::kCommitTs, h.commit_ts_ms);
    // Lets a consumer see a transaction start over (a partial copy from
    // before a producer restart, followed by the complete one).
    if (h.stream == wire::StreamEvent::None || h.stream == wire::StreamEvent::Change)
        add_decimal_header(hdrs, wire::kSeq, h.seq);
    if (h.txn_end_count >= 0)
        add_decimal_header(hdrs, wire::kTxnEnd, h.txn_end_count);
    // Snapshot rows each carry their own version, so a consumer may apply
    // them one by one instead of holding the whole snapshot as one transaction.
    if (h.snapshot)
        add_header(hdrs, wire::kSnapshot, "true", 4);
    if (h.stream != wire::StreamEvent::None) {
        const std::string_view event = h.stream == wire::StreamEvent::Change   ? "change"
                                       : h.stream == wire::StreamEvent::Commit ? "commit"
                                       : h.stream == wire::StreamEvent::Abort  ? "abort"
                                                                               : "reset";
        add_header(hdrs, wire::kStream, event.data(), event.size());
        if (h.stream == wire::StreamEvent::Change || h.stream == wire::StreamEvent::Abort)
            add_decimal_header(hdrs, wire::kSubxid, h.subxid);
    }

    rd_kafka_resp_err_t err =
        rd_kafka_producev(rk_, RD_KAFKA_V_RKT(rkt_), RD_KAFKA_V_PARTITION(0), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_KEY(const_cast<char *>(key), key ? key_len : 0),
                          RD_KAFKA_V_VALUE(const_cast<char *>(value), value ? value_len : 0), RD_KAFKA_V_HEADERS(hdrs),
                          RD_KAFKA_V_OPAQUE(reinterpret_cast<void *>(static_cast<uintptr_t>(seq))), RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        inflight_.record_produced(seq);
        return ProduceStatus::Ok;
    }
    rd_kafka_headers_destroy(hdrs); // ownership passes only on success
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        return ProduceStatus::QueueFull;
    if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
        error_ = "a record of " + std::to_string(key_len + value_len) +
                 " bytes is larger than the producer's message.max.bytes";
    else
        error_ = std::string("could not produce to ") + settings_.topic + ": " + rd_kafka_err2str(err);
    return ProduceStatus::Failed;
}

void KafkaProducer::poll(int timeout_ms) {
    rd_kafka_poll(rk_, timeout_ms);
}

std::vector<std::string> KafkaProducer::take_log_lines() {
    std::vector<std::string> out;
    out.swap(log_lines_);
    return out;
}

// The callbacks run inside rd_kafka_poll, i.e. under C frames: an exception
// escaping them would terminate the backend. They record, and never throw.
void KafkaProducer::on_delivery(rd_kafka_t *, const rd_kafka_message_t *msg, void *opaque) noexcept {
    auto *self = static_cast<KafkaProducer *>(opaque);
    auto seq = static_cast<InflightTransactions::Seq>(reinterpret_cast<uintptr_t>(msg->_private));
    try {
        if (msg->err) {
            self->delivery_failed_ = true;
            self->error_ = std::string("Kafka did not take a record of topic ") + self->settings_.topic + ": " +
                           rd_kafka_err2str(msg->err);
            return;
        }
        self->inflight_.record_acknowledged(seq);
        self->acknowledged_++;
        self->last_delivery_ms_ = now_ms();
        self->brokers_down_ = false;
        if (!self->broker_problem_.empty())
            self->broker_problem_.clear();
    } catch (...) {
        self->delivery_failed_ = true; // the worker restarts and re-sends from the slot
    }
}

void KafkaProducer::on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) noexcept {
    auto *self = static_cast<KafkaProducer *>(opaque);
    try {
        self->error_ = mask_secrets(reason ? reason : rd_kafka_err2str(static_cast<rd_kafka_resp_err_t>(err)),
                                    self->settings_.kafka.secret_values);
        self->broker_problem_ = self->error_;
    } catch (...) {
    }
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        // e.g. the idempotent producer lost its sequence: only a fresh
        // producer (a worker restart, which re-decodes from the slot) recovers.
        char buf[512];
        rd_kafka_fatal_error(rk, buf, sizeof(buf));
        try {
            self->error_ =
                mask_secrets(std::string("fatal Kafka producer error: ") + buf, self->settings_.kafka.secret_values);
        } catch (...) {
        }
        self->delivery_failed_ = true;
        return;
    }
    self->brokers_down_ = true;
}

void KafkaProducer::on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) noexcept {
    auto *self = static_cast<KafkaProducer *>(rd_kafka_opaque(rk));
    if (!self || self->log_lines_.size() > 1000)
        return;
    char line[1024];
    snprintf(line, sizeof(line), "librdkafka %d %s: %s", level, fac, buf);
    try {
        self->log_lines_.emplace_back(mask_secrets(line, self->settings_.kafka.secret_values));
        if (level <= 4) // LOG_WARNING or worse
            self->broker_problem_ = mask_secrets(buf, self->settings_.kafka.secret_values);
    } catch (...) {
    }
}

} // namespace kafka_sync
