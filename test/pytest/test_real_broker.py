"""Faults and full-size loads on a real Apache Kafka (test/kafka_broker).

Two masters, chat1 and chat2, write their own rows of `ledger` as fast as
they can and apply each other's, while the broker is killed, frozen, loses
a partition leader, or a subscription is paused. Afterwards nothing is lost
and no row event was applied twice: an ENABLE ALWAYS trigger on every node
counts each row event it sees, local or applied, in `row_events` (not
published), and every row must show exactly one insert and as many updates
as its writer made. Each test prints its figures (rows written during the
fault, time to converge afterwards, the states the status views showed).

The faults are made on brokers these tests start themselves, also when
$KAFKA_BROKERS names a cluster for the rest of the suite.
"""

import os
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka import Producer

from apply_env import Master
from ks_helpers import proc_kb, wait_until, watermarks

BASE_DIR = os.environ.get("KAFKA_SYNC_APPLY_DIR", "/tmp/kafka_sync_pytest_apply")

LEDGER = "CREATE TABLE ledger (writer text, seq int, amount int NOT NULL, note text, PRIMARY KEY (writer, seq))"
ROW_EVENTS = [
    "CREATE TABLE row_events (writer text, seq int, op text)",
    # schema-qualified: apply sessions run with search_path = pg_catalog
    """CREATE FUNCTION count_row_event() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           INSERT INTO public.row_events VALUES (coalesce(NEW.writer, OLD.writer), coalesce(NEW.seq, OLD.seq), TG_OP);
           RETURN NULL;
       END $$""",
    "CREATE TRIGGER count_row_event AFTER INSERT OR UPDATE OR DELETE ON ledger "
    "FOR EACH ROW EXECUTE FUNCTION count_row_event()",
    # fires in apply sessions too (they run as replicas)
    "ALTER TABLE ledger ENABLE ALWAYS TRIGGER count_row_event",
]


# -- set-up ---------------------------------------------------------------------------------------

def make_ledger_pair(kafka, topic_config=None):
    """chat1 and chat2 on `kafka`, each publishing ledger only (row_events
    stays local), subscribed to each other, sidecars running."""
    prefix = "ks_fault_" + uuid.uuid4().hex[:8]
    run_dir = Path(BASE_DIR) / uuid.uuid4().hex[:6]
    pair = []
    try:
        for name in ("chat1", "chat2"):
            m = Master(name, kafka, prefix, run_dir)
            pair.append(m)
            m.sql("CREATE EXTENSION kafka_sync")
            for stmt in [LEDGER, *ROW_EVENTS]:
                m.sql(stmt)
            m.sql("CREATE PUBLICATION kafka_sync FOR TABLE ledger")
            kafka.create_topic(m.topic, config=topic_config)
            m.create_node()
        chat1, chat2 = pair
        chat1.subscribe(chat2)
        chat2.subscribe(chat1)
        for m in pair:
            m.sidecar.start()
    except BaseException:
        for m in pair:
            m.destroy()
        raise
    return pair


@pytest.fixture
def ledger_pairs():
    made = []

    def make(kafka, **kwargs):
        pair = make_ledger_pair(kafka, **kwargs)
        made.extend(pair)
        return pair

    yield make
    crashed = {}
    for m in made:
        bad = m.crashed_backends()
        if bad:
            crashed[m.name] = bad
        m.destroy()
    assert not crashed, f"backends crashed: {crashed}"


class LedgerWriter(threading.Thread):
    """Writes its node's own rows as fast as it can: single inserts, 5-row
    transactions, and updates of its earlier rows (amount + 1 each). Knows
    exactly what it committed: {seq: amount}."""

    def __init__(self, master, seed):
        super().__init__(daemon=True)
        self.master = master
        self.rng = random.Random(seed)
        self.committed = {}
        self.stop_flag = threading.Event()
        self.txns = 0
        self.error = None
        self.seq = 0

    def run(self):
        conn = None
        try:
            conn = self.master.connect(autocommit=False)
            cur = conn.cursor()
            name = self.master.name
            while not self.stop_flag.is_set():
                r = self.rng.random()
                if r < 0.2 and self.committed:
                    seq = self.rng.randrange(1, self.seq + 1)
                    while seq not in self.committed:
                        seq = self.rng.randrange(1, self.seq + 1)
                    cur.execute("UPDATE ledger SET amount = amount + 1 WHERE writer = %s AND seq = %s",
                                (name, seq))
                    conn.commit()
                    self.committed[seq] += 1
                else:
                    n = 5 if r < 0.35 else 1
                    seqs = range(self.seq + 1, self.seq + 1 + n)
                    for s in seqs:
                        cur.execute("INSERT INTO ledger VALUES (%s, %s, 0, 'row ' || %s)", (name, s, s))
                    conn.commit()
                    self.seq += n
                    for s in seqs:
                        self.committed[s] = 0
                self.txns += 1
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            if conn is not None:
                conn.close()

    def stop(self):
        self.stop_flag.set()
        self.join(timeout=60)
        assert not self.is_alive(), f"writer on {self.master.name} did not stop"
        assert self.error is None, f"writer on {self.master.name}: {self.error!r}"

    def expected(self):
        """(row count, sum of amounts) of this writer's rows."""
        return len(self.committed), sum(self.committed.values())


class StatusWatcher(threading.Thread):
    """Samples node_status and subscription_status of every node every 0.5 s:
    the states they showed, and the largest subscription lag."""

    def __init__(self, masters):
        super().__init__(daemon=True)
        self.masters = masters
        self.states = Counter()
        self.max_lag = 0
        self.errors = Counter()
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.wait(0.5):
            for m in self.masters:
                try:
                    node_state = m.sql("SELECT state FROM kafka_sync.node_status")[0][0]
                    self.states[f"{m.name} node {node_state}"] += 1
                    for s in m.subscriptions():
                        self.states[f"{m.name} sub {s['state']}"] += 1
                        self.max_lag = max(self.max_lag, s["lag"] or 0)
                        if s["last_error"]:
                            self.errors[s["last_error"][:100]] += 1
                except psycopg2.Error:
                    self.states[f"{m.name} unreachable"] += 1

    def stop(self):
        self.stop_flag.set()
        self.join(timeout=10)


def rows_of(master, writer):
    return master.sql("SELECT count(*), coalesce(sum(amount), 0) FROM ledger WHERE writer = %s", (writer,))[0]


def wait_converged_on_writers(pair, writers, timeout=240.0):
    """Until both nodes hold exactly what both writers committed."""
    def done():
        return all(tuple(rows_of(m, w.master.name)) == w.expected() for m in pair for w in writers)

    def diagnostics():
        lines = [f"{w.master.name} committed {w.expected()}" for w in writers]
        for m in pair:
            lines.append(f"{m.name}: " + ", ".join(f"{w.master.name} {tuple(rows_of(m, w.master.name))}"
                                                   for w in writers))
            for s in m.subscriptions():
                lines.append(f"  {s['name']}: state={s['state']} lag={s['lag']} applied={s['applied_offset']} "
                             f"high={s['high_water']} error={s['last_error']}")
        return "\n".join(lines) + "\n" + "\n".join(m.diagnostics() for m in pair)

    t0 = time.monotonic()
    wait_until(done, timeout, "both nodes holding every committed row", interval=0.5, diagnostics=diagnostics)
    return time.monotonic() - t0


def check_each_row_event_once(pair, writers):
    """Every row of ledger, on every node: one INSERT event, as many UPDATE
    events as its writer made, no DELETE; and each node holds exactly the
    committed rows."""
    for m in pair:
        for w in writers:
            rows = dict(m.sql("SELECT seq, amount FROM ledger WHERE writer = %s", (w.master.name,)))
            assert rows == w.committed, (
                f"{m.name}: {w.master.name}'s rows differ from what it committed: "
                f"{len(rows)} rows vs {len(w.committed)}; first differences "
                f"{[s for s in w.committed if rows.get(s) != w.committed[s]][:10]}")
        bad = m.sql("""
            SELECT l.writer, l.seq, l.amount, count(e.*) FILTER (WHERE e.op = 'INSERT'),
                   count(e.*) FILTER (WHERE e.op = 'UPDATE'), count(e.*) FILTER (WHERE e.op = 'DELETE')
              FROM ledger l LEFT JOIN row_events e USING (writer, seq)
             GROUP BY l.writer, l.seq, l.amount
            HAVING count(e.*) FILTER (WHERE e.op = 'INSERT') <> 1
                OR count(e.*) FILTER (WHERE e.op = 'UPDATE') <> l.amount
                OR count(e.*) FILTER (WHERE e.op = 'DELETE') <> 0
             LIMIT 10""")
        assert not bad, f"{m.name}: row events applied twice or missing (writer, seq, amount, I, U, D): {bad}"
        stray = m.sql("SELECT count(*) FROM row_events e WHERE NOT EXISTS "
                      "(SELECT 1 FROM ledger l WHERE l.writer = e.writer AND l.seq = e.seq)")[0][0]
        assert stray == 0, f"{m.name}: {stray} row events of rows that do not exist"


def two_way_load_around(pair, fault, warmup=3.0, after=5.0):
    """Writers on both nodes; after warm-up run fault() (which returns when
    the fault is over), write on for `after` seconds, stop, wait for
    convergence and check every row event. Returns figures for the report."""
    writers = [LedgerWriter(m, seed=i) for i, m in enumerate(pair)]
    watcher = StatusWatcher(pair)
    for w in writers:
        w.start()
    watcher.start()
    try:
        time.sleep(warmup)
        before = [w.txns for w in writers]
        t0 = time.monotonic()
        fault()
        fault_seconds = time.monotonic() - t0
        during = [w.txns - b for w, b in zip(writers, before)]
        time.sleep(after)
    finally:
        for w in writers:
            w.stop_flag.set()
    for w in writers:
        w.stop()
    converge = wait_converged_on_writers(pair, writers)
    watcher.stop()
    check_each_row_event_once(pair, writers)
    return {
        "fault_s": round(fault_seconds, 1),
        "txns_during_fault": during,
        "rows": [len(w.committed) for w in writers],
        "txns": [w.txns for w in writers],
        "converged_after_stop_s": round(converge, 1),
        "max_lag_records": watcher.max_lag,
        "states": dict(watcher.states),
        "errors": dict(watcher.errors.most_common(5)),
    }


def report(name, figures):
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# -- broker faults --------------------------------------------------------------------------------

def test_broker_kill9_and_restart_under_two_way_load_loses_nothing_and_applies_nothing_twice(
        broker_factory, ledger_pairs):
    kafka = broker_factory()
    pair = ledger_pairs(kafka)
    broker = kafka.nodes[0]

    def fault():
        broker.kill()
        time.sleep(10)
        broker.start()
        kafka.wait_serving()

    figures = two_way_load_around(pair, fault)
    report("broker kill -9, 10 s down, restart", figures)
    assert any("kafka_unavailable" in s for s in figures["states"]), (
        f"no node reported the outage: {figures['states']}")


def test_broker_frozen_30s_under_two_way_load_loses_nothing_and_applies_nothing_twice(
        broker_factory, ledger_pairs):
    kafka = broker_factory()
    pair = ledger_pairs(kafka)
    broker = kafka.nodes[0]

    def fault():
        broker.freeze()
        time.sleep(30)
        broker.thaw()

    figures = two_way_load_around(pair, fault)
    report("broker SIGSTOP 30 s, SIGCONT", figures)


def test_partition_leader_killed_in_a_3_broker_cluster_loses_nothing_and_applies_nothing_twice(
        broker_factory, ledger_pairs):
    """Replication factor 3, min.insync.replicas 2: with the leader of both
    topics' partitions gone the other two take over, and acks=all still
    holds. The killed broker comes back while the load goes on."""
    kafka = broker_factory(brokers=3)
    pair = ledger_pairs(kafka)
    chat1, chat2 = pair
    leaders = {}

    def fault():
        victim = kafka.leader_of(chat1.topic)
        leaders["before"] = (victim.node_id, kafka.leader_of(chat2.topic).node_id)
        victim.kill()
        # a new leader is elected among the two in-sync followers
        new = kafka.leader_of(chat1.topic)
        deadline = time.monotonic() + 60
        while new.node_id == victim.node_id and time.monotonic() < deadline:
            time.sleep(0.2)
            new = kafka.leader_of(chat1.topic)
        leaders["after"] = (new.node_id, kafka.leader_of(chat2.topic).node_id)
        time.sleep(10)  # two brokers serve the load
        victim.start()
        kafka.wait_serving()

    figures = two_way_load_around(pair, fault)
    figures["leaders"] = leaders
    report("3 brokers, partition leader kill -9, restarted after 10 s", figures)
    assert leaders["after"][0] != leaders["before"][0], leaders


def test_retention_gap_stops_the_subscription_and_one_resnapshot_on_the_peer_brings_it_back_identical(
        broker_factory, ledger_pairs):
    """chat1's subscription is paused while chat2 inserts, updates and
    deletes; chat2's topic keeps records for one second, so records chat1 has
    not applied are deleted. The subscriber must not jump over the gap (that
    would lose rows silently): it applies nothing past it, and
    subscription_status shows state error with a last_error that says records
    are gone and names the recovery. The recovery is one command on the peer,
    kafka_sync.resnapshot(): chat1 resynchronises from that snapshot (rows the
    peer deleted meanwhile go too) while both nodes keep writing, and the two
    ledgers end identical."""
    kafka = broker_factory()
    pair = ledger_pairs(kafka)
    chat1, chat2 = pair
    old = "chat2_old"  # rows chat2 writes by hand; the writers below use their node's name
    chat2.sql("INSERT INTO ledger SELECT %s, g, 0, 'before' FROM generate_series(1, 100) g", (old,))
    wait_until(lambda: rows_of(chat1, old)[0] == 100, 60, "the first 100 rows on chat1",
               diagnostics=chat1.diagnostics)
    chat1.sql("SELECT kafka_sync.pause_subscription('from_chat2')")
    applied = chat1.subscription("chat2")[2]
    # the smallest segments Kafka allows (1 MB), deleted a second after
    # their last record
    kafka.alter_topic(chat2.topic, {"retention.ms": 1000, "segment.bytes": 1048576, "segment.ms": 500,
                                    "file.delete.delay.ms": 0})
    chat2.sql("DELETE FROM ledger WHERE writer = %s AND seq <= 10", (old,))
    chat2.sql("UPDATE ledger SET amount = 7, note = 'updated' WHERE writer = %s AND seq BETWEEN 11 AND 20", (old,))
    for lo in range(101, 20001, 1000):
        chat2.sql("INSERT INTO ledger SELECT %s, g, 0, 'gone' FROM generate_series(%s, %s) g",
                  (old, lo, lo + 999))
    wait_until(lambda: watermarks(kafka.bootstrap, chat2.topic)[0] > applied + 1, 60,
               f"retention deleting {chat2.topic} past offset {applied + 1}",
               diagnostics=lambda: f"watermarks {watermarks(kafka.bootstrap, chat2.topic)}")
    low, high = watermarks(kafka.bootstrap, chat2.topic)
    kafka.alter_topic(chat2.topic, {"retention.ms": -1})  # what comes now stays

    chat1.sql("SELECT kafka_sync.resume_subscription('from_chat2')")
    wait_until(lambda: "no longer in Kafka" in (chat1.subscription("chat2")[1] or ""), 60,
               "the subscription reporting the gap", diagnostics=chat1.diagnostics)
    time.sleep(3)
    state, last_error, applied_after, *_ = chat1.subscription("chat2")
    assert applied_after == applied, f"the subscription moved past the gap: {applied} -> {applied_after}"
    assert state == "error" and "no longer in Kafka" in last_error, (state, last_error)
    assert "kafka_sync.resnapshot() on node chat2" in last_error, last_error
    assert rows_of(chat1, old) == (100, 0), "rows after the gap were applied"
    print(f"\nretention gap: applied through offset {applied}, topic then {low}..{high}; "
          f"subscription_status state={state!r}, last_error={last_error!r}")

    # Both nodes keep writing; the one recovery command runs on the peer.
    writers = [LedgerWriter(m, seed=i) for i, m in enumerate(pair)]
    for w in writers:
        w.start()
    try:
        time.sleep(2)
        chat2.sql("SELECT kafka_sync.resnapshot()")
        t0 = time.monotonic()
        seen = set()

        def resynchronised():
            sub = chat1.subscription("chat2")
            seen.add(sub[0])
            return chat1.sql("SELECT last_resync_at IS NOT NULL FROM kafka_sync.subscription_status "
                             "WHERE peer = 'chat2'")[0][0] and sub[0] == "running"
        wait_until(resynchronised, 120, "chat1 resynchronised from chat2's snapshot",
                   diagnostics=lambda: f"{chat1.subscription('chat2')}\n{chat1.diagnostics()}")
        resync_seconds = time.monotonic() - t0
        time.sleep(2)
    finally:
        for w in writers:
            w.stop()
    wait_converged_on_writers(pair, writers)
    assert rows_of(chat1, old) == rows_of(chat2, old) == (20090, 70)
    digests = [m.digest(["ledger"]) for m in pair]

    def same():
        digests[:] = [m.digest(["ledger"]) for m in pair]
        return digests[0] == digests[1]
    wait_until(same, 60, "identical ledgers on both nodes",
               diagnostics=lambda: f"{digests}\n" + "\n".join(m.diagnostics() for m in pair))
    assert chat1.sql("SELECT count(*) FROM kafka_sync.resync_keys")[0][0] == 0
    print(f"resynchronised {resync_seconds:.1f} s after resnapshot(); states seen {sorted(seen)}; "
          f"ledger {digests[0]['ledger'][0]} rows on each node")


# -- full size, no pacing -------------------------------------------------------------------------

def test_subscription_paused_60s_under_two_way_load_catches_up_with_nothing_lost(broker_factory, ledger_pairs):
    kafka = broker_factory()
    pair = ledger_pairs(kafka)
    chat1, _ = pair

    def fault():
        chat1.sql("SELECT kafka_sync.pause_subscription('from_chat2')")
        time.sleep(60)
        chat1.sql("SELECT kafka_sync.resume_subscription('from_chat2')")

    figures = two_way_load_around(pair, fault)
    report("subscription paused 60 s", figures)


MILLION = int(os.environ.get("KAFKA_SYNC_BIG_ROWS", "1000000"))
WORKER_RSS_LIMIT_KB = 300 * 1024
SIDECAR_RSS_LIMIT_KB = 300 * 1024


def test_a_million_row_transaction_arrives_whole_with_bounded_producer_and_sidecar_memory(
        kafka, ledger_pairs):
    pair = ledger_pairs(kafka)
    chat1, chat2 = pair
    worker = chat2.sql("SELECT worker_pid FROM kafka_sync.node_status")[0][0]
    worker_before = proc_kb(worker, "VmHWM")
    t0 = time.monotonic()
    chat2.sql("INSERT INTO ledger SELECT 'chat2', g, 0, 'row ' || g FROM generate_series(1, %s) g", (MILLION,))
    committed = time.monotonic() - t0
    wait_until(lambda: rows_of(chat1, "chat2")[0] == MILLION, 600, f"{MILLION} rows on chat1",
               interval=1.0, diagnostics=chat1.diagnostics)
    visible = time.monotonic() - t0
    # one local transaction: every row has the same inserting transaction
    assert chat1.sql("SELECT count(DISTINCT xmin::text) FROM ledger WHERE writer = 'chat2'")[0][0] == 1
    assert chat1.sql("SELECT count(*), count(DISTINCT seq) FROM row_events WHERE op = 'INSERT'")[0] == (
        MILLION, MILLION)
    worker_hwm = proc_kb(worker, "VmHWM")
    sidecar_hwm = proc_kb(chat1.sidecar.proc.pid, "VmHWM")
    print(f"\n{MILLION}-row transaction: commit {committed:.1f} s, on chat1 after {visible:.1f} s; "
          f"producer worker VmHWM {worker_before / 1024:.0f} -> {worker_hwm / 1024:.0f} MB, "
          f"sidecar VmHWM {sidecar_hwm / 1024:.0f} MB, topic {watermarks(kafka.bootstrap, chat2.topic)}")
    assert worker_hwm < WORKER_RSS_LIMIT_KB, f"producer worker peak RSS {worker_hwm} kB"
    assert sidecar_hwm < SIDECAR_RSS_LIMIT_KB, f"sidecar peak RSS {sidecar_hwm} kB"


def test_kafka_broker_tool_restarts_a_killed_broker_with_its_data(broker_factory):
    """The test broker itself: records written before a kill -9 are there
    after the restart, on the same address."""
    kafka = broker_factory()
    kafka.create_topic("tool_check")
    p = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    for i in range(100):
        p.produce("tool_check", value=str(i).encode(), partition=0)
    assert p.flush(15) == 0
    kafka.nodes[0].kill()
    assert not kafka.nodes[0].running()
    kafka.nodes[0].start()
    kafka.wait_serving()
    assert watermarks(kafka.bootstrap, "tool_check") == (0, 100)
