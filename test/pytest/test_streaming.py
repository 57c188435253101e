"""Streaming in-progress transactions (kafka_sync.streaming), end to end.

chat1 is a node with kafka_sync.streaming on (and a small
kafka_sync.streaming_work_mem, so that a few thousand rows are streamed);
chat2 subscribes to it with its sidecar. Each test holds a big transaction
open on chat1 until its records are in Kafka, checks that chat2 applied none
of it meanwhile (while it did apply what committed in between), then ends it
and checks what chat2 holds. An ENABLE ALWAYS trigger on chat2 counts every
row event it applies, so a row applied twice (after a restart) shows.
"""

import os
import signal
from contextlib import contextmanager
import uuid
from pathlib import Path

import pytest

from apply_env import Master
from ks_helpers import consume, wait_until, watermarks

BASE_DIR = os.environ.get("KAFKA_SYNC_APPLY_DIR", "/tmp/kafka_sync_pytest_apply")

STREAMING_CONFIG = ('{"kafka_sync.streaming": true, "kafka_sync.streaming_work_mem": 64, '
                    '"reconnect.backoff.max.ms": 500}')

SCHEMA = [
    "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL)",
    "CREATE TABLE small (id int PRIMARY KEY)",
]
COUNTER = [
    "CREATE TABLE applied_events (id int, op text)",
    """CREATE FUNCTION count_event() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           INSERT INTO public.applied_events VALUES (coalesce(NEW.id, OLD.id), TG_OP);
           RETURN NULL;
       END $$""",
    "CREATE TRIGGER count_event AFTER INSERT OR UPDATE OR DELETE ON big FOR EACH ROW EXECUTE FUNCTION count_event()",
    "ALTER TABLE big ENABLE ALWAYS TRIGGER count_event",
]
ROW = "repeat('x', 200)"


@pytest.fixture
def pair(kafka):
    """(chat1 streaming, chat2 subscribed to it with its sidecar running)."""
    yield from make_pair(kafka)


@pytest.fixture
def pair_rereading(kafka):
    """The same, but chat2's sidecar keeps only 256 kB of streamed records in
    memory: bigger transactions are read again from Kafka at their commit."""
    yield from make_pair(kafka, sidecar_memory="256kB")


def make_pair(kafka, sidecar_memory=None):
    prefix = "ks_stream_" + uuid.uuid4().hex[:8]
    run_dir = Path(BASE_DIR) / uuid.uuid4().hex[:6]
    made = []
    try:
        chat1 = Master("chat1", kafka, prefix, run_dir)
        made.append(chat1)
        chat2 = Master("chat2", kafka, prefix, run_dir)
        made.append(chat2)
        for m in (chat1, chat2):
            m.sql("CREATE EXTENSION kafka_sync")
            for stmt in SCHEMA:
                m.sql(stmt)
            m.sql("CREATE PUBLICATION kafka_sync FOR TABLE big, small")
        for stmt in COUNTER:
            chat2.sql(stmt)
        if sidecar_memory:
            chat2.sql("ALTER SYSTEM SET kafka_sync.streamed_transaction_memory = %s", (sidecar_memory,))
            chat2.sql("SELECT pg_reload_conf()")
        chat1.create_node(kafka_config=STREAMING_CONFIG)
        chat2.create_node()
        chat2.subscribe(chat1)
        chat2.sidecar.start()
        yield chat1, chat2
        crashed = {m.name: m.crashed_backends() for m in made}
        assert not any(crashed.values()), f"backends crashed: {crashed}"
    finally:
        for m in made:
            m.destroy()


def high_water(m):
    return watermarks(m.kafka.bootstrap, m.topic)[1]


def count(m, query):
    return m.sql(query)[0][0]


def wait_streamed(chat1, since, records, what):
    """Until the topic holds `records` more records than at `since`."""
    wait_until(lambda: high_water(chat1) >= since + records, 60, what,
               diagnostics=lambda: f"high water {high_water(chat1)}, was {since}\n{chat1.diagnostics()}")


def wait_applied(chat1, chat2, query, expected, what):
    wait_until(lambda: count(chat2, query) == expected, 90, what,
               diagnostics=lambda: f"{query} = {count(chat2, query)}\n{chat1.diagnostics()}\n{chat2.diagnostics()}")


@contextmanager
def streamed_transaction(chat1, rows):
    """An open transaction on chat1 that inserted ids 1..rows of big, once
    1,000 of its records are in Kafka: the block goes on inside it (a
    cursor), and it commits when the block ends."""
    hw0 = high_water(chat1)
    conn = chat1.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(1, %s) g", (rows,))
            wait_streamed(chat1, hw0, 1000, "records of the open transaction in Kafka")
            yield cur
        conn.commit()
    finally:
        conn.close()


def stream_headers(records):
    return [r.headers.get("kafka_sync.stream") for r in records]


def test_a_streamed_transaction_is_in_kafka_before_its_commit_and_applied_whole_after_it(pair):
    chat1, chat2 = pair
    with streamed_transaction(chat1, 4000) as cur:
        # committed meanwhile: applied at once; the stored offset stays at the stream's start
        chat1.sql("INSERT INTO small VALUES (1)")
        wait_applied(chat1, chat2, "SELECT count(*) FROM small", 1, "the small transaction applied")
        assert count(chat2, "SELECT count(*) FROM big") == 0, "part of an open transaction was applied"
        records = consume(chat1.kafka.bootstrap, chat1.topic, idle_timeout=1.0)
        first_streamed = min(r.offset for r in records if r.headers.get("kafka_sync.stream") == "change")
        next_offset = count(chat2, "SELECT next_offset FROM kafka_sync.subscription")
        assert next_offset is not None and next_offset <= first_streamed, \
            f"stored offset {next_offset} passed the open transaction's first record {first_streamed}"
        cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(4001, 5000) g")
    wait_applied(chat1, chat2, "SELECT count(*) FROM big", 5000, "the streamed transaction applied")
    assert count(chat2, "SELECT count(*) FROM applied_events") == 5000

    records = consume(chat1.kafka.bootstrap, chat1.topic, idle_timeout=1.0)
    kinds = stream_headers(records)
    changes = [r for r in records if r.headers.get("kafka_sync.stream") == "change"]
    commits = [r for r in records if r.headers.get("kafka_sync.stream") == "commit"]
    assert len(changes) == 5000 and len(commits) == 1, kinds.count("change")
    commit = commits[0]
    assert commit.value is None and "kafka_sync.lsn" in commit.headers
    assert commit.headers["kafka_sync.txn_end"] == "5000"
    assert [int(r.headers["kafka_sync.seq"]) for r in changes] == list(range(1, 5001))
    assert all("kafka_sync.lsn" not in r.headers for r in changes)
    # the small transaction sits between the stream's records, committed before it
    small = [r for r in records if r.headers.get("kafka_sync.stream") is None and r.value and
             r.value["payload"]["source"]["table"] == "small"]
    assert len(small) == 1 and changes[0].offset < small[0].offset < commit.offset
    assert records[-1].offset == commit.offset
    # after the commit nothing holds the stored offset back
    wait_until(lambda: count(chat2, "SELECT next_offset FROM kafka_sync.subscription") == commit.offset + 1, 30,
               "next_offset past the commit record")
    # no hold leaks into the plain path: later transactions still apply
    chat1.sql("INSERT INTO small VALUES (2)")
    wait_applied(chat1, chat2, "SELECT count(*) FROM small", 2, "a later transaction applied")


def sidecar_writes_in_progress(chat2):
    """chat2's sidecar holds an open local transaction that wrote rows of big."""
    return count(chat2, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "JOIN pg_stat_activity a ON a.pid = l.pid "
                        "WHERE c.relname = 'big' AND l.mode = 'RowExclusiveLock' "
                        "AND a.application_name LIKE 'kafka_sync_sidecar%'") > 0


def test_a_streamed_transaction_alone_is_applied_while_it_runs_and_committed_with_it(pair):
    chat1, chat2 = pair
    with streamed_transaction(chat1, 4000) as cur:
        wait_until(lambda: sidecar_writes_in_progress(chat2), 30, "the sidecar applying it while it runs",
                   diagnostics=chat2.diagnostics)
        assert count(chat2, "SELECT count(*) FROM big") == 0, "rows of an open transaction are visible"
        cur.execute("UPDATE big SET v = 'updated' WHERE id <= 10")
    wait_applied(chat1, chat2, "SELECT count(*) FROM big", 4000, "the streamed transaction applied")
    assert count(chat2, "SELECT count(*) FROM big WHERE v = 'updated'") == 10
    assert count(chat2, "SELECT count(*) FROM applied_events") == 4010
    assert "applied the usual way" not in chat2.sidecar.log_text()
    assert "not while it runs" not in chat2.sidecar.log_text()
    # the rows carry the source's commit time and the peer's origin, as any applied transaction's
    src_ts = chat1.sql("SELECT pg_xact_commit_timestamp(xmin) FROM big WHERE id = 1")[0][0]
    dst_ts = chat2.sql("SELECT pg_xact_commit_timestamp(xmin) FROM big WHERE id = 1")[0][0]
    assert abs((src_ts - dst_ts).total_seconds()) < 0.002, (src_ts, dst_ts)
    lsn = chat1.sql("SELECT pg_current_wal_lsn()")[0][0]
    progress = chat2.sql("SELECT remote_lsn FROM pg_replication_origin_status")[0][0]
    assert progress is not None and progress <= lsn


@pytest.fixture
def pair_keeping_nothing(kafka):
    """chat2's sidecar keeps no streamed record in memory."""
    yield from make_pair(kafka, sidecar_memory="0")


def test_a_transaction_applied_while_it_runs_with_nothing_kept_in_memory_applies_every_record(pair_keeping_nothing):
    chat1, chat2 = pair_keeping_nothing
    with streamed_transaction(chat1, 3000):
        wait_until(lambda: sidecar_writes_in_progress(chat2), 30, "the sidecar applying it while it runs",
                   diagnostics=chat2.diagnostics)
    wait_applied(chat1, chat2, "SELECT count(*) FROM big", 3000, "the streamed transaction applied")
    assert count(chat2, "SELECT min(id) FROM big") == 1  # its first record too
    assert count(chat2, "SELECT count(*) FROM applied_events") == 3000


def test_a_conflict_of_a_transaction_in_progress_waits_for_its_commit_time(pair):
    chat1, chat2 = pair
    chat2.sql("INSERT INTO big VALUES (7, 'local, older')")  # a local row the streamed insert meets
    with streamed_transaction(chat1, 3000):
        pass  # committed as it is
    wait_applied(chat1, chat2, "SELECT count(*) FROM big", 3000, "the streamed transaction applied")
    # last update wins, by the commit time the transaction has only at its commit
    assert chat2.sql("SELECT v FROM big WHERE id = 7")[0][0] == "x" * 200
    assert count(chat2, "SELECT count(*) FROM kafka_sync.conflicts") == 1
    assert "is applied at its commit, not while it runs" in chat2.sidecar.log_text()


def test_an_aborted_streamed_transaction_and_a_rolled_back_savepoint_apply_nothing_of_theirs(pair):
    chat1, chat2 = pair
    hw0 = high_water(chat1)
    conn = chat1.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(1, 3000) g")
            wait_streamed(chat1, hw0, 1000, "records of the transaction to abort")
        conn.rollback()
        hw1 = high_water(chat1)
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(1, 2000) g")
            cur.execute("SAVEPOINT s")
            cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(2001, 5000) g")
            wait_streamed(chat1, hw1, 3000, "records of the subtransaction in Kafka")
            cur.execute("ROLLBACK TO SAVEPOINT s")
            cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(6001, 6100) g")
        conn.commit()
    finally:
        conn.close()
    chat1.sql("INSERT INTO small VALUES (1)")
    wait_applied(chat1, chat2, "SELECT count(*) FROM small", 1, "the transaction after them applied")
    wait_applied(chat1, chat2, "SELECT count(*) FROM big", 2100, "the committed part applied")
    ids = [r[0] for r in chat2.sql("SELECT id FROM big ORDER BY id")]
    assert ids == list(range(1, 2001)) + list(range(6001, 6101))
    assert count(chat2, "SELECT count(*) FROM applied_events") == 2100
    kinds = stream_headers(consume(chat1.kafka.bootstrap, chat1.topic, idle_timeout=1.0))
    assert kinds.count("abort") == 2 and kinds.count("commit") == 1, [k for k in kinds if k not in (None, "change")]


def test_a_sidecar_killed_while_a_transaction_streams_applies_everything_once(pair):
    chat1, chat2 = pair
    with streamed_transaction(chat1, 3000) as cur:
        chat1.sql("INSERT INTO big VALUES (100000, 'committed in between')")
        wait_applied(chat1, chat2, "SELECT count(*) FROM big", 1, "the transaction in between applied")
        chat2.sidecar.kill9()
        chat2.sidecar.start()
        cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(3001, 4000) g")
    wait_applied(chat1, chat2, "SELECT count(*) FROM big", 4001, "everything applied after the restart")
    chat1.sql("INSERT INTO small VALUES (1)")
    wait_applied(chat1, chat2, "SELECT count(*) FROM small", 1, "a later transaction applied")
    events = chat2.sql("SELECT id, count(*) FROM applied_events GROUP BY id HAVING count(*) > 1")
    assert events == [], f"row events applied twice: {events[:10]}"
    assert count(chat2, "SELECT count(*) FROM applied_events") == 4001


def test_a_producer_restarted_mid_stream_streams_the_transaction_again_and_it_applies_once(pair):
    chat1, chat2 = pair
    hw0 = high_water(chat1)
    with streamed_transaction(chat1, 3000) as cur:
        pid = chat1.sql("SELECT worker_pid FROM kafka_sync.node_status")[0][0]
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: chat1.sql("SELECT worker_pid FROM kafka_sync.node_status")[0][0] not in (None, pid)
                   and chat1.sql("SELECT state FROM kafka_sync.node_status")[0][0] == "streaming", 60,
                   "a new producer worker streaming", diagnostics=chat1.diagnostics)
        cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(3001, 3500) g")
    wait_applied(chat1, chat2, "SELECT count(*) FROM big", 3500, "the transaction applied")
    assert count(chat2, "SELECT count(*) FROM applied_events") == 3500
    records = consume(chat1.kafka.bootstrap, chat1.topic, idle_timeout=1.0)
    # the new worker said so (a reset record), then streamed it again from its first record
    starts = [r.offset for r in records
              if r.headers.get("kafka_sync.stream") == "change" and r.headers.get("kafka_sync.seq") == "1"]
    resets = [r.offset for r in records if r.headers.get("kafka_sync.stream") == "reset"]
    assert len(starts) == 2 and starts[1] >= hw0 + 1000, starts
    assert len(resets) == 2 and starts[0] < resets[1] < starts[1], (resets, starts)  # one at each worker start
    assert sum(1 for r in records if r.headers.get("kafka_sync.stream") == "commit") == 1


def test_streamed_transactions_bigger_than_the_sidecars_memory_are_read_again_from_kafka(pair_rereading):
    chat1, chat2 = pair_rereading
    assert count(chat2, "SELECT streamed_transaction_memory_kb FROM kafka_sync.sidecar_subscriptions()") == 256
    hw0 = high_water(chat1)
    conn = chat1.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(1, 2000) g")
            cur.execute("SAVEPOINT s")
            cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(2001, 4000) g")
            wait_streamed(chat1, hw0, 3000, "records of the subtransaction in Kafka")
            cur.execute("ROLLBACK TO SAVEPOINT s")
            chat1.sql("INSERT INTO small VALUES (1)")  # committed in between
            cur.execute(f"INSERT INTO big SELECT g, {ROW} FROM generate_series(5001, 6000) g")
        conn.commit()
    finally:
        conn.close()
    wait_applied(chat1, chat2, "SELECT count(*) FROM big", 3000, "the streamed transaction applied")
    ids = [r[0] for r in chat2.sql("SELECT id FROM big ORDER BY id")]
    assert ids == list(range(1, 2001)) + list(range(5001, 6001))
    assert "outgrew kafka_sync.streamed_transaction_memory and are read again" in chat2.sidecar.log_text()
    assert count(chat2, "SELECT count(*) FROM small") == 1
    assert count(chat2, "SELECT count(*) FROM applied_events") == 3000
    chat1.sql("INSERT INTO small VALUES (2)")
    wait_applied(chat1, chat2, "SELECT count(*) FROM small", 2, "a later transaction applied")
    assert count(chat2, "SELECT count(*) FROM applied_events") == 3000


def test_streaming_settings_are_checked(pair):
    chat1, _ = pair
    with pytest.raises(Exception) as exc:
        chat1.sql("SELECT kafka_sync.alter_node(kafka_config => %s)", ('{"kafka_sync.streaming_work_mem": 10}',))
    assert "streaming_work_mem" in str(exc.value)
