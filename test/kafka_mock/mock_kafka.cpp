/*
 * kafka_sync_mock_kafka: runs librdkafka's built-in mock Kafka cluster as a
 * standalone process so that the extension's tests (PostgreSQL backends,
 * pytest, kcat) can reach it over TCP without a real Kafka installation.
 *
 * Protocol: the first stdout line is "BOOTSTRAP <host:port,...>". After that
 * every line read from stdin is one command, answered by exactly one line
 * "OK ..." or "ERR <reason>". See usage() for the command list.
 *
 * The mock cluster is an experimental librdkafka API; behaviour notes that
 * matter to tests:
 *  - unknown topics are auto-created with 4 partitions on first use and the
 *    admin CreateTopics API is not implemented, hence "create_topic".
 *  - "down" closes client connections and makes the broker refuse new ones
 *    but does not move partition leadership.
 *  - sequence numbers are only checked for transactional producers, so an
 *    idempotent producer's retry of a request that was appended before the
 *    connection dropped is stored twice (a real broker would drop it).
 */

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <strings.h>
#include <vector>

#include <poll.h>
#include <unistd.h>

namespace {

volatile sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) {
    g_stop_signal = sig;
}

bool g_verbose = false;

void log_cb(const rd_kafka_t *, int level, const char *fac, const char *buf) {
    // stdout carries the command protocol, so library chatter must never go
    // there; only warnings and worse (or everything with --verbose) reach
    // stderr.
    if (g_verbose || level <= 4)
        std::fprintf(stderr, "librdkafka[%d] %s: %s\n", level, fac, buf);
}

void usage(FILE *out, const char *prog) {
    std::fprintf(out,
                 "Usage: %s [--brokers N] [--topic NAME[:PARTITIONS]]... [--verbose]\n"
                 "\n"
                 "Starts a librdkafka mock Kafka cluster with N brokers (default 1,\n"
                 "broker ids 1..N) listening on 127.0.0.1 and prints one line\n"
                 "  BOOTSTRAP <host:port,...>\n"
                 "to stdout. Then reads commands from stdin, one per line, each\n"
                 "answered by one line 'OK ...' or 'ERR <reason>':\n"
                 "  create_topic NAME [PARTITIONS]      create a topic (default 1 partition)\n"
                 "  down all|BROKER_ID                  disconnect broker(s), refuse connections\n"
                 "  up all|BROKER_ID                    accept connections again\n"
                 "  request_errors API_KEY ERR [ERR...] fail the next requests of API_KEY\n"
                 "                                      (e.g. 0 = Produce) with these errors;\n"
                 "                                      ERR is numeric or a name such as\n"
                 "                                      NOT_LEADER_FOR_PARTITION or _TRANSPORT\n"
                 "  clear_errors API_KEY                drop pending injected errors\n"
                 "  leader TOPIC PARTITION BROKER_ID    move partition leadership (-1: none);\n"
                 "                                      'down' alone never moves it\n"
                 "  rtt all|BROKER_ID MS                add round-trip delay to a broker\n"
                 "  bootstraps                          print the bootstrap servers\n"
                 "  ping                                answers 'OK pong'\n"
                 "  quit                                destroy the cluster and exit\n"
                 "EOF on stdin, SIGTERM or SIGINT also shut the cluster down (exit 0).\n"
                 "Options:\n"
                 "  --brokers N            number of brokers (default 1)\n"
                 "  --topic NAME[:PARTS]   pre-create a topic, repeatable (default 1 partition)\n"
                 "  -v, --verbose          pass all librdkafka logs (debug=mock) to stderr\n"
                 "  -h, --help             show this help\n",
                 prog);
}

bool parse_int(const std::string &s, long min, long max, long *out) {
    if (s.empty())
        return false;
    errno = 0;
    char *end = nullptr;
    long v = std::strtol(s.c_str(), &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

// Accepts numeric codes (negative ones are librdkafka-internal, e.g. -195
// _TRANSPORT which makes the broker drop the connection) or the enum name
// with or without the RD_KAFKA_RESP_ERR_ prefix, so tests read naturally.
bool parse_error_code(const std::string &s, rd_kafka_resp_err_t *out) {
    long v;
    if (parse_int(s, INT_MIN, INT_MAX, &v)) {
        *out = static_cast<rd_kafka_resp_err_t>(v);
        return true;
    }
    std::string name = s;
    static const char prefix[] = "RD_KAFKA_RESP_ERR_";
    if (strncasecmp(name.c_str(), prefix, sizeof(prefix) - 1) == 0)
        name = name.substr(sizeof(prefix) - 1);
    const struct rd_kafka_err_desc *descs;
    size_t cnt;
    rd_kafka_get_err_descs(&descs, &cnt);
    for (size_t i = 0; i < cnt; i++) {
        if (descs[i].name && strcasecmp(descs[i].name, name.c_str()) == 0) {
            *out = descs[i].code;
            return true;
        }
    }
    return false;
}

std::vector<std::string> split_words(const std::string &line) {
    std::vector<std::string> words;
    size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t'))
            i++;
        size_t start = i;
        while (i < line.size() && line[i] != ' ' && line[i] != '\t')
            i++;
        if (i > start)
            words.push_back(line.substr(start, i - start));
    }
    return words;
}

class MockCluster {
  public:
    bool start(int brokers, std::string *err) {
        char errstr[512];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_conf_set_log_cb(conf, log_cb);
        if (g_verbose && rd_kafka_conf_set(conf, "debug", "mock", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
            *err = errstr;
            rd_kafka_conf_destroy(conf);
            return false;
        }
        // The handle only hosts the mock cluster; it never produces.
        rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!rk_) {
            *err = errstr;
            rd_kafka_conf_destroy(conf);
            return false;
        }
        mcluster_ = rd_kafka_mock_cluster_new(rk_, brokers);
        if (!mcluster_) {
            *err = "rd_kafka_mock_cluster_new failed";
            return false;
        }
        brokers_ = brokers;
        return true;
    }

    ~MockCluster() {
        if (mcluster_)
            rd_kafka_mock_cluster_destroy(mcluster_);
        if (rk_)
            rd_kafka_destroy(rk_);
    }

    const char *bootstraps() const { return rd_kafka_mock_cluster_bootstraps(mcluster_); }

    rd_kafka_resp_err_t create_topic(const std::string &name, int partitions) {
        // Replication factor above the broker count is rejected by the mock.
        int rf = brokers_ < 3 ? brokers_ : 3;
        return rd_kafka_mock_topic_create(mcluster_, name.c_str(), partitions, rf);
    }

    // "all" maps to -1, which the mock API treats as every broker.
    bool parse_broker(const std::string &s, int32_t *id) const {
        if (strcasecmp(s.c_str(), "all") == 0) {
            *id = -1;
            return true;
        }
        long v;
        if (!parse_int(s, 1, brokers_, &v))
            return false;
        *id = static_cast<int32_t>(v);
        return true;
    }

    rd_kafka_mock_cluster_t *handle() { return mcluster_; }

  private:
    rd_kafka_t *rk_ = nullptr;
    rd_kafka_mock_cluster_t *mcluster_ = nullptr;
    int brokers_ = 0;
};

bool parse_topic_spec(const std::string &spec, std::string *name, int *partitions) {
    // Kafka topic names cannot contain ':', so the last one separates the
    // partition count.
    size_t colon = spec.rfind(':');
    *name = spec.substr(0, colon);
    *partitions = 1;
    if (colon != std::string::npos) {
        long v;
        if (!parse_int(spec.substr(colon + 1), 1, 100000, &v))
            return false;
        *partitions = static_cast<int>(v);
    }
    return !name->empty();
}

std::string err_reply(rd_kafka_resp_err_t err) {
    return std::string("ERR ") + rd_kafka_err2name(err) + ": " + rd_kafka_err2str(err);
}

// Returns the reply line; sets *quit for the quit command.
std::string handle_command(MockCluster &mc, const std::string &line, bool *quit) {
    std::vector<std::string> w = split_words(line);
    if (w.empty())
        return "ERR empty command";
    const std::string &cmd = w[0];

    if (cmd == "ping")
        return "OK pong";

    if (cmd == "bootstraps")
        return std::string("OK ") + mc.bootstraps();

    if (cmd == "quit") {
        *quit = true;
        return "OK bye";
    }

    if (cmd == "create_topic") {
        if (w.size() < 2 || w.size() > 3)
            return "ERR usage: create_topic NAME [PARTITIONS]";
        long parts = 1;
        if (w.size() == 3 && !parse_int(w[2], 1, 100000, &parts))
            return "ERR invalid partition count: " + w[2];
        rd_kafka_resp_err_t err = mc.create_topic(w[1], (int)parts);
        if (err)
            return err_reply(err);
        return "OK created " + w[1] + " " + std::to_string(parts);
    }

    if (cmd == "down" || cmd == "up") {
        int32_t id;
        if (w.size() != 2)
            return "ERR usage: " + cmd + " all|BROKER_ID";
        if (!mc.parse_broker(w[1], &id))
            return "ERR invalid broker: " + w[1];
        rd_kafka_resp_err_t err = cmd == "down" ? rd_kafka_mock_broker_set_down(mc.handle(), id)
                                                : rd_kafka_mock_broker_set_up(mc.handle(), id);
        if (err)
            return err_reply(err);
        return "OK " + cmd + " " + w[1];
    }

    if (cmd == "leader") {
        long partition, broker;
        if (w.size() != 4)
            return "ERR usage: leader TOPIC PARTITION BROKER_ID|-1";
        if (!parse_int(w[2], 0, INT32_MAX, &partition))
            return "ERR invalid partition: " + w[2];
        if (!parse_int(w[3], -1, INT32_MAX, &broker) || broker == 0)
            return "ERR invalid broker: " + w[3];
        rd_kafka_resp_err_t err =
            rd_kafka_mock_partition_set_leader(mc.handle(), w[1].c_str(), (int32_t)partition, (int32_t)broker);
        if (err)
            return err_reply(err);
        return "OK leader " + w[1] + " " + w[2] + " " + w[3];
    }

    if (cmd == "rtt") {
        int32_t id;
        long ms;
        if (w.size() != 3)
            return "ERR usage: rtt all|BROKER_ID MS";
        if (!mc.parse_broker(w[1], &id))
            return "ERR invalid broker: " + w[1];
        if (!parse_int(w[2], 0, INT_MAX, &ms))
            return "ERR invalid rtt: " + w[2];
        rd_kafka_resp_err_t err = rd_kafka_mock_broker_set_rtt(mc.handle(), id, (int)ms);
        if (err)
            return err_reply(err);
        return "OK rtt " + w[1] + " " + w[2];
    }

    if (cmd == "request_errors") {
        long api_key;
        if (w.size() < 3)
            return "ERR usage: request_errors API_KEY ERR_CODE [ERR_CODE ...]";
        if (!parse_int(w[1], 0, INT16_MAX, &api_key))
            return "ERR invalid api key: " + w[1];
        std::vector<rd_kafka_resp_err_t> errs;
        for (size_t i = 2; i < w.size(); i++) {
            rd_kafka_resp_err_t e;
            if (!parse_error_code(w[i], &e))
                return "ERR invalid error code: " + w[i];
            errs.push_back(e);
        }
        rd_kafka_mock_push_request_errors_array(mc.handle(), (int16_t)api_key, errs.size(), errs.data());
        return "OK pushed " + std::to_string(errs.size()) + " error(s) for api " + w[1];
    }

    if (cmd == "clear_errors") {
        long api_key;
        if (w.size() != 2)
            return "ERR usage: clear_errors API_KEY";
        if (!parse_int(w[1], 0, INT16_MAX, &api_key))
            return "ERR invalid api key: " + w[1];
        rd_kafka_mock_clear_request_errors(mc.handle(), (int16_t)api_key);
        return "OK cleared api " + w[1];
    }

    return "ERR unknown command: " + cmd;
}

bool reply(const std::string &line) {
    std::fputs(line.c_str(), stdout);
    std::fputc('\n', stdout);
    return std::fflush(stdout) == 0;
}

} // namespace

int main(int argc, char **argv) {
    int brokers = 1;
    std::vector<std::pair<std::string, int>> topics;

    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            usage(stdout, argv[0]);
            return 0;
        } else if (a == "-v" || a == "--verbose") {
            g_verbose = true;
        } else if (a == "--brokers" && i + 1 < argc) {
            long v;
            if (!parse_int(argv[++i], 1, 100, &v)) {
                std::fprintf(stderr, "invalid --brokers value: %s\n", argv[i]);
                return 2;
            }
            brokers = (int)v;
        } else if (a == "--topic" && i + 1 < argc) {
            std::string name;
            int parts;
            if (!parse_topic_spec(argv[++i], &name, &parts)) {
                std::fprintf(stderr, "invalid --topic value: %s\n", argv[i]);
                return 2;
            }
            topics.emplace_back(name, parts);
        } else {
            std::fprintf(stderr, "unknown or incomplete argument: %s\n", a.c_str());
            usage(stderr, argv[0]);
            return 2;
        }
    }

    // Block the stop signals before librdkafka spawns its threads so they
    // inherit the mask; the signals are then only delivered to the main
    // thread, inside ppoll(), which interrupts the wait on stdin.
    sigset_t stop_set, wait_mask;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_set, &wait_mask);
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);

    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    // A vanished parent must surface as a write error, not kill us before
    // the cluster is torn down.
    std::signal(SIGPIPE, SIG_IGN);

    MockCluster mc;
    std::string err;
    if (!mc.start(brokers, &err)) {
        std::fprintf(stderr, "failed to start mock cluster: %s\n", err.c_str());
        return 1;
    }

    for (const auto &t : topics) {
        rd_kafka_resp_err_t e = mc.create_topic(t.first, t.second);
        if (e) {
            std::fprintf(stderr, "failed to create topic %s: %s\n", t.first.c_str(), rd_kafka_err2str(e));
            return 1;
        }
    }

    if (!reply(std::string("BOOTSTRAP ") + mc.bootstraps()))
        return 0;

    // stdin is read with raw read() rather than stdio so that ppoll() sees
    // exactly what has not been consumed yet.
    std::string buf;
    bool quit = false;
    while (!quit && !g_stop_signal) {
        size_t nl;
        while (!quit && (nl = buf.find('\n')) != std::string::npos) {
            std::string line = buf.substr(0, nl);
            buf.erase(0, nl + 1);
            if (!line.empty() && line.back() == '\r')
                line.pop_back();
            if (split_words(line).empty())
                continue;
            if (!reply(handle_command(mc, line, &quit)))
                quit = true;
        }
        if (quit)
            break;

        struct pollfd pfd = {STDIN_FILENO, POLLIN, 0};
        int r = ppoll(&pfd, 1, nullptr, &wait_mask);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            std::perror("ppoll");
            break;
        }
        char chunk[4096];
        ssize_t n = read(STDIN_FILENO, chunk, sizeof(chunk));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            std::perror("read");
            break;
        }
        if (n == 0) {
            // A final command without trailing newline still counts.
            if (!buf.empty() && !split_words(buf).empty())
                reply(handle_command(mc, buf, &quit));
            break;
        }
        buf.append(chunk, (size_t)n);
    }

    return 0;
}
