// kafka_sync_sidecar: the apply-side daemon next to each database.
//
// This release carries its command line and connection handling only: the
// consumer/apply loop arrives with subscriptions (the apply path). Today it
// connects, verifies that the database is a kafka_sync node and reports the
// node's status, which is what deployment scripts can already rely on.
#include <libpq-fe.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

constexpr const char *kVersion = "0.1.0";

void usage(FILE *out) {
    fprintf(out,
            "kafka_sync_sidecar %s - applies peers' Kafka topics to a kafka_sync database\n"
            "\n"
            "Usage: kafka_sync_sidecar --dsn 'host=... dbname=...' [--check]\n"
            "\n"
            "  --dsn DSN       libpq connection string of the local database\n"
            "  --check         connect, show the node's status and exit\n"
            "  --log-level L   error, warning, info (default) or debug\n"
            "  -h, --help      this help\n"
            "  --version       print the version\n",
            kVersion);
}

int check(const std::string &dsn) {
    PGconn *conn = PQconnectdb(dsn.c_str());
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "kafka_sync_sidecar: could not connect: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return 1;
    }
    PGresult *res = PQexec(conn, "SELECT node_name, topic, state, coalesce(last_error, '') FROM kafka_sync.node_status");
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "kafka_sync_sidecar: this database is not usable: %s", PQerrorMessage(conn));
        fprintf(stderr, "hint: CREATE EXTENSION kafka_sync and call kafka_sync.create_node(...) first\n");
        rc = 1;
    } else if (PQntuples(res) == 0) {
        fprintf(stderr, "kafka_sync_sidecar: this database is not a kafka_sync node\n");
        rc = 1;
    } else {
        printf("node %s topic %s state %s%s%s\n", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
               PQgetvalue(res, 0, 3)[0] ? " last_error " : "", PQgetvalue(res, 0, 3));
    }
    PQclear(res);
    PQfinish(conn);
    return rc;
}

} // namespace

int main(int argc, char **argv) {
    std::string dsn;
    bool do_check = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("kafka_sync_sidecar %s\n", kVersion);
            return 0;
        } else if (!strcmp(a, "--dsn") && i + 1 < argc) {
            dsn = argv[++i];
        } else if (!strcmp(a, "--log-level") && i + 1 < argc) {
            ++i;
        } else if (!strcmp(a, "--check")) {
            do_check = true;
        } else {
            fprintf(stderr, "kafka_sync_sidecar: unknown argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (dsn.empty()) {
        fprintf(stderr, "kafka_sync_sidecar: --dsn is required\n");
        usage(stderr);
        return 2;
    }
    if (do_check)
        return check(dsn);
    fprintf(stderr, "kafka_sync_sidecar: subscriptions are not available in this release; use --check\n");
    return 2;
}
