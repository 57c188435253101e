// The producer worker's configuration (see node_config.hpp).
#include "common/settings.hpp"
#include "produce/node_config.hpp"

#include "common/secrets_file.hpp"
#include "produce/node_worker.hpp"

extern "C" {
#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/spi.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
}

#include <stdexcept>

namespace kafka_sync {

char *allowed_kafka_properties = nullptr;

namespace {

char *copy_text(SPITupleTable *tt, int col) {
    char *v = SPI_getvalue(tt->vals[0], tt->tupdesc, col);
    return MemoryContextStrdup(TopMemoryContext, v ? v : "");
}

bool read_enabled_node(NodeConfig *cfg) {
    /* a paused node is, for the worker, no node: it exits quietly */
    int rc = SPI_execute("SELECT node_name, brokers, publication, topic_prefix, slot_name, "
                         "(extract(epoch FROM created_at) * 1000000)::bigint "
                         "FROM kafka_sync.node WHERE enabled",
                         true, 1);
    if (rc != SPI_OK_SELECT || SPI_processed != 1)
        return false;
    cfg->node_name = copy_text(SPI_tuptable, 1);
    cfg->brokers = copy_text(SPI_tuptable, 2);
    cfg->publication = copy_text(SPI_tuptable, 3);
    cfg->topic_prefix = copy_text(SPI_tuptable, 4);
    cfg->slot_name = copy_text(SPI_tuptable, 5);
    cfg->created = copy_text(SPI_tuptable, 6);
    rc = SPI_execute("SELECT key, value FROM kafka_sync.node, jsonb_each_text(kafka_config) WHERE enabled ORDER BY key",
                     true, 0);
    if (rc != SPI_OK_SELECT)
        elog(ERROR, "could not read kafka_config of node %s", cfg->node_name);
    MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
    cfg->kafka_config = NIL;
    for (uint64 i = 0; i < SPI_processed; i++) {
        char *k = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
        char *v = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
        cfg->kafka_config = lappend(cfg->kafka_config, pstrdup(k));
        cfg->kafka_config = lappend(cfg->kafka_config, pstrdup(v ? v : ""));
    }
    MemoryContextSwitchTo(old);
    return true;
}

/* Reads the node row in a transaction of its own; cfg nullptr: only whether there is one. */
bool read_node(NodeConfig *cfg) {
    bool found = false;
    SetCurrentStatementStartTimestamp();
    StartTransactionCommand();
    PushActiveSnapshot(GetTransactionSnapshot());
    Oid nsp = get_namespace_oid("kafka_sync", true);
    if (OidIsValid(nsp) && OidIsValid(get_relname_relid("node", nsp))) {
        SPI_connect();
        if (cfg)
            found = read_enabled_node(cfg);
        else
            found = SPI_execute("SELECT 1 FROM kafka_sync.node", true, 1) == SPI_OK_SELECT && SPI_processed == 1;
        SPI_finish();
    }
    PopActiveSnapshot();
    CommitTransactionCommand();
    return found;
}

} // namespace

bool node_exists() {
    return read_node(nullptr);
}

bool read_node_config(NodeConfig *cfg) {
    return read_node(cfg);
}

ProducerSetup producer_setup(const NodeConfig &cfg, uint64 sysid, TimeLineID timeline) {
    const List *pairs = cfg.kafka_config;
    ConfigPairs config;
    for (ListCell *lc = list_head(pairs); lc != nullptr; lc = lnext(pairs, lnext(pairs, lc)))
        config.emplace_back(static_cast<const char *>(lfirst(lc)), static_cast<const char *>(lfirst(lnext(pairs, lc))));
    ProducerSetup setup;
    std::string error, hint;
    /*
     * The file as it is before the parse reads it: a change in between
     * costs one restart at the next reload, never a missed one.
     */
    for (const auto &[k, v] : config)
        if (k == kSecretsFileSetting)
            setup.secrets_content = secrets_file_content(v, error);
    error.clear();
    ProducerSettings &ps = setup.settings;
    const char *allowed = allowed_kafka_properties ? allowed_kafka_properties : "";
    if (!parse_node_kafka_config(config, ps.kafka, error, hint, allowed))
        throw std::runtime_error("invalid kafka_config: " + error);
    ps.brokers = cfg.brokers;
    ps.node_name = cfg.node_name;
    ps.incarnation = std::to_string(sysid) + "/" + std::to_string(timeline) + "/" + cfg.created;
    ps.topic = std::string(cfg.topic_prefix) + "." + cfg.node_name;
    setup.secrets_file = ps.kafka.secrets_file;
    return setup;
}

} // namespace kafka_sync
