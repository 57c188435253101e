"""Layouts and lifecycle: several nodes on one server, subscriptions that
come and go. Each test names the promise it checks."""

import json
import tempfile
import time

import psycopg2
import psycopg2.errors
import pytest

from apply_env import Sidecar
from ks_helpers import NODE_KAFKA_CONFIG, wait_until


@pytest.fixture
def sidecars():
    started = []

    def start(node):
        log = tempfile.NamedTemporaryFile(prefix=f"sidecar_{node.db}_", suffix=".log", delete=False)
        log.close()
        s = Sidecar(node.pg.dsn(node.db), log.name).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill9()


def origin_progress(node, peer):
    rows = node.sql("SELECT remote_lsn::text FROM pg_replication_origin_status "
                    "WHERE external_id = kafka_sync._origin_name(%s)", (peer.name,))
    return rows[0][0] if rows else None


def subscribe(node, peer):
    # a database that is no node names the tables it takes
    tables = "" if node.created else ", tables => ARRAY['user_table']::regclass[]"
    node.sql(f"SELECT kafka_sync.create_subscription('from_peer', %s, %s, topic_prefix => %s{tables})",
             (peer.name, peer.kafka.bootstrap, peer.prefix))


def test_two_databases_of_one_server_subscribed_to_the_same_peer_each_get_every_row(node_factory, sidecars):
    """Replication origins are server-wide: each database's subscription to
    the peer has an origin of its own, so neither skips what the other
    applied, and creating a subscription in a third database leaves their
    progress alone."""
    peer = node_factory()
    peer.create()
    a, b, c = node_factory(), node_factory(), node_factory()
    for n in (a, b):
        n.create()
        subscribe(n, peer)
    origins = {n.sql("SELECT origin_name FROM kafka_sync.subscription")[0][0] for n in (a, b)}
    assert len(origins) == 2, f"both databases apply under one origin: {origins}"
    for n in (a, b):
        sidecars(n)

    for i in range(20):
        peer.sql("INSERT INTO user_table VALUES (%s, 'x', 'online')", (f"u{i}",))
        if i % 5 == 0:
            time.sleep(0.3)  # the two sidecars interleave
    want = {f"u{i}" for i in range(20)}
    for n in (a, b):
        wait_until(lambda: n.table_keys() == want, 60, f"every row of the peer in {n.db}",
                   diagnostics=lambda: f"{n.db}: {sorted(n.table_keys())}\n{n.diagnostics()}")
    progress = {n.db: origin_progress(n, peer) for n in (a, b)}
    assert all(p and p != "0/0" for p in progress.values()), progress

    # A third database subscribing to the same peer starts from nothing and
    # leaves the others' progress alone.
    subscribe(c, peer)
    assert c.sql("SELECT count(*) FROM pg_replication_origin WHERE roname = kafka_sync._origin_name(%s)",
                 (peer.name,))[0][0] == 1
    assert origin_progress(c, peer) in (None, "0/0")
    assert {n.db: origin_progress(n, peer) for n in (a, b)} == progress
    peer.sql("INSERT INTO user_table VALUES ('last', 'x', 'online')")
    for n in (a, b):
        wait_until(lambda: "last" in n.table_keys(), 60, f"the last row in {n.db}", diagnostics=n.diagnostics)
        assert n.table_keys() == want | {"last"}


def leftovers(pg, node):
    """Everything of kafka_sync that outlives its objects, for node's database."""
    db_oid = pg.sql("SELECT oid FROM pg_database WHERE datname = %s", (node.db,))[0][0]
    return {
        "slots": pg.sql("SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s", (node.slot,)),
        "origins": pg.sql("SELECT roname FROM pg_replication_origin WHERE roname LIKE %s",
                          (f"kafka_sync\\_{db_oid}\\_%",)),
        "workers": pg.sql("SELECT pid, backend_type FROM pg_stat_activity WHERE datid = %s "
                          "AND backend_type LIKE 'kafka_sync%%'", (db_oid,)),
        "triggers": node.sql("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'kafka\\_sync%%'"),
        "event_triggers": node.sql("SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'kafka\\_sync%%'"),
    }


def test_drop_subscription_with_its_sidecar_running_drops_the_origin_and_a_new_one_works_at_once(
        node_factory, sidecars):
    peer = node_factory()
    peer.create()
    sub = node_factory()
    sub.create()
    subscribe(sub, peer)
    sidecars(sub)
    peer.sql("INSERT INTO user_table VALUES ('a', 'x', 'online')")
    wait_until(lambda: sub.table_keys() == {"a"}, 60, "the first row", diagnostics=sub.diagnostics)

    notices = []
    conn = sub.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT kafka_sync.drop_subscription('from_peer')")
        notices = list(conn.notices)
    finally:
        conn.close()
    assert not notices, notices
    assert not sub.sql("SELECT 1 FROM pg_replication_origin WHERE roname = kafka_sync._origin_name(%s)",
                       (peer.name,))
    # at once, to the same peer: from the topic's end, the sidecar picks it up
    sub.sql("SELECT kafka_sync.create_subscription('again', %s, %s, topic_prefix => %s, start => 'latest')",
            (peer.name, peer.kafka.bootstrap, peer.prefix))
    time.sleep(2)
    peer.sql("INSERT INTO user_table VALUES ('b', 'x', 'online')")
    wait_until(lambda: sub.table_keys() == {"a", "b"}, 60, "a row through the new subscription",
               diagnostics=sub.diagnostics)


def test_drop_extension_is_refused_while_a_node_and_after_drop_node_nothing_of_kafka_sync_remains(
        node_factory, sidecars, pg_running):
    pg = pg_running
    peer = node_factory()
    peer.create()
    node = node_factory()
    node.create()
    node.wait_state("streaming")
    subscribe(node, peer)
    sidecars(node)
    peer.sql("INSERT INTO user_table VALUES ('a', 'x', 'online')")
    wait_until(lambda: node.table_keys() == {"a"}, 60, "the first row", diagnostics=node.diagnostics)

    with pytest.raises(psycopg2.errors.ObjectInUse) as refused:
        node.sql("DROP EXTENSION kafka_sync")
    assert "drop_node()" in refused.value.diag.message_hint
    node.sql("SELECT kafka_sync.drop_node()")
    with pytest.raises(psycopg2.errors.ObjectInUse) as refused:
        node.sql("DROP EXTENSION kafka_sync")
    assert "drop_subscription" in refused.value.diag.message_hint
    node.sql("SELECT kafka_sync.drop_subscription('from_peer')")
    node.sql("DROP EXTENSION kafka_sync")
    wait_until(lambda: not any(leftovers(pg, node).values()), 15, "nothing of kafka_sync left",
               diagnostics=lambda: repr(leftovers(pg, node)))
    node.created = False


def test_node_status_says_starting_right_after_create_node_never_stopped(node_factory):
    node = node_factory()
    node.create()
    states = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states.append(node.status()["state"])
        if states[-1] == "streaming":
            break
        time.sleep(0.02)
    assert states[-1] == "streaming", states
    assert "stopped" not in states, states
    assert states[0] in ("starting", "snapshot", "streaming"), states


def test_subscription_status_says_no_sidecar_and_waiting_for_topic_instead_of_running(node_factory, sidecars):
    node = node_factory()
    node.create()
    node.sql("SELECT kafka_sync.create_subscription('from_ghost', 'ghost', %s, topic_prefix => %s)",
             (node.kafka.bootstrap, node.prefix))

    def state():
        return node.sql("SELECT state, last_error FROM kafka_sync.subscription_status")[0]

    assert state()[0] == "no_sidecar", state()
    sidecar = sidecars(node)
    wait_until(lambda: state()[0] == "waiting_for_topic", 60, "waiting_for_topic",
               diagnostics=lambda: f"{state()}\n{sidecar.log_text()[-2000:]}")
    assert "does not exist" in state()[1]
    sidecar.kill9()
    wait_until(lambda: state()[0] == "no_sidecar", 30, "no_sidecar once the sidecar is gone",
               diagnostics=lambda: repr(state()))


def test_a_node_whose_slot_retains_more_wal_than_the_threshold_warns_and_says_retaining_wal(
        node_factory, pg_running):
    pg = pg_running
    node = node_factory()
    node.create()
    node.wait_state("streaming")
    log_start = pg.log_position()
    pg.sql("ALTER SYSTEM SET kafka_sync.retained_wal_warning = 2")  # MB
    pg.sql("SELECT pg_reload_conf()")
    holder = node.connect(autocommit=False)
    try:
        # an open transaction keeps the slot's restart_lsn where it began
        holder.cursor().execute("INSERT INTO user_table VALUES ('held', 'x', 'online')")
        node.sql("INSERT INTO user_table SELECT 'w' || g, repeat('x', 300), 'online' FROM generate_series(1, 20000) g")
        wait_until(lambda: node.status()["state"] == "retaining_wal", 60, "state retaining_wal",
                   diagnostics=lambda: node.diagnostics(log_start))
        wait_until(lambda: "more than kafka_sync.retained_wal_warning" in pg.log_text(log_start), 30,
                   "the WARNING in the server log", diagnostics=lambda: pg.log_text(log_start)[-3000:])
        assert node.status()["records_acknowledged"] >= 20000, "nothing may be held back from Kafka meanwhile"
    finally:
        holder.rollback()
        holder.close()
        pg.sql("ALTER SYSTEM RESET kafka_sync.retained_wal_warning")
        pg.sql("SELECT pg_reload_conf()")
    wait_until(lambda: node.status()["state"] == "streaming", 30, "streaming once the threshold is back",
               diagnostics=lambda: node.diagnostics(log_start))


def test_a_record_larger_than_message_max_bytes_is_reported_and_alter_node_lets_it_through(node_factory):
    """A row bigger than the producer's message.max.bytes: node_status says so (WAL is kept,
    the worker retries with a growing pause), and kafka_sync.alter_node() with a larger
    message.max.bytes is the way out: the row then arrives, nothing lost."""
    node = node_factory()
    node.kafka.create_topic(node.topic, config={"max.message.bytes": 20000000})
    node.create(snapshot=False, create_topic=False)
    node.wait_state("streaming", timeout=60)
    node.sql("INSERT INTO user_table VALUES ('before', 'x', 'online')")
    node.sql("INSERT INTO user_table VALUES ('big', repeat('x', 3000000), 'online')")
    node.sql("INSERT INTO user_table VALUES ('after', 'x', 'online')")
    wait_until(lambda: "larger than the producer's message.max.bytes" in (node.status()["last_error"] or ""), 60,
               "node_status naming the oversized record", diagnostics=node.diagnostics)
    # the node's settings, with a larger message.max.bytes (alter_node replaces them all)
    node.sql("SELECT kafka_sync.alter_node(%s::jsonb)", (json.dumps({**NODE_KAFKA_CONFIG, "message.max.bytes": 10000000}),))
    # what Kafka had taken before the failure may come again (at least once; subscribers skip it by LSN)
    wait_until(lambda: "after" in [r.key["user_id"] for r in node.read_all(idle_timeout=1.0)], 90,
               "the three rows in the topic", diagnostics=node.diagnostics)
    records = node.read_all(idle_timeout=1.0)
    assert list(dict.fromkeys(r.key["user_id"] for r in records)) == ["before", "big", "after"], records
    assert len(next(r for r in records if r.key["user_id"] == "big").after["user_name"]) == 3000000
    wait_until(lambda: node.status()["state"] == "streaming", 60, "streaming again", diagnostics=node.diagnostics)
