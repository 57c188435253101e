// kafka_sync_sidecar: the apply-side daemon next to each database. It runs
// every enabled subscription of the database in its own thread (own libpq
// connection, own librdkafka consumer) and applies the peer's topic through
// kafka_sync.apply_chunk(). It keeps no state of its own: progress is
// committed in the database with the applied rows.
#include "check.hpp"
#include "config.hpp"
#include "log.hpp"
#include "supervisor.hpp"

#include <csignal>
#include <cstdio>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>

namespace {

volatile sig_atomic_t g_stop_signal = 0;
volatile sig_atomic_t g_reload_signal = 0;

void on_stop_signal(int sig) {
    g_stop_signal = sig;
}
void on_reload_signal(int) {
    g_reload_signal = 1;
}

} // namespace

int main(int argc, char **argv) {
    using namespace kafka_sync_sidecar;
    Options options;
    int rc = parse_command_line(argc, argv, options);
    if (rc >= 0)
        return rc;
    set_log_level(options.log_level);
    if (options.dsn_secret_in_argv)
        LOG_WARNING("the connection string given with --dsn holds a password, which every local user can read (ps); "
                    "use --dsn-file, $%s or a password file (~/.pgpass) instead",
                    kDsnEnvironmentVariable);
    if (options.check)
        return run_check(options.dsn);
    // librdkafka decompresses every fetched batch into a fresh buffer and
    // frees it again: with glibc's defaults those were mmap()ed or trimmed
    // off the heap and faulted in anew each time (~15,000 page faults for
    // 200,000 records). Freed memory up to 64 MB stays with the process.
    mallopt(M_MMAP_THRESHOLD, 16 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);

    // The stop signals stay blocked in every thread (runner threads and
    // librdkafka's inherit the mask) and are taken only inside the
    // supervisor's ppoll: no race between checking the flag and sleeping.
    sigset_t stop_signals, wait_mask;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop_signals, &wait_mask);
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);
    sigdelset(&wait_mask, SIGHUP);
    struct sigaction sa = {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sa.sa_handler = on_reload_signal;
    sigaction(SIGHUP, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);

    LOG_INFO("kafka_sync_sidecar %s starting for \"%s\" (from %s)", kVersion, mask_dsn(options.dsn).c_str(),
             options.dsn_source.c_str());
    {
        Supervisor supervisor(options.dsn, wait_mask, g_stop_signal, g_reload_signal);
        supervisor.run();
    }
    LOG_INFO("kafka_sync_sidecar stopped");
    return 0;
}
