// Command-line parsing: --dsn, --check, --log-level, --help, --version.
#include "config.hpp"

#include <cstdio>
#include <cstring>

namespace kafka_sync_sidecar {

namespace {

void usage(FILE *out) {
    fprintf(out,
            "kafka_sync_sidecar %s - applies peers' Kafka topics to a kafka_sync database\n"
            "\n"
            "Usage: kafka_sync_sidecar --dsn 'host=... dbname=...' [--log-level info] [--check]\n"
            "\n"
            "Runs every enabled subscription of the database (kafka_sync.sidecar_subscriptions())\n"
            "in its own thread; subscriptions created, paused, resumed or dropped take effect at\n"
            "once (SIGHUP re-reads them too). SIGTERM or SIGINT stops it after the current\n"
            "transaction and exits 0; a large transaction being streamed is rolled back.\n"
            "\n"
            "  --dsn DSN       libpq connection string of the local database (a superuser)\n"
            "  --check         connect, show the node's status and subscriptions, and exit\n"
            "  --log-level L   error, warning, info (default) or debug\n"
            "  -h, --help      this help\n"
            "  --version       print the version\n",
            kVersion);
}

} // namespace

int parse_command_line(int argc, char **argv, Options &options) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("kafka_sync_sidecar %s\n", kVersion);
            return 0;
        } else if (!strcmp(a, "--dsn") && i + 1 < argc) {
            options.dsn = argv[++i];
        } else if (!strncmp(a, "--dsn=", 6)) {
            options.dsn = a + 6;
        } else if ((!strcmp(a, "--log-level") && i + 1 < argc) || !strncmp(a, "--log-level=", 12)) {
            const char *value = a[11] == '=' ? a + 12 : argv[++i];
            if (!parse_log_level(value, options.log_level)) {
                fprintf(stderr, "kafka_sync_sidecar: invalid --log-level \"%s\" (error, warning, info or debug)\n",
                        value);
                return 2;
            }
        } else if (!strcmp(a, "--check")) {
            options.check = true;
        } else {
            fprintf(stderr, "kafka_sync_sidecar: unknown argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (options.dsn.empty()) {
        fprintf(stderr, "kafka_sync_sidecar: --dsn is required\n");
        usage(stderr);
        return 2;
    }
    return -1;
}

} // namespace kafka_sync_sidecar
