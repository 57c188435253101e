"""Fixtures of the kafka_sync end-to-end suite.

One PostgreSQL cluster and one Kafka (a local Apache Kafka broker, or
$KAFKA_BROKERS) serve the whole session; every test gets its own database,
node name and topic prefix, and its node is dropped afterwards so no producer
worker of an earlier test keeps running (or keeps a replication slot) behind
it. Tests that kill or freeze a broker get a local broker (or a 3-broker
cluster) of their own; tests that need one chosen request to fail get
librdkafka's mock cluster, the only place such faults can be made.

A broker's directory (its server.log) is kept when a test that used it
failed, and its path and the log's tail are printed.
"""

import itertools
import os
import re
import uuid

import pytest

from kafka_env import KafkaCluster, MockKafka, kafka_for_tests
from ks_helpers import USER_TABLE_DDL, Node
from pg_env import PgCluster

NODE_SERVER_CONF = {
    "shared_preload_libraries": "kafka_sync",
    "wal_level": "logical",
    "track_commit_timestamp": True,
    # This Debian build only loads output plugins listed here.
    "output_plugin_libraries": "pgoutput, test_decoding, kafka_sync",
    "max_replication_slots": 10,
    "max_wal_senders": 10,
    "max_worker_processes": 16,
    "log_min_messages": "info",
}

_counter = itertools.count(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.ks_failed = True


def _stop_broker(cluster, failed, what):
    kept = cluster.stop(keep=failed)
    if kept:
        print(f"\n{what}: a test failed; broker logs kept in {kept}\n{cluster.log_tails(30)}")


@pytest.fixture(scope="session")
def kafka(request):
    k = kafka_for_tests()
    yield k
    if isinstance(k, KafkaCluster):
        _stop_broker(k, request.session.testsfailed > 0, "session broker")
    else:
        k.stop()


@pytest.fixture
def broker_factory(request):
    """make(brokers=1) -> a local Apache Kafka of the test's own, to kill,
    freeze or restart (also with $KAFKA_BROKERS set: faults are made on a
    broker this test runs). Stopped at the end; logs kept if the test failed."""
    made = []

    def make(brokers=1, **kwargs):
        k = KafkaCluster(brokers=brokers, **kwargs)
        made.append(k)
        return k

    yield make
    for k in made:
        _stop_broker(k, getattr(request.node, "ks_failed", False), request.node.name)


@pytest.fixture
def private_broker(broker_factory):
    """One local broker+controller of the test's own (see broker_factory)."""
    return broker_factory()


@pytest.fixture
def mock_kafka():
    """librdkafka's mock cluster, only for what a broker cannot be made to do
    on purpose: an error answer to chosen requests, a delay on each request."""
    k = MockKafka()
    yield k
    k.stop()


@pytest.fixture(scope="session")
def pg():
    cluster = PgCluster(f"ks_e2e_{os.getpid()}", extra_conf=NODE_SERVER_CONF)
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_running(pg):
    """The session cluster, started again if an earlier test left it down."""
    if not pg.is_running():
        pg.start()
    return pg


def _short_name(request):
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())
    base = base.removeprefix("test_")[:18].strip("_")
    return f"{base}_{next(_counter)}"


@pytest.fixture
def node_factory(pg_running, kafka, request):
    """make_node(kafka=None, tables=(USER_TABLE_DDL,)) -> Node (not created yet).

    Creates a fresh database with the given tables and the publication
    kafka_sync FOR ALL TABLES. The node name is unique per test (slot names
    are per server), the topic prefix unique per run (so a real Kafka works).
    Teardown drops the node and the database.
    """
    pg = pg_running
    nodes = []
    run = uuid.uuid4().hex[:8]

    def make_node(kafka_cluster=None, tables=(USER_TABLE_DDL,), node_name=None):
        short = _short_name(request)
        db = f"db_{short}"
        pg.create_database(db)
        pg.sql("CREATE EXTENSION kafka_sync", dbname=db)
        for ddl in tables:
            pg.sql(ddl, dbname=db)
        pg.sql("CREATE PUBLICATION kafka_sync FOR ALL TABLES", dbname=db)
        node = Node(pg, kafka_cluster or kafka, db, node_name or f"n_{short}"[:40],
                    f"ks_pytest_{run}_{short}")
        nodes.append(node)
        return node

    yield make_node

    if not pg.is_running():
        pg.start()
    for node in nodes:
        try:
            # as the README says to remove a node: its subscriptions (their
            # replication origins are server-wide), then the node
            for (sub,) in node.sql("SELECT sub_name FROM kafka_sync.subscription"):
                node.sql("SELECT kafka_sync.drop_subscription(%s)", (sub,))
            if node.sql("SELECT count(*) FROM kafka_sync.node")[0][0]:
                node.drop()
        except Exception as e:  # keep tearing down; the test result stands
            print(f"teardown: drop_node in {node.db} failed: {e!r}")
        try:
            if pg.sql("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (node.slot,)):
                pg.sql("SELECT pg_drop_replication_slot(%s)", (node.slot,))
        except Exception as e:
            print(f"teardown: dropping slot {node.slot} failed: {e!r}")
        try:
            pg.sql(f'DROP DATABASE IF EXISTS "{node.db}" WITH (FORCE)')
        except Exception as e:
            print(f"teardown: dropping database {node.db} failed: {e!r}")
