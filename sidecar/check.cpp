// --check (see check.hpp).
#include "check.hpp"

#include "db_session.hpp"
#include "log.hpp"

#include <cinttypes>
#include <cstdio>

namespace kafka_sync_sidecar {

int run_check(const std::string &dsn) {
    DbSession db(dsn, "kafka_sync_sidecar --check");
    std::string error;
    if (!db.connect(error)) {
        fprintf(stderr, "kafka_sync_sidecar: could not connect: %s\n", error.c_str());
        return 1;
    }
    PGresult *res =
        PQexec(db.conn(), "SELECT node_name, topic, state, coalesce(last_error, '') FROM kafka_sync.node_status");
    bool is_node = false;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "kafka_sync_sidecar: this database is not usable: %s", PQerrorMessage(db.conn()));
        fprintf(stderr, "hint: CREATE EXTENSION kafka_sync and call kafka_sync.create_node(...) first\n");
        PQclear(res);
        return 1;
    }
    if (PQntuples(res) == 0) {
        printf("node: none (this database is not a kafka_sync node)\n");
    } else {
        is_node = true;
        printf("node %s topic %s state %s%s%s\n", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
               PQgetvalue(res, 0, 3)[0] ? " last_error " : "", PQgetvalue(res, 0, 3));
    }
    PQclear(res);

    std::vector<SubscriptionConfig> subs;
    DbStatus st = db.read_subscriptions(subs);
    if (!st.ok()) {
        printf("subscriptions: cannot be read: %s\n", st.message.c_str());
        return is_node ? 0 : 1;
    }
    if (subs.empty())
        printf("subscriptions: none enabled\n");
    for (const SubscriptionConfig &s : subs)
        printf("subscription %s peer %s topic %s brokers %s on_error %s %s%s\n", s.name.c_str(), s.peer.c_str(),
               s.topic.c_str(), s.brokers.c_str(), s.on_error.c_str(), s.next_offset ? "next_offset " : "start ",
               s.next_offset ? std::to_string(*s.next_offset).c_str() : s.start.c_str());
    if (!is_node && subs.empty()) {
        fprintf(stderr, "kafka_sync_sidecar: this database is neither a kafka_sync node nor subscribed to one\n");
        return 1;
    }
    return 0;
}

} // namespace kafka_sync_sidecar
