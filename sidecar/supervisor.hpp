// The sidecar's main loop: keeps one SubscriptionRunner per enabled
// subscription of the database, following LISTEN kafka_sync_subscriptions
// (and a re-read every 5 s as a fallback), until a stop signal.
#pragma once

#include "db_session.hpp"
#include "subscription_runner.hpp"

#include <csignal>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <signal.h>

namespace kafka_sync_sidecar {

class Supervisor {
  public:
    // wait_mask: the signal mask to wait with (stop signals unblocked); they
    // stay blocked everywhere else, so they interrupt only the waits.
    Supervisor(std::string dsn, const sigset_t &wait_mask, volatile sig_atomic_t &stop_signal,
               volatile sig_atomic_t &reload_signal);
    ~Supervisor();
    void run();

  private:
    using Clock = std::chrono::steady_clock;

    bool connect();
    void refresh();
    void reconcile(const std::vector<SubscriptionConfig> &subs);
    void reap();
    void wait(int ms);
    void drain_notifications();
    void stop_all();

    std::string dsn_;
    sigset_t wait_mask_;
    volatile sig_atomic_t &stop_signal_;
    volatile sig_atomic_t &reload_signal_;
    DbSession db_;
    bool db_down_ = false;
    bool list_failing_ = false;
    int backoff_ms_ = 500;
    bool need_refresh_ = true;
    std::map<std::string, std::unique_ptr<SubscriptionRunner>> running_;
    std::vector<std::unique_ptr<SubscriptionRunner>> stopping_;
    std::map<std::string, Clock::time_point> not_before_; // runners that ended on their own
};

} // namespace kafka_sync_sidecar
