"""The apply functions against local writers that have not committed yet.

A remote change to a key that a local transaction is writing must wait for
that transaction (never apply beside it, never fail), then see its outcome:
the committed local row is a conflict resolved like any other, a rolled-back
one is as if it never was. This is the key lookup's job (the executor path's
index scan with a dirty snapshot, which waits for the writer and looks again).

apply_chunk is called here as the sidecar calls it (inside a transaction,
records and headers as bytea), on one cluster, no Kafka needed.
"""

import threading
import time

import psycopg2
import psycopg2.errors
import pytest

def future_ms():
    """A minute from now: the remote change is the newer one, within kafka_sync.max_clock_skew."""
    return int((time.time() + 60) * 1000)

SETUP = """
CREATE EXTENSION kafka_sync;
CREATE TABLE t (id int PRIMARY KEY, v text);
CREATE PUBLICATION kafka_sync FOR ALL TABLES;
SELECT kafka_sync.create_node('here', 'localhost:1', snapshot => false);
SELECT kafka_sync.create_subscription('from_peer', 'peer', 'localhost:1');
SELECT kafka_sync.create_subscription('from_peer2', 'peer2', 'localhost:1');
CREATE FUNCTION hdrs(lsn text, ts bigint, origin text DEFAULT 'peer') RETURNS bytea LANGUAGE sql AS $$
    SELECT int4send(14) || 'kafka_sync.lsn'::bytea || int4send(octet_length(lsn)) || convert_to(lsn, 'UTF8')
        || int4send(17) || 'kafka_sync.origin'::bytea || int4send(octet_length(origin)) || convert_to(origin, 'UTF8')
        || int4send(20) || 'kafka_sync.commit_ts'::bytea || int4send(octet_length(ts::text)) || convert_to(ts::text, 'UTF8')
        || int4send(18) || 'kafka_sync.txn_end'::bytea || int4send(1) || '1'::bytea
$$;
CREATE FUNCTION ev(op text, before jsonb, after jsonb, origin text DEFAULT 'peer') RETURNS bytea LANGUAGE sql AS $$
    SELECT convert_to(jsonb_build_object('op', op, 'before', before, 'after', after,
        'source', jsonb_build_object('name', origin, 'origin', origin, 'schema', 'public', 'table', 't'))::text, 'UTF8')
$$
"""

_counter = iter(range(1, 1000))


@pytest.fixture
def db(pg_running):
    name = f"waits_{next(_counter)}"
    pg_running.create_database(name)
    for stmt in SETUP.split(";\n"):
        if stmt.strip():
            pg_running.sql(stmt, dbname=name)
    # the sidecar is not running: the subscription only has to be enabled
    yield pg_running, name
    # node 'here' has a replication slot of this server: drop it for the next test
    for (sub,) in pg_running.sql("SELECT sub_name FROM kafka_sync.subscription", dbname=name):
        pg_running.sql("SELECT kafka_sync.drop_subscription(%s)", (sub,), dbname=name)
    pg_running.sql("SELECT kafka_sync.drop_node()", dbname=name)


class RemoteApply(threading.Thread):
    """One apply_chunk call in its own session and transaction, as the sidecar makes it."""

    def __init__(self, cluster, dbname, offset, lsn, op, before, after, peer="peer"):
        super().__init__(daemon=True)
        self.conn = cluster.connect(dbname)
        cur = self.conn.cursor()
        cur.execute("SELECT pg_backend_pid()")
        self.pid = cur.fetchone()[0]
        self.args = (offset, op, before, after, lsn, peer)
        self.result = None
        self.error = None

    def run(self):
        offset, op, before, after, lsn, peer = self.args
        try:
            cur = self.conn.cursor()
            cur.execute("BEGIN")
            cur.execute("SELECT applied, conflicts, failed_error FROM kafka_sync.apply_chunk(%s, "
                        "ARRAY[%s::int8], ARRAY[NULL::bytea], ARRAY[ev(%s, %s::jsonb, %s::jsonb, %s)], "
                        "ARRAY[hdrs(%s, %s, %s)], false)",
                        ("from_" + peer, offset, op, before, after, peer, lsn, future_ms(), peer))
            self.result = cur.fetchone()
            cur.execute("COMMIT")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.conn.close()


def wait_event(cluster, dbname, pid):
    rows = cluster.sql("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,),
                       dbname=dbname)
    return tuple(rows[0]) if rows else None


def blocked_on_transaction(cluster, dbname, pid, timeout=10.0):
    """Until the session pid waits for another transaction's lock; False if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wait_event(cluster, dbname, pid) == ("Lock", "transactionid"):
            return True
        time.sleep(0.02)
    return False


def row(cluster, dbname, key):
    rows = cluster.sql("SELECT v FROM t WHERE id = %s", (key,), dbname=dbname)
    return rows[0][0] if rows else None


def conflict_kinds(cluster, dbname):
    return [r[0] for r in cluster.sql("SELECT kind FROM kafka_sync.conflicts ORDER BY kind", dbname=dbname)]


def run_against_local(cluster, dbname, local_sql, remote, finish):
    """local_sql runs and stays uncommitted; the remote change must wait for it; then finish (COMMIT/ROLLBACK)."""
    local = cluster.connect(dbname, autocommit=False)
    cur = local.cursor()
    cur.execute(local_sql)
    apply = RemoteApply(cluster, dbname, *remote)
    apply.start()
    try:
        assert blocked_on_transaction(cluster, dbname, apply.pid), \
            f"the remote change did not wait for the local writer (state {wait_event(cluster, dbname, apply.pid)})"
        time.sleep(0.2)
        assert apply.is_alive(), "the remote change finished while the local writer was still open"
        cur.execute(finish)
    finally:
        local.close()
    apply.join(30)
    assert not apply.is_alive(), "the remote change still waits after the local writer ended"
    assert apply.error is None, apply.error
    return apply.result


def test_update_waits_for_a_local_update_and_resolves_against_it(db):
    cluster, name = db
    cluster.sql("INSERT INTO t VALUES (1, 'original')", dbname=name)
    applied, conflicts, error = run_against_local(
        cluster, name, "UPDATE t SET v = 'local' WHERE id = 1",
        (0, "0/100", "u", None, '{"id": 1, "v": "remote"}'), "COMMIT")
    assert (applied, conflicts, error) == (1, 1, None)
    assert row(cluster, name, 1) == "remote"  # the remote change is from 2100: newer
    assert conflict_kinds(cluster, name) == ["update_update"]


def test_insert_waits_for_a_local_insert_then_meets_it(db):
    cluster, name = db
    applied, conflicts, error = run_against_local(
        cluster, name, "INSERT INTO t VALUES (5, 'local')",
        (0, "0/100", "c", None, '{"id": 5, "v": "remote"}'), "COMMIT")
    assert (applied, conflicts, error) == (1, 1, None)
    assert row(cluster, name, 5) == "remote"
    assert conflict_kinds(cluster, name) == ["insert_exists"]


def test_insert_after_a_rolled_back_local_insert_is_plain(db):
    cluster, name = db
    applied, conflicts, error = run_against_local(
        cluster, name, "INSERT INTO t VALUES (6, 'local')",
        (0, "0/100", "c", None, '{"id": 6, "v": "remote"}'), "ROLLBACK")
    assert (applied, conflicts, error) == (1, 0, None)
    assert row(cluster, name, 6) == "remote"
    assert conflict_kinds(cluster, name) == []


def test_update_after_a_local_delete_commits_finds_no_row(db):
    cluster, name = db
    cluster.sql("INSERT INTO t VALUES (7, 'original')", dbname=name)
    applied, conflicts, error = run_against_local(
        cluster, name, "DELETE FROM t WHERE id = 7",
        (0, "0/100", "u", None, '{"id": 7, "v": "remote"}'), "COMMIT")
    assert error is None
    # deleted here before a newer remote update: the update recreates the row (update_deleted, remote wins)
    assert conflict_kinds(cluster, name) == ["update_deleted"]
    assert (applied, conflicts) == (1, 1)
    assert row(cluster, name, 7) == "remote"


def test_apply_sessions_of_a_database_take_turns_in_every_transaction(db):
    """Two peers' apply sessions never apply at once (README: apply transactions of a database
    run one at a time), also in a session's second transaction, after its first committed."""
    cluster, name = db
    first = cluster.connect(name, autocommit=False)
    cur = first.cursor()
    for offset, lsn, key in ((0, "0/100", 20), (1, "0/200", 21)):
        cur.execute("SELECT applied FROM kafka_sync.apply_chunk('from_peer', ARRAY[%s::int8], ARRAY[NULL::bytea], "
                    "ARRAY[ev('c', NULL, %s::jsonb)], ARRAY[hdrs(%s, %s)], false)",
                    (offset, f'{{"id": {key}, "v": "first"}}', lsn, future_ms()))
        assert cur.fetchone() == (1,)
        if offset == 0:
            first.commit()  # the second transaction must take the turn again
    other = RemoteApply(cluster, name, 0, "0/300", "c", None, '{"id": 22, "v": "second"}', peer="peer2")
    other.start()
    try:
        deadline = time.monotonic() + 10
        while wait_event(cluster, name, other.pid) != ("Lock", "advisory") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert wait_event(cluster, name, other.pid) == ("Lock", "advisory"), \
            "the second session applied while the first held its turn"
        first.commit()
    finally:
        first.close()
    other.join(30)
    assert other.error is None, other.error
    assert other.result == (1, 0, None)
    assert [r[0] for r in cluster.sql("SELECT id FROM t ORDER BY id", dbname=name)] == [20, 21, 22]


def test_an_apply_waits_for_the_apply_lock_only_as_long_as_kafka_sync_apply_lock_timeout(db):
    """A peer whose transaction never ends keeps its session's apply lock: another peer's apply
    must not wait for it unseen. Past kafka_sync.apply_lock_timeout it fails with
    lock_not_available, naming the apply lock (the sidecar reports it and tries again)."""
    cluster, name = db
    holder = cluster.connect(name, autocommit=False)
    try:
        cur = holder.cursor()
        cur.execute("SELECT applied FROM kafka_sync.apply_chunk('from_peer', ARRAY[0::int8], ARRAY[NULL::bytea], "
                    "ARRAY[ev('c', NULL, '{\"id\": 30, \"v\": \"open\"}'::jsonb)], ARRAY[hdrs('0/100', %s)], false)",
                    (future_ms(),))
        waiter = cluster.connect(name, autocommit=False)
        try:
            wcur = waiter.cursor()
            wcur.execute("SET kafka_sync.apply_lock_timeout = '1s'")
            t0 = time.monotonic()
            with pytest.raises(psycopg2.errors.LockNotAvailable) as err:
                wcur.execute("SELECT applied FROM kafka_sync.apply_chunk('from_peer2', ARRAY[0::int8], "
                             "ARRAY[NULL::bytea], ARRAY[ev('c', NULL, '{\"id\": 31, \"v\": \"w\"}'::jsonb, 'peer2')], "
                             "ARRAY[hdrs('0/100', %s, 'peer2')], false)", (future_ms(),))
            waited = time.monotonic() - t0
            assert 0.9 < waited < 10, waited
            assert "apply lock" in str(err.value), str(err.value)
        finally:
            waiter.close()
    finally:
        holder.close()
