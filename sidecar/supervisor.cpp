// Subscriptions -> runner threads (see supervisor.hpp).
#include "supervisor.hpp"

#include "log.hpp"

#include <algorithm>
#include <cerrno>
#include <set>
#include <poll.h>

namespace kafka_sync_sidecar {

namespace {

constexpr const char *kChannel = "kafka_sync_subscriptions";
constexpr auto kRefreshInterval = std::chrono::seconds(5);
// A runner that ended by itself (paused, dropped) is not restarted sooner
// than this even if a stale list still shows its subscription.
constexpr auto kRestartDelay = std::chrono::seconds(5);
constexpr auto kShutdownGrace = std::chrono::seconds(10);

} // namespace

Supervisor::Supervisor(std::string dsn, const sigset_t &wait_mask, volatile sig_atomic_t &stop_signal,
                       volatile sig_atomic_t &reload_signal)
    : dsn_(std::move(dsn)), wait_mask_(wait_mask), stop_signal_(stop_signal), reload_signal_(reload_signal),
      db_(dsn_, "kafka_sync_sidecar") {}

Supervisor::~Supervisor() {
    stop_all();
}

bool Supervisor::connect() {
    std::string error;
    if (db_.connect(error)) {
        DbStatus st = db_.exec("LISTEN kafka_sync_subscriptions");
        if (st.ok()) {
            if (db_down_)
                LOG_INFO("database connection regained");
            db_down_ = false;
            backoff_ms_ = 500;
            need_refresh_ = true;
            return true;
        }
        error = st.message;
        db_.close();
    }
    if (!db_down_)
        LOG_WARNING("database connection lost: %s (retrying)", error.c_str());
    db_down_ = true;
    return false;
}

void Supervisor::run() {
    auto next_refresh = Clock::now();
    while (!stop_signal_) {
        if (!db_.connected() && !connect()) {
            wait(backoff_ms_);
            backoff_ms_ = std::min(backoff_ms_ * 2, 10000);
            continue;
        }
        if (reload_signal_) {
            reload_signal_ = 0;
            need_refresh_ = true;
        }
        const auto now = Clock::now();
        if (need_refresh_ || now >= next_refresh) {
            need_refresh_ = false;
            next_refresh = now + kRefreshInterval;
            refresh();
            drain_notifications(); // a change committed during the read: read again
        }
        reap();
        if (!db_.connected())
            continue;
        auto until_refresh = std::chrono::duration_cast<std::chrono::milliseconds>(next_refresh - Clock::now());
        wait(static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(until_refresh.count(), 500))));
    }
    LOG_INFO("stop signal received: stopping %zu subscription(s)", running_.size());
    stop_all();
}

void Supervisor::refresh() {
    std::vector<SubscriptionConfig> subs;
    DbStatus st = db_.read_subscriptions(subs);
    if (st.kind == DbStatus::Kind::Lost) {
        LOG_WARNING("database connection lost: %s (retrying)", st.message.c_str());
        db_down_ = true;
        return; // runners keep going on their own connections
    }
    if (!st.ok()) {
        if (!list_failing_)
            LOG_ERROR("cannot read the subscriptions (kafka_sync.sidecar_subscriptions()): %s; is the extension "
                      "installed and the sidecar's role a superuser? (retrying)",
                      st.message.c_str());
        list_failing_ = true;
        return;
    }
    if (list_failing_)
        LOG_INFO("subscriptions readable again");
    list_failing_ = false;
    for (SubscriptionConfig &sub : subs)
        note_secrets_file(sub); // a changed secrets file restarts the subscription's consumer
    reconcile(subs);
}

void Supervisor::reconcile(const std::vector<SubscriptionConfig> &subs) {
    reap();
    const auto now = Clock::now();
    std::set<std::string> listed;
    for (const SubscriptionConfig &sub : subs) {
        listed.insert(sub.name);
        auto it = running_.find(sub.name);
        if (it != running_.end()) {
            if (it->second->config().same_settings(sub))
                continue;
            LOG_INFO("subscription %s was changed: restarting it", sub.name.c_str());
            it->second->request_stop();
            stopping_.push_back(std::move(it->second));
            running_.erase(it);
        }
        // One runner per subscription: a new one starts once the old one ended.
        bool old_still_running = std::any_of(stopping_.begin(), stopping_.end(),
                                             [&](const auto &r) { return r->config().name == sub.name; });
        auto nb = not_before_.find(sub.name);
        if (old_still_running || (nb != not_before_.end() && now < nb->second))
            continue;
        auto runner = std::make_unique<SubscriptionRunner>(dsn_, sub);
        runner->start();
        running_[sub.name] = std::move(runner);
    }
    for (auto it = running_.begin(); it != running_.end();) {
        if (listed.count(it->first)) {
            ++it;
            continue;
        }
        LOG_INFO("subscription %s is no longer enabled (paused or dropped): stopping it", it->first.c_str());
        it->second->request_stop();
        stopping_.push_back(std::move(it->second));
        it = running_.erase(it);
    }
}

void Supervisor::reap() {
    for (auto it = running_.begin(); it != running_.end();) {
        if (!it->second->finished()) {
            ++it;
            continue;
        }
        it->second->join();
        not_before_[it->first] = Clock::now() + kRestartDelay;
        it = running_.erase(it);
    }
    for (auto it = stopping_.begin(); it != stopping_.end();) {
        if (!(*it)->finished()) {
            ++it;
            continue;
        }
        (*it)->join();
        it = stopping_.erase(it);
        need_refresh_ = true; // a changed subscription can start again now
    }
}

void Supervisor::drain_notifications() {
    if (!db_.connected())
        return;
    PGconn *conn = db_.conn();
    if (!PQconsumeInput(conn)) {
        LOG_WARNING("database connection lost: %s (retrying)", one_line(PQerrorMessage(conn)).c_str());
        db_.close();
        db_down_ = true;
        return;
    }
    while (PGnotify *n = PQnotifies(conn)) {
        LOG_DEBUG("notification on %s: subscription %s changed", kChannel, n->extra);
        need_refresh_ = true;
        not_before_.clear(); // a deliberate change (resume): start at once
        PQfreemem(n);
    }
}

// Sleeps until the timeout, a notification on the supervisor's connection or
// a signal (the stop signals are unblocked only inside ppoll). poll, not
// select: an fd_set cannot hold a descriptor >= FD_SETSIZE (1024), and the
// connection made again after a database restart gets the lowest free one,
// above those of the runners (a connection and librdkafka's sockets each).
void Supervisor::wait(int ms) {
    struct pollfd pfd = {};
    pfd.fd = db_.connected() ? PQsocket(db_.conn()) : -1; // poll ignores a negative fd
    pfd.events = POLLIN;
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = static_cast<long>(ms % 1000) * 1000000L;
    int rc = ppoll(&pfd, 1, &ts, &wait_mask_);
    // POLLHUP/POLLERR too: PQconsumeInput then finds the connection gone
    if (rc > 0 && pfd.fd >= 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)))
        drain_notifications();
    else if (rc < 0 && errno != EINTR)
        LOG_DEBUG("ppoll: errno %d", errno);
}

void Supervisor::stop_all() {
    for (auto &entry : running_) {
        entry.second->request_stop();
        stopping_.push_back(std::move(entry.second));
    }
    running_.clear();
    if (stopping_.empty())
        return;
    // Runners finish their small transactions and roll back a streamed one;
    // a statement that takes longer than the grace period is cancelled.
    const auto deadline = Clock::now() + kShutdownGrace;
    while (Clock::now() < deadline &&
           std::any_of(stopping_.begin(), stopping_.end(), [](const auto &r) { return !r->finished(); })) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, nullptr);
    }
    for (auto &r : stopping_)
        if (!r->finished()) {
            LOG_WARNING("subscription %s: cancelling its running statement to stop", r->config().name.c_str());
            r->cancel_statement();
        }
    for (auto &r : stopping_)
        r->join();
    stopping_.clear();
}

} // namespace kafka_sync_sidecar
