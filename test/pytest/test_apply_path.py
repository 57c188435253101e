"""The apply path: two master databases kept in sync in both directions
through Kafka, with no loops, no loss and no duplicates, and bad input that
never crashes a backend.
"""

import json
import os
import random
import threading
import time
import uuid

import psycopg2
import pytest
from confluent_kafka import Producer

from apply_env import make_pair, settle, wait_caught_up, wait_converged
from ks_helpers import consume, wait_until

BASE_DIR = os.environ.get("KAFKA_SYNC_APPLY_DIR", "/tmp/kafka_sync_pytest_apply")

USERS = "CREATE TABLE user_table (user_id text PRIMARY KEY, user_name text, user_status text)"
WIDE = """CREATE TABLE wide (
    id uuid PRIMARY KEY, n numeric(30,10), n_special numeric, f8 float8, i8 bigint, b boolean, raw bytea,
    ints int[], texts text[], j json, jb jsonb, ts timestamptz, d date, iv interval, t_unicode text,
    inet_col inet, r int4range, nullable text)"""
# append-only: no key, so a transaction applied twice would double its rows
LEDGER = "CREATE TABLE ledger (writer text, seq int, amount int, note text)"
CHECKING = "CREATE TABLE checking (account int PRIMARY KEY, amount int NOT NULL)"
SAVINGS = "CREATE TABLE savings (account int PRIMARY KEY, amount int NOT NULL)"


@pytest.fixture
def pair_factory(kafka):
    pairs = []

    def make(schema=(USERS,), on_error="pause"):
        pair = make_pair(kafka, BASE_DIR, schema, on_error=on_error)
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        for m in pair:
            crashed = m.crashed_backends()
            m.destroy()
            assert not crashed, f"a backend of {m.name} crashed: {crashed}"


def test_one_way_changes_arrive_identical_inserts_updates_deletes_truncate_and_every_type(pair_factory):
    chat1, chat2 = pair_factory((USERS, WIDE))
    with chat2.connect() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO user_table SELECT 'u' || g, 'name ' || g, 'online' FROM generate_series(1, 200) g")
        cur.execute("UPDATE user_table SET user_status = 'away' WHERE user_id LIKE 'u1%'")
        cur.execute("UPDATE user_table SET user_id = 'renamed' WHERE user_id = 'u2'")
        cur.execute("DELETE FROM user_table WHERE user_id LIKE 'u3%'")
        cur.execute("""INSERT INTO user_table VALUES ('quote''s', 'Bob"; DROP TABLE user_table; --', NULL),
                                                     ('unicode', 'héllo 漢字 😀', E'tab\\there')""")
        cur.execute("""INSERT INTO wide VALUES (
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 12345678901234567890.0123456789, 'NaN', -1.5e-300,
            -9223372036854775808, true, '\\x00ff10', '{1,NULL,3}', '{"a b","c,d","e\\"f",NULL}',
            '{"k": [1, 2.50, "x"]}', '{"k": [1, 2.50, "x"], "a": null}', '2024-02-29 23:59:59.999999+05',
            '2024-02-29', '1 year 2 mons -3 days 04:05:06.789', 'héllo – 😀 quote" backslash\\ ',
            '192.168.0.1/24', '[1,10)', NULL)""")
        cur.execute("INSERT INTO wide (id, t_unicode) SELECT gen_random_uuid(), repeat('long ', 4000) FROM generate_series(1, 3)")
        cur.execute("UPDATE wide SET nullable = 'set later' WHERE t_unicode LIKE 'long%'")  # TOASTed value unchanged
    wait_caught_up(chat1, chat2, "user_table", "user_id")
    wait_caught_up(chat1, chat2, "wide", "id")
    assert len(chat1.table("user_table", "user_id")) == 200 - 11 + 2
    assert any("set later" in row for row in chat1.table("wide", "id"))

    chat2.sql("TRUNCATE user_table")
    wait_until(lambda: chat1.sql("SELECT count(*) FROM user_table")[0][0] == 0, 30, "truncate applied on chat1",
               diagnostics=chat1.diagnostics)


class Writer(threading.Thread):
    """Inserts and updates its own keys on one master until stopped."""

    def __init__(self, master, prefix):
        super().__init__(daemon=True)
        self.master, self.prefix = master, prefix
        self.stop_flag = threading.Event()
        self.changes = 0  # row changes committed
        self.error = None

    def run(self):
        try:
            conn = self.master.connect(autocommit=False)
            cur = conn.cursor()
            i = 0
            while not self.stop_flag.is_set():
                i += 1
                cur.execute("INSERT INTO user_table VALUES (%s, %s, 'online')", (f"{self.prefix}{i}", f"user {i}"))
                if i % 3 == 0:
                    cur.execute("UPDATE user_table SET user_status = 'away' WHERE user_id = %s",
                                (f"{self.prefix}{i - 1}",))
                    conn.commit()
                    self.changes += 2
                else:
                    conn.commit()
                    self.changes += 1
            conn.close()
        except Exception as e:  # reported by the test
            self.error = e


def origins(records):
    counts = {}
    for r in records:
        o = r.headers.get("kafka_sync.origin", "?")
        counts[o] = counts.get(o, 0) + 1
    return counts


def test_two_way_writes_converge_and_no_change_is_ever_republished(pair_factory, kafka):
    chat1, chat2 = pair_factory()
    w1, w2 = Writer(chat1, "a"), Writer(chat2, "b")
    w1.start()
    w2.start()
    time.sleep(30)  # continuous writes on both sides
    w1.stop_flag.set()
    w2.stop_flag.set()
    w1.join()
    w2.join()
    assert w1.error is None and w2.error is None, (w1.error, w2.error)
    wait_converged(chat1, chat2, "user_table", "user_id", timeout=120)
    settle(3)  # an echo, if there were one, would arrive now
    wait_converged(chat1, chat2, "user_table", "user_id")

    for master, writer in ((chat1, w1), (chat2, w2)):
        records = [r for r in consume(kafka.bootstrap, master.topic, idle_timeout=3.0, timeout=60)
                   if r.value is not None]
        # each topic holds its own node's changes, each exactly once
        assert origins(records) == {master.name: writer.changes}, (master.name, origins(records), writer.changes)
        # SIGTERM: the sidecar finishes its transaction and exits cleanly
        assert master.sidecar.stop() == 0, master.sidecar.log_text()[-2000:]


def test_exactly_once_despite_sidecar_kill9_and_source_crash_restart(pair_factory):
    chat1, chat2 = pair_factory((USERS, LEDGER))
    stop = threading.Event()
    errors = []

    def load():
        seq = 0
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = chat2.connect(autocommit=False)
                cur = conn.cursor()
                seq += 1
                if seq % 4 == 0:  # a multi-row transaction
                    for k in range(5):
                        cur.execute("INSERT INTO ledger VALUES ('w', %s, %s, 'multi')", (seq, k))
                else:
                    cur.execute("INSERT INTO ledger VALUES ('w', %s, 1, 'single')", (seq,))
                conn.commit()
            except psycopg2.Error:
                conn = None  # the server is restarting; try again
                time.sleep(0.2)
            except Exception as e:
                errors.append(e)
                return

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    rng = random.Random(7)
    for i in range(10):
        time.sleep(rng.uniform(0.3, 1.5))
        chat1.sidecar.kill9()
        if i == 5:
            chat2.pg.restart(mode="immediate")  # the source crashes: duplicates appear in its topic
        if i == 8:
            chat1.pg.restart(mode="immediate")  # the target crashes too
        chat1.sidecar.start()
    time.sleep(2)
    stop.set()
    loader.join(timeout=30)
    assert not errors, errors
    wait_caught_up(chat1, chat2, "ledger", "writer, seq, amount", timeout=180)
    rows = chat1.sql("SELECT count(*), count(DISTINCT (writer, seq, amount)) FROM ledger")[0]
    assert rows[0] == rows[1], f"a transaction was applied twice: {rows}"
    partial = chat1.sql("SELECT seq FROM ledger WHERE note = 'multi' GROUP BY seq HAVING count(*) <> 5")
    assert not partial, f"transactions applied partially: {partial}"


def test_a_reader_on_the_target_never_sees_half_a_source_transaction(pair_factory):
    chat1, chat2 = pair_factory((USERS, CHECKING, SAVINGS))
    chat2.sql("INSERT INTO checking SELECT g, 1000 FROM generate_series(1, 10) g")
    chat2.sql("INSERT INTO savings SELECT g, 0 FROM generate_series(1, 10) g")
    wait_caught_up(chat1, chat2, "savings", "account")
    stop = threading.Event()

    def transfers():
        conn = chat2.connect(autocommit=False)
        cur = conn.cursor()
        rng = random.Random(1)
        while not stop.is_set():
            a, amount = rng.randint(1, 10), rng.randint(1, 50)
            cur.execute("UPDATE checking SET amount = amount - %s WHERE account = %s", (amount, a))
            cur.execute("UPDATE savings SET amount = amount + %s WHERE account = %s", (amount, a))
            conn.commit()
        conn.close()

    t = threading.Thread(target=transfers, daemon=True)
    t.start()
    seen = set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        total, state = chat1.sql("SELECT (SELECT sum(amount) FROM checking) + (SELECT sum(amount) FROM savings), "
                                 "(SELECT string_agg(amount::text, ',') FROM savings)")[0]
        assert total == 10000, f"a reader on chat1 saw half a transfer: total {total}"
        seen.add(state)
    stop.set()
    t.join()
    assert len(seen) > 3, "the transfers did not reach chat1 while the reader watched"
    wait_caught_up(chat1, chat2, "savings", "account")


def test_kafka_outage_and_target_restart_lose_nothing_and_apply_nothing_twice(private_broker):
    """The broker is killed (kill -9) and started again on its own data; the
    target server crashes while catching up."""
    private = private_broker
    chat1, chat2 = make_pair(private, BASE_DIR, (USERS, LEDGER))
    try:
        seq = 0

        def write(n):
            nonlocal seq
            for _ in range(n):
                seq += 1
                chat2.sql("INSERT INTO ledger VALUES ('w', %s, 1, 'outage')", (seq,))

        write(50)
        private.nodes[0].kill()
        write(100)  # committed while Kafka is away: retained in the WAL, then sent
        wait_until(lambda: chat1.subscription("chat2")[1] is not None, 30, "the sidecar reports the outage",
                   diagnostics=chat1.diagnostics)
        time.sleep(3)
        private.nodes[0].start()
        private.wait_serving()
        write(50)
        chat1.pg.restart(mode="immediate")  # the target crashes while catching up
        write(50)
        wait_caught_up(chat1, chat2, "ledger", "writer, seq, amount", timeout=120)
        assert chat1.sql("SELECT count(*), count(DISTINCT seq) FROM ledger")[0] == (250, 250)
        wait_until(lambda: chat1.subscription("chat2")[1] is None, 30, "the outage is cleared in the status view",
                   diagnostics=chat1.diagnostics)
    finally:
        for m in (chat1, chat2):
            m.destroy()


def produce_raw(bootstrap, topic, records):
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 60 * 1024 * 1024})
    for key, value, headers in records:
        p.produce(topic, value=value, key=key, headers=headers, partition=0)
    assert p.flush(30) == 0


LARGE_VALUE_BYTES = 50 * 1024 * 1024


def hostile_records():
    def event(table, after, schema="public"):
        return json.dumps({"op": "c", "before": None, "after": after,
                           "source": {"schema": schema, "table": table, "origin": "chat2"}}).encode()
    return [
        (b"k1", b"\x00\xff\xfe garbage \x80", None),
        (b"k2", event("no_such_table", {"id": "1"}), [("kafka_sync.origin", b"chat2")]),
        (b"k3", event("user_table", {"user_id": "x", 'na"me; DROP TABLE user_table; --': "1"}), None),
        (b"k4", event("checking", {"account": "not a number", "amount": "1"}), None),
        (b"k5", event("user_table", {"user_id": "big", "user_name": "x" * LARGE_VALUE_BYTES})[:-2] + b"!!", None),
    ]


@pytest.mark.parametrize("on_error", ["skip", "pause"])
def test_hostile_records_never_crash_a_backend_land_in_dead_letters_and_later_records_apply(
        pair_factory, kafka, on_error):
    chat1, chat2 = pair_factory((USERS, CHECKING), on_error=on_error)
    chat2.sql("INSERT INTO user_table VALUES ('before', 'b', 'online')")
    wait_caught_up(chat1, chat2, "user_table", "user_id")

    # a 50 MB record needs a topic that accepts it (the default is 1 MB)
    kafka.alter_topic(chat2.topic, {"max.message.bytes": 60 * 1024 * 1024})
    produce_raw(kafka.bootstrap, chat2.topic, hostile_records())
    chat2.sql("INSERT INTO user_table VALUES ('after', 'a', 'online')")

    if on_error == "pause":
        # each bad record pauses the subscription until resumed past it
        for n in range(1, 6):
            wait_until(lambda: chat1.subscription("chat2")[0] == "error", 60,
                       f"subscription paused at bad record {n}", diagnostics=chat1.diagnostics)
            state, last_error, _, _, dead, _ = chat1.subscription("chat2")
            assert dead == n and last_error, (state, last_error, dead)
            assert chat1.sql("SELECT count(*) FROM user_table WHERE user_id = 'after'")[0][0] == 0
            chat1.sql("SELECT kafka_sync.resume_subscription('from_chat2', skip_failed => true)")
    wait_caught_up(chat1, chat2, "user_table", "user_id", timeout=120)
    dead = chat1.sql("SELECT kafka_offset, left(error, 200) FROM kafka_sync.dead_letters ORDER BY kafka_offset")
    assert len(dead) == 5, dead
    assert chat1.subscription("chat2")[0] == "running"
    assert chat1.sql("SELECT 1")[0][0] == 1  # the server is up


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def test_a_large_source_transaction_is_applied_whole_in_one_local_transaction_with_bounded_sidecar_memory(kafka):
    """100,000 records of one source transaction from a synthetic peer,
    produced at full speed, applied in chunks inside one local transaction;
    the sidecar's peak memory stays small."""
    from apply_env import Master
    n = 100_000
    prefix = "ks_big_" + uuid.uuid4().hex[:8]
    chat1 = Master("chat1", kafka, prefix, os.path.join(BASE_DIR, uuid.uuid4().hex[:6]))
    try:
        chat1.sql("CREATE EXTENSION kafka_sync")
        chat1.sql(USERS)
        kafka.create_topic(f"{prefix}.ghost")
        chat1.sql("SELECT kafka_sync.create_subscription('from_ghost', 'ghost', %s, topic_prefix => %s, "
                  "tables => ARRAY['user_table']::regclass[])", (kafka.bootstrap, prefix))
        chat1.sidecar.start()
        p = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 20})
        for i in range(1, n + 1):
            value = json.dumps({"op": "c", "before": None, "after": {"user_id": f"g{i}", "user_name": "x",
                                                                    "user_status": "online"},
                                "source": {"schema": "public", "table": "user_table", "origin": "ghost"}})
            headers = [("kafka_sync.origin", b"ghost"), ("kafka_sync.lsn", b"0/5000000"),
                       ("kafka_sync.seq", str(i).encode()), ("kafka_sync.commit_ts", b"1700000000000")]
            if i == n:
                headers.append(("kafka_sync.txn_end", str(n).encode()))
            p.produce(f"{prefix}.ghost", value=value.encode(), key=f'{{"user_id":"g{i}"}}'.encode(),
                      headers=headers, partition=0)
            if i % 1000 == 0:
                p.poll(0)
        assert p.flush(30) == 0
        wait_until(lambda: chat1.sql("SELECT count(*) FROM user_table")[0][0] == n, 120,
                   "the large transaction applied", diagnostics=chat1.diagnostics)
        # one local transaction: every row has the same inserting transaction
        assert chat1.sql("SELECT count(DISTINCT xmin::text) FROM user_table")[0][0] == 1
        peak_kb = vm_hwm_kb(chat1.sidecar.proc.pid)
        assert peak_kb is not None and peak_kb < 100 * 1024, f"sidecar peak RSS {peak_kb} kB"
        print(f"sidecar peak RSS for a {n}-row transaction: {peak_kb / 1024:.1f} MB")
    finally:
        chat1.destroy()
