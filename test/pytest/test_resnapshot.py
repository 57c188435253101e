"""End to end: snapshot records carry each row's own version, and
kafka_sync.resnapshot() publishes every row again while the node streams.

The promises (README "kafka_sync.resnapshot()", "The record"):
- every "r" record has source.row_ts_ms = the commit time of the row's last
  change and source.row_origin = the node that made it (this node, or the
  peer whose replication origin kafka_sync_<peer> wrote it), left out when
  unknown;
- a resnapshot is one complete pseudo-transaction of "r" records whose lsn
  header is the previous highest lsn + 1, so it sorts after everything
  published before and before every later commit;
- it holds every row that exists when it is taken;
- a worker that dies half-way publishes it again, whole.
Ground truth is PostgreSQL itself (commit timestamps, table contents) and
the topic's own history.
"""

import threading
import time

import pytest

from ks_helpers import (
    NODE_KAFKA_CONFIG,
    USER_TABLE_DDL,
    Writer,
    apply_like_a_consumer,
    check_transaction_framing,
    consume,
    describe,
    format_lsn,
    parse_lsn,
    split_transactions,
    wait_until,
)

# For the one test on librdkafka's mock cluster: zstd keeps a topic with
# several copies of a table within the mock's 5 MB per partition.
MOCK_TOPIC_CONFIG = {**NODE_KAFKA_CONFIG, "compression.codec": "zstd"}

# -- helpers ---------------------------------------------------------------------------


def commit_ts_ms(node, table, key_col, key):
    """Commit time (ms, as kafka_sync encodes it) of the row's xmin."""
    return node.sql(
        f"SELECT floor(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint "
        f"FROM {table} WHERE {key_col} = %s", (key,))[0][0]


def request_state(node):
    rows = node.sql("SELECT requested_at, completed_at, snapshot_lsn::text, records "
                    "FROM kafka_sync.resnapshot_request")
    if not rows:
        return None
    requested_at, completed_at, lsn, records = rows[0]
    return {"requested_at": requested_at, "completed_at": completed_at,
            "snapshot_lsn": parse_lsn(lsn), "records": records}


def wait_resnapshot_done(node, requested_at=None, timeout=60.0, log_since=0):
    def done():
        st = request_state(node)
        if st and st["completed_at"] is not None and (
                requested_at is None or st["requested_at"] == requested_at):
            return st
        return None
    return wait_until(done, timeout, f"resnapshot of node {node.name} acknowledged",
                      diagnostics=lambda: node.diagnostics(log_since))


def call_resnapshot(node):
    """SELECT kafka_sync.resnapshot(); returns (requested_at, notices)."""
    conn = node.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT kafka_sync.resnapshot()")
            cur.execute("SELECT requested_at FROM kafka_sync.resnapshot_request")
            requested_at = cur.fetchone()[0]
        return requested_at, list(conn.notices)
    finally:
        conn.close()


def read_until_key(node, key, timeout=60.0, log_since=0):
    records = consume(node.kafka.bootstrap, node.topic, timeout=timeout,
                      until=lambda recs: any(r.key == {"user_id": key} for r in recs[-20000:]))
    idx = [i for i, r in enumerate(records) if r.key == {"user_id": key}]
    assert idx, (f"{key!r} did not reach {node.topic} within {timeout}s:\n{describe(records)}\n"
                 f"{node.diagnostics(log_since)}")
    return records[:idx[-1] + 1]


def resnapshots(records, initial_lsn=None):
    """The groups of "r" records other than the initial snapshot."""
    return [t for t in split_transactions(records)
            if t[0].op == "r" and t[0].lsn != initial_lsn]


class Updater(threading.Thread):
    """Keeps updating existing rows (one per transaction), round robin."""

    def __init__(self, node, keys, pause=0.003):
        super().__init__(daemon=True)
        self.node, self.keys, self.pause = node, list(keys), pause
        self.stop_event = threading.Event()
        self.updates = 0
        self.error = None

    def run(self):
        try:
            conn = self.node.connect()
            with conn.cursor() as cur:
                i = 0
                while not self.stop_event.is_set():
                    cur.execute("UPDATE user_table SET user_status = 'upd ' || %s WHERE user_id = %s",
                                (str(i), self.keys[i % len(self.keys)]))
                    self.updates += 1
                    i += 1
                    time.sleep(self.pause)
            conn.close()
        except Exception as e:  # surfaced by stop()
            self.error = e

    def stop(self):
        self.stop_event.set()
        self.join(30)
        assert self.error is None, f"updater died: {self.error!r}"


# -- 1. row versions on snapshot records ----------------------------------------------------

FROZEN_DDL = "CREATE TABLE frozen_table(id int PRIMARY KEY, note text)"


def test_snapshot_records_carry_the_commit_time_and_origin_of_each_rows_last_change(node_factory):
    node = node_factory(tables=(USER_TABLE_DDL, FROZEN_DDL))
    node.sql("INSERT INTO user_table VALUES ('local', 'written here', 'online')")
    node.sql("INSERT INTO user_table VALUES ('updated', 'v1', 'online')")
    node.sql("UPDATE user_table SET user_name = 'v2' WHERE user_id = 'updated'")

    # Rows applied from peers carry their replication origin and the peer's
    # commit time (pg_replication_origin_xact_setup), as the apply side does.
    peer_ts = "2021-02-03 04:05:06.789+00"
    peer_ts_ms = 1612325106789
    conn = node.connect(autocommit=True)
    try:
        with conn.cursor() as cur:
            peerx_origin = node.sql("SELECT kafka_sync._origin_name('peerx')")[0][0]
            for origin, key in ((peerx_origin, "from_peerx"), ("etl_tool", "from_etl")):
                cur.execute("SELECT pg_replication_origin_create(%s)", (origin,))
                cur.execute("SELECT pg_replication_origin_session_setup(%s)", (origin,))
                cur.execute("BEGIN")
                cur.execute("SELECT pg_replication_origin_xact_setup('0/1000', %s)", (peer_ts,))
                cur.execute("INSERT INTO user_table VALUES (%s, 'applied', 'online')", (key,))
                cur.execute("COMMIT")
                cur.execute("SELECT pg_replication_origin_session_reset()")
    finally:
        conn.close()
    # A frozen row's writer is forgotten: no version at all.
    node.sql("INSERT INTO frozen_table VALUES (1, 'old')")
    node.sql("VACUUM (FREEZE) frozen_table")  # keeps xmin's value, marks the tuple frozen

    expected_ts = {k: commit_ts_ms(node, "user_table", "user_id", k) for k in ("local", "updated")}
    node.create(snapshot=True)
    node.wait_state("streaming")
    records = node.read(5)
    snap = [r for r in records if r.op == "r"]
    assert len(snap) == 5, describe(records)
    check_transaction_framing(snap)
    by_key = {(r.source["table"], str(next(iter(r.key.values())))): r.source for r in snap}

    for key in ("local", "updated"):
        src = by_key[("user_table", key)]
        assert src["row_origin"] == node.name, src
        assert src["row_ts_ms"] == expected_ts[key], (src, expected_ts[key])
        assert src["row_ts_ms"] <= src["ts_ms"], "a row cannot be newer than the snapshot holding it"
    assert expected_ts["updated"] >= expected_ts["local"]

    src = by_key[("user_table", "from_peerx")]
    assert src["row_origin"] == "peerx", src
    assert src["row_ts_ms"] == peer_ts_ms, src
    assert src["origin"] == node.name, "source.origin stays the publishing node"

    src = by_key[("user_table", "from_etl")]
    assert "row_origin" not in src, f"a foreign replication origin is no kafka_sync node: {src}"
    assert src["row_ts_ms"] == peer_ts_ms, src

    src = by_key[("frozen_table", "1")]
    assert "row_ts_ms" not in src and "row_origin" not in src, src

    # Changes decoded from WAL are versioned by their transaction: no row fields.
    node.sql("INSERT INTO user_table VALUES ('streamed', 'x', 'online')")
    rec = read_until_key(node, "streamed")[-1]
    assert rec.op == "c" and "row_ts_ms" not in rec.source and "row_origin" not in rec.source, rec.source


# -- 2. resnapshot while the node streams ---------------------------------------------------------


def test_resnapshot_under_concurrent_writes_is_one_whole_pseudo_transaction_between_earlier_and_later_changes(
        node_factory):
    node = node_factory()
    node.sql("INSERT INTO user_table SELECT 's' || lpad(g::text, 5, '0'), 'snap ' || g, 'online' "
             "FROM generate_series(1, 1500) g")
    node.sql("DELETE FROM user_table WHERE user_id = 's00007'")
    node.create(snapshot=True, kafka_config=NODE_KAFKA_CONFIG)
    node.wait_state("streaming")
    log_start = node.pg.log_position()

    writer = Writer(node, prefix="c", rows_per_txn=2, pause=0.002)
    updater = Updater(node, [f"s{g:05d}" for g in range(1, 1501, 7)])
    writer.start()
    updater.start()
    try:
        wait_until(lambda: len(writer.committed()) >= 50 and updater.updates >= 50, 15, "writers warm-up")
        requested_at, notices = call_resnapshot(node)
        assert not notices, notices
        st = wait_resnapshot_done(node, requested_at, timeout=60, log_since=log_start)
        n = len(writer.committed())
        wait_until(lambda: len(writer.committed()) >= n + 50, 20, "writer after the resnapshot")
    finally:
        writer.stop()
        updater.stop()
    node.sql("INSERT INTO user_table VALUES ('zz_marker', 'marker', 'marker')")
    records = read_until_key(node, "zz_marker", timeout=90, log_since=log_start)

    initial = split_transactions(records)[0]
    assert initial[0].op == "r"
    again = resnapshots(records, initial[0].lsn)
    assert len(again) == 1, f"expected one resnapshot, got {[len(t) for t in again]}"
    snap = again[0]
    check_transaction_framing(snap)
    lsn = snap[0].lsn
    assert st["snapshot_lsn"] == lsn and st["records"] == len(snap), (st, format_lsn(lsn), len(snap))
    first = records.index(snap[0])
    before, after = records[:first], records[first + len(snap):]
    assert all(r.op == "r" for r in snap)
    assert lsn == max(r.lsn for r in before) + 1, (
        f"lsn header {format_lsn(lsn)} is not the previous highest {format_lsn(max(r.lsn for r in before))} + 1")
    assert after and all(r.lsn > lsn for r in after), "a later change does not sort after the resnapshot"
    for r in snap:
        assert r.headers["kafka_sync.origin"] == node.name
        assert r.source["snapshot"] == "true", r.source
        assert r.source["lsn"] == lsn, r.source
        assert r.source["ts_ms"] == int(r.headers["kafka_sync.commit_ts"])
        assert r.source["row_origin"] == node.name, r.source
        assert r.headers.get("kafka_sync.snapshot") == "true", r.headers
    assert all("kafka_sync.snapshot" not in r.headers for r in after if r.op != "r")

    # Every version a row had on the topic, with the commit time that made it.
    versions = {}
    state = {}
    for pos, r in enumerate(before + after):
        uid = r.key["user_id"]
        ts = r.source["row_ts_ms"] if r.op == "r" else int(r.headers["kafka_sync.commit_ts"])
        if r.op == "d":
            version = None
        else:
            version = (r.after["user_name"], r.after["user_status"], ts)
        versions.setdefault(uid, []).append(version)
        if pos < len(before):
            state[uid] = version
    existing = {k for k, v in state.items() if v is not None}
    snap_rows = {r.key["user_id"]: r for r in snap}
    assert len(snap_rows) == len(snap), "a row appears twice in the resnapshot"
    missing = existing - set(snap_rows)
    assert not missing, f"rows existing before the resnapshot are missing from it: {sorted(missing)[:20]}"
    assert "s00007" not in snap_rows, "a deleted row came back"
    for uid, r in snap_rows.items():
        v = (r.after["user_name"], r.after["user_status"], r.source["row_ts_ms"])
        assert v in versions.get(uid, []), (
            f"{uid}: resnapshot version {v} is no version the row ever had: {versions.get(uid)}")
        if uid in state and v != state[uid]:
            # newer than what was published before it: made by a later commit,
            # which the topic also carries after the resnapshot
            assert v in versions[uid][versions[uid].index(state[uid]) + 1:], (uid, v, versions[uid])
    # The table now: everything is in the resnapshot or came after it.
    table = node.table_keys()
    later_keys = {r.key["user_id"] for r in after}
    assert table <= set(snap_rows) | later_keys
    new_in_snap = [k for k in snap_rows if k.startswith("c") and k not in existing]
    print(f"resnapshot: {len(snap)} r records at {format_lsn(lsn)}, {len(before)} records before, "
          f"{len(after)} after, {len(new_in_snap)} rows of commits after X seen by its snapshot")


def test_resnapshot_on_a_paused_node_is_kept_until_resume_and_a_second_one_gets_a_higher_lsn(node_factory):
    node = node_factory()
    node.sql("INSERT INTO user_table VALUES ('a', 'A', 'online'), ('b', 'B', 'online')")
    with pytest.raises(Exception, match="not a kafka_sync node"):
        node.sql("SELECT kafka_sync.resnapshot()")
    node.create(snapshot=False)
    node.wait_state("streaming")
    log_start = node.pg.log_position()
    node.sql("SELECT kafka_sync.pause_node()")
    requested_at, notices = call_resnapshot(node)
    assert any("is paused" in n and "resume_node" in n for n in notices), notices
    time.sleep(1.5)
    assert request_state(node)["completed_at"] is None, "a paused node published a snapshot"
    node.sql("SELECT kafka_sync.resume_node()")
    first = wait_resnapshot_done(node, requested_at, log_since=log_start)

    # right away again, with no change in between: a distinct, higher lsn
    requested_at, notices = call_resnapshot(node)
    assert not notices, notices
    second = wait_resnapshot_done(node, requested_at, log_since=log_start)
    assert second["snapshot_lsn"] > first["snapshot_lsn"], (first, second)
    node.sql("INSERT INTO user_table VALUES ('c', 'C', 'online')")
    records = read_until_key(node, "c", log_since=log_start)
    txns = split_transactions(records)
    assert [(len(t), t[0].op) for t in txns] == [(2, "r"), (2, "r"), (1, "c")], describe(records)
    for t in txns:
        check_transaction_framing(t)
    assert txns[0][0].lsn == first["snapshot_lsn"] and txns[1][0].lsn == second["snapshot_lsn"]
    assert txns[1][0].lsn == txns[0][0].lsn + 1 < txns[2][0].lsn, node.diagnostics(log_start)

    assert not node.sql("SELECT has_function_privilege('public', 'kafka_sync.resnapshot()', 'EXECUTE')")[0][0]


# -- 3. a crash in the middle ------------------------------------------------------------------------

BIG_ROWS = 50000


def test_worker_crash_in_the_middle_of_a_large_resnapshot_publishes_it_again_whole(node_factory, mock_kafka):
    """On the mock cluster: it answers every request 200 ms late, so the crash
    lands in the middle of the resnapshot every time; a real broker cannot be
    slowed per request on purpose."""
    kafka = mock_kafka
    node = node_factory(kafka_cluster=kafka)
    node.sql(f"INSERT INTO user_table SELECT 'r' || lpad(g::text, 6, '0'), 'n' || g, 'online' "
             f"FROM generate_series(1, {BIG_ROWS}) g")
    # small batches, a short producer queue and a slow broker: the snapshot
    # takes seconds to produce, and what is still queued dies with the server
    node.create(snapshot=False, kafka_config={**MOCK_TOPIC_CONFIG, "batch.num.messages": 200,
                                              "queue.buffering.max.messages": 2000})
    node.wait_state("streaming")
    node.sql("INSERT INTO user_table VALUES ('before', 'x', 'online')")
    log_start = node.pg.log_position()
    kafka.rtt("all", 200)
    requested_at, _ = call_resnapshot(node)
    wait_until(lambda: (lambda s: s["state"] == "snapshot" and s["records_acknowledged"] > 5000)(node.status()),
               60, "the resnapshot half-way", interval=0.02, diagnostics=lambda: node.diagnostics(log_start))
    st = node.status()
    assert request_state(node)["completed_at"] is None
    assert st["records_acknowledged"] < BIG_ROWS, f"too late, the snapshot is already out: {st}"
    node.pg.restart(mode="immediate")
    kafka.rtt("all", 0)
    done = wait_resnapshot_done(node, requested_at, timeout=120, log_since=log_start)
    node.sql("INSERT INTO user_table VALUES ('zz_marker', 'x', 'online')")

    records = read_until_key(node, "zz_marker", timeout=120, log_since=log_start)
    applied, duplicates, abandoned = apply_like_a_consumer(records)
    assert abandoned, "the crash did not cut the first resnapshot off (test too slow?)"
    snaps = [t for t in applied if t[0].op == "r"]
    assert len(snaps) == 1, f"applied transactions {[(len(t), t[0].op) for t in applied]}"
    snap = snaps[0]
    check_transaction_framing(snap)
    assert len(snap) == BIG_ROWS + 1 == done["records"]
    assert snap[0].lsn == done["snapshot_lsn"]
    assert {r.key["user_id"] for r in snap} == node.table_keys() - {"zz_marker"}
    assert [len(t) for t in applied if t[0].op != "r"] == [1, 1], describe(records)
    assert applied[0][0].key == {"user_id": "before"} and applied[-1][0].key == {"user_id": "zz_marker"}
    for piece in abandoned:
        assert piece[0].op == "r" and piece[0].lsn <= snap[0].lsn, describe(piece)
    print(f"crash mid-resnapshot: {sum(len(p) for p in abandoned)} records of the cut-off copy, "
          f"{len(records)} records in all")
