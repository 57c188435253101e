"""End to end: the source path (WAL -> producer worker -> Kafka topic).

Each test names the promise it checks (DESIGN.md: "The record" and
"Delivery semantics"). Ground truth is always PostgreSQL itself: what the
client saw committed, the xid and commit timestamp the server reports, the
WAL position around each commit, and the table contents at the end.
"""

import re
import threading
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from ks_helpers import (
    NODE_KAFKA_CONFIG,
    USER_TABLE_DDL,
    Record,
    Writer,
    apply_like_a_consumer,
    check_transaction_framing,
    consume,
    describe,
    parse_lsn,
    pid_alive,
    proc_kb,
    split_transactions,
    wait_until,
    watermarks,
)

# -- helpers local to these tests -------------------------------------------------


def run_txn(node, statements):
    """Run statements in one transaction; return what the server says about
    it: xid, commit timestamp (ms, as kafka_sync encodes it) and the WAL
    insert position just before the transaction and just after its commit."""
    conn = node.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_insert_lsn()::text")
            before = parse_lsn(cur.fetchone()[0])
            conn.commit()
            for st in statements:
                if isinstance(st, tuple):
                    cur.execute(*st)
                else:
                    cur.execute(st)
            cur.execute("SELECT pg_current_xact_id()::text")
            xid = int(cur.fetchone()[0])
            conn.commit()
            cur.execute("SELECT pg_current_wal_insert_lsn()::text, "
                        "floor(extract(epoch FROM pg_xact_commit_timestamp(%s::xid)) * 1000)::bigint",
                        (str(xid),))
            after, commit_ts = cur.fetchone()
            conn.commit()
        return {"xid": xid, "lsn_before": before, "lsn_after": parse_lsn(after),
                "commit_ts": commit_ts}
    finally:
        conn.close()


def insert_marker(node, key="zz_marker"):
    node.sql("INSERT INTO user_table VALUES (%s, 'marker', 'marker')", (key,))
    return key


def read_until_marker(node, key="zz_marker", timeout=30.0, log_since=0):
    """Everything on the topic up to and including the marker's record. The
    marker commits last, so (commit order) everything before it is there."""
    records = consume(node.kafka.bootstrap, node.topic, timeout=timeout,
                      until=lambda recs: any(r.key == {"user_id": key} for r in recs[-10000:]))
    idx = [i for i, r in enumerate(records) if r.key == {"user_id": key}]
    assert idx, (f"marker {key!r} did not reach {node.topic} within {timeout}s; "
                 f"records so far:\n{describe(records)}\n{node.diagnostics(log_since)}")
    return records[:idx[0] + 1]


class KeyCoverage:
    """until= predicate for consume(): true once every wanted user_id was seen."""

    def __init__(self, wanted):
        self.missing = set(wanted)
        self.seen_upto = 0

    def __call__(self, records):
        for r in records[self.seen_upto:]:
            if r.key is not None:
                self.missing.discard(r.key.get("user_id"))
        self.seen_upto = len(records)
        return not self.missing


def read_covering(node, keys, timeout=60.0, log_since=0):
    cover = KeyCoverage(keys)
    records = consume(node.kafka.bootstrap, node.topic, timeout=timeout, until=cover)
    assert not cover.missing, (
        f"{len(cover.missing)} committed rows never reached {node.topic} within {timeout}s "
        f"(e.g. {sorted(cover.missing)[:10]}); {len(records)} records read:\n"
        f"{describe(records)}\n{node.diagnostics(log_since)}")
    return records


def assert_source_matches_headers(rec, node):
    src = rec.source
    assert rec.headers["kafka_sync.origin"] == node.name, rec.brief()
    assert src["name"] == node.name and src["origin"] == node.name, src
    assert src["connector"] == "kafka_sync", src
    assert src["db"] == node.db, src
    assert src["lsn"] == rec.lsn, f"source.lsn {src['lsn']} != lsn header {rec.headers['kafka_sync.lsn']}"
    assert str(src["txId"]) == rec.headers["kafka_sync.xid"], (src, rec.headers)
    assert src["ts_ms"] == int(rec.headers["kafka_sync.commit_ts"]), (src, rec.headers)
    assert rec.value["transaction"]["id"] == f"{src['txId']}:{src['lsn']}", rec.value["transaction"]
    assert rec.partition == 0


# -- 1. content, key, headers and order -----------------------------------------------

UNICODE_NAME = 'Zoë 🚀 日本語 "quoted" back\\slash\nnew line\ttab \x01 ctrl'


def test_committed_changes_appear_in_commit_order_with_key_headers_and_values(node_factory):
    node = node_factory()
    # Two partitions: the promise is that every record goes to partition 0.
    node.create(partitions=2)
    node.wait_state("streaming")

    txns = [
        # (statements, expected records: (op, user_id, before, after))
        ([("INSERT INTO user_table VALUES ('u1', 'Alice', 'online'), ('u2', NULL, 'away')")],
         [("c", "u1", None, {"user_id": "u1", "user_name": "Alice", "user_status": "online"}),
          ("c", "u2", None, {"user_id": "u2", "user_name": None, "user_status": "away"})]),
        ([("INSERT INTO user_table VALUES ('u3', %s, NULL)", (UNICODE_NAME,))],
         [("c", "u3", None, {"user_id": "u3", "user_name": UNICODE_NAME, "user_status": None})]),
        (["UPDATE user_table SET user_status = 'offline', user_name = NULL WHERE user_id = 'u1'"],
         [("u", "u1", None, {"user_id": "u1", "user_name": None, "user_status": "offline"})]),
        (["DELETE FROM user_table WHERE user_id = 'u2'"],
         [("d", "u2", {"user_id": "u2"}, None)]),
        # several operations in one transaction keep their statement order
        (["UPDATE user_table SET user_status = '' WHERE user_id = 'u3'",
          "INSERT INTO user_table VALUES ('u5', 'Ünïcødé ✓', 'online')",
          "DELETE FROM user_table WHERE user_id = 'u1'"],
         [("u", "u3", None, {"user_id": "u3", "user_name": UNICODE_NAME, "user_status": ""}),
          ("c", "u5", None, {"user_id": "u5", "user_name": "Ünïcødé ✓", "user_status": "online"}),
          ("d", "u1", {"user_id": "u1"}, None)]),
    ]
    infos = [run_txn(node, stmts) for stmts, _ in txns]
    insert_marker(node)

    records = read_until_marker(node)[:-1]
    expected_count = sum(len(exp) for _, exp in txns)
    assert len(records) == expected_count, (
        f"expected exactly {expected_count} records before the marker, got:\n{describe(records)}")

    groups = split_transactions(records)
    assert len(groups) == len(txns), f"records do not form {len(txns)} transactions:\n{describe(records)}"
    prev_lsn = 0
    for (stmts, expected), info, group in zip(txns, infos, groups):
        check_transaction_framing(group)
        lsn = group[0].lsn
        assert prev_lsn < lsn, f"lsn header not increasing in commit order: {describe(records)}"
        prev_lsn = lsn
        assert info["lsn_before"] < lsn <= info["lsn_after"], (
            f"lsn header {group[0].headers['kafka_sync.lsn']} is not the commit of {stmts} "
            f"(WAL was {info['lsn_before']:X}..{info['lsn_after']:X})")
        assert len(group) == len(expected), (stmts, describe(group))
        for rec, (op, uid, before, after) in zip(group, expected):
            assert rec.key == {"user_id": uid}, rec.brief()
            assert rec.op == op, rec.brief()
            assert rec.after == after, f"after image of {uid}: {rec.after!r} != {after!r}"
            if before is None:
                assert rec.before is None, f"{op} of {uid}: unexpected before image {rec.before!r}"
            else:
                # Default replica identity: only the key is in the WAL; the
                # other columns must not be invented (absent or null).
                assert rec.before is not None and rec.before.get("user_id") == uid, rec.before
                assert all(rec.before.get(c) is None for c in ("user_name", "user_status")), rec.before
            assert rec.headers["kafka_sync.xid"] == str(info["xid"]), rec.headers
            assert int(rec.headers["kafka_sync.commit_ts"]) == info["commit_ts"], (
                rec.headers, info["commit_ts"])
            assert rec.source["snapshot"] == "false"
            assert rec.source["schema"] == "public" and rec.source["table"] == "user_table"
            assert_source_matches_headers(rec, node)

    other = consume(node.kafka.bootstrap, node.topic, partition=1, timeout=2.0)
    assert other == [], f"records on partition 1: {describe(other)}"


# -- 2. multi-table transactions ----------------------------------------------------------

ROOM_DDL = "CREATE TABLE room(room_id int PRIMARY KEY, title text)"
MESSAGE_DDL = ("CREATE TABLE message(room_id int, msg_id bigint, body text, "
               "PRIMARY KEY (room_id, msg_id))")


def test_multi_table_transaction_is_contiguous_with_txn_end_on_its_last_record(node_factory):
    node = node_factory(tables=(USER_TABLE_DDL, ROOM_DDL, MESSAGE_DDL))
    node.create()
    node.wait_state("streaming")

    a = node.connect(autocommit=False)
    b = node.connect(autocommit=False)
    try:
        with a.cursor() as ca, b.cursor() as cb:
            # A starts first (and gets the lower xid) but commits last.
            ca.execute("INSERT INTO user_table VALUES ('alice', 'Alice', 'online')")
            ca.execute("INSERT INTO room VALUES (1, 'general')")
            ca.execute("SELECT pg_current_xact_id()::text")
            xid_a = int(ca.fetchone()[0])
            cb.execute("INSERT INTO user_table VALUES ('bob', 'Bob', 'online')")
            cb.execute("INSERT INTO message VALUES (1, 1, 'hi from bob')")
            cb.execute("SELECT pg_current_xact_id()::text")
            xid_b = int(cb.fetchone()[0])
            b.commit()
            ca.execute("INSERT INTO message VALUES (1, 2, 'hello'), (1, 3, 'world')")
            ca.execute("UPDATE room SET title = 'General' WHERE room_id = 1")
            ca.execute("UPDATE user_table SET user_status = 'busy' WHERE user_id = 'alice'")
            a.commit()
    finally:
        a.close()
        b.close()
    insert_marker(node)

    records = read_until_marker(node)
    groups = split_transactions(records)
    assert [len(g) for g in groups] == [2, 6, 1], (
        f"expected transactions of 2 (B), 6 (A) and 1 (marker) records, contiguous:\n{describe(records)}")
    tb, ta, tm = groups
    for g in groups:
        check_transaction_framing(g)
    assert tb[0].lsn < ta[0].lsn < tm[0].lsn, describe(records)
    assert {r.headers["kafka_sync.xid"] for r in tb} == {str(xid_b)}
    assert {r.headers["kafka_sync.xid"] for r in ta} == {str(xid_a)}
    assert xid_a < xid_b, "test setup: A should have the older xid"

    assert [(r.source["table"], r.op, r.key) for r in tb] == [
        ("user_table", "c", {"user_id": "bob"}),
        ("message", "c", {"room_id": "1", "msg_id": "1"}),
    ]
    assert [(r.source["table"], r.op, r.key) for r in ta] == [
        ("user_table", "c", {"user_id": "alice"}),
        ("room", "c", {"room_id": "1"}),
        ("message", "c", {"room_id": "1", "msg_id": "2"}),
        ("message", "c", {"room_id": "1", "msg_id": "3"}),
        ("room", "u", {"room_id": "1"}),
        ("user_table", "u", {"user_id": "alice"}),
    ], describe(ta)
    assert [r.value["transaction"]["data_collection_order"] for r in ta] == [1, 1, 1, 2, 2, 2]
    assert ta[2].after == {"room_id": "1", "msg_id": "2", "body": "hello"}
    assert ta[4].after == {"room_id": "1", "title": "General"}
    for r in records:
        assert_source_matches_headers(r, node)


# -- 3. rollbacks ----------------------------------------------------------------------------


def test_rolled_back_changes_never_appear(node_factory):
    node = node_factory()
    # A tiny decoding memory makes the big rolled-back transaction below spill
    # to disk in the worker, the path where an abort is easiest to get wrong.
    node.pg.sql(f'ALTER DATABASE "{node.db}" SET logical_decoding_work_mem = \'64kB\'')
    node.create()
    node.wait_state("streaming")

    node.sql("INSERT INTO user_table VALUES ('keep1', 'k', 'online')")

    conn = node.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            # plain rollback
            cur.execute("INSERT INTO user_table VALUES ('rb1', 'x', 'x'), ('rb2', 'x', 'x')")
            cur.execute("UPDATE user_table SET user_name = 'rolled back' WHERE user_id = 'keep1'")
            cur.execute("DELETE FROM user_table WHERE user_id = 'keep1'")
            conn.rollback()
            # a rolled-back savepoint inside a committed transaction
            cur.execute("INSERT INTO user_table VALUES ('keep2', 'k', 'online')")
            cur.execute("SAVEPOINT s1")
            cur.execute("INSERT INTO user_table VALUES ('rb3', 'x', 'x')")
            cur.execute("UPDATE user_table SET user_name = 'rolled back' WHERE user_id = 'keep2'")
            cur.execute("ROLLBACK TO SAVEPOINT s1")
            cur.execute("INSERT INTO user_table VALUES ('keep3', 'k', 'online')")
            conn.commit()
            # a big transaction (spilled by the decoder), rolled back
            cur.execute("INSERT INTO user_table SELECT 'rbbig' || g, repeat('x', 200), 'x' "
                        "FROM generate_series(1, 20000) g")
            conn.rollback()
            # a transaction aborted by an error
            cur.execute("INSERT INTO user_table VALUES ('rb4', 'x', 'x')")
            with pytest.raises(Exception):
                cur.execute("INSERT INTO user_table VALUES ('keep1', 'duplicate', 'x')")
            conn.rollback()
    finally:
        conn.close()
    insert_marker(node)

    records = read_until_marker(node)
    got = [(r.op, r.key["user_id"]) for r in records]
    assert got == [("c", "keep1"), ("c", "keep2"), ("c", "keep3"), ("c", "zz_marker")], (
        f"only committed changes may appear:\n{describe(records)}")
    groups = split_transactions(records)
    assert [len(g) for g in groups] == [1, 2, 1], describe(records)
    for g in groups:
        check_transaction_framing(g)
    assert records[0].after["user_name"] == "k"
    assert records[1].after["user_name"] == "k"  # the savepoint's update is gone


# -- 4. Kafka outage ---------------------------------------------------------------------------

OUTAGE_SECONDS = 20


def test_kafka_outage_loses_nothing_keeps_order_and_holds_the_slot(node_factory, private_broker):
    """The broker is killed (kill -9) for OUTAGE_SECONDS while a writer keeps
    committing, then started again on its own data."""
    kafka = private_broker
    node = node_factory(kafka_cluster=kafka)
    node.create()
    node.wait_state("streaming")
    log_start = node.pg.log_position()

    writer = Writer(node, prefix="o", rows_per_txn=2, pause=0.01)
    writer.start()
    try:
        wait_until(lambda: len(writer.committed()) >= 20, 10, "writer warm-up")
        # everything so far is acknowledged before the outage starts
        time.sleep(0.5)

        kafka.nodes[0].kill()
        down_at = time.monotonic()
        samples, states, retained = [], [], []
        while time.monotonic() - down_at < OUTAGE_SECONDS:
            st = node.status()
            states.append((time.monotonic() - down_at, st["state"], st["last_error"]))
            retained.append(st["retained_wal_bytes"])
            samples.append((time.monotonic() - down_at, node.confirmed_flush_lsn()))
            time.sleep(0.25)
        # the last sample was taken before the broker comes back
        up_at = time.monotonic()
        kafka.nodes[0].start()
        kafka.wait_serving()

        time.sleep(2)  # keep writing while the backlog drains
    finally:
        writer.stop()

    node.wait_state("streaming", timeout=60, log_since=log_start)
    committed = writer.committed()
    assert not writer.unknown() and all(t["outcome"] == "committed" for t in writer.txns), writer.errors
    keys = [k for t in committed for k in t["keys"]]
    records = read_covering(node, keys, timeout=90, log_since=log_start)

    # A producer that restarted while the broker was away sends what was not
    # confirmed again: such duplicates must be exact copies of the first one.
    first = {}
    deduped, dupes = [], 0
    for r in records:
        prev = first.get(r.ident())
        if prev is None:
            first[r.ident()] = r
            deduped.append(r)
        else:
            dupes += 1
            assert r.same_content(prev), f"duplicate differs from its first copy:\n{prev!r}\n{r!r}"

    got_keys = [r.key["user_id"] for r in deduped]
    assert len(got_keys) == len(set(got_keys)), "a row appears twice with different (lsn, total_order)"
    assert got_keys == keys, (
        f"records are not every committed row in commit order ({len(got_keys)} vs {len(keys)}); "
        f"first difference at {next((i for i, (a, b) in enumerate(zip(got_keys, keys)) if a != b), None)}")
    lsns = []
    for g in split_transactions(deduped):
        check_transaction_framing(g)
        lsns.append(g[0].lsn)
    assert lsns == sorted(lsns) and len(set(lsns)) == len(lsns), "lsn headers not increasing"

    observed = [s for _, s, _ in states]
    assert "kafka_unavailable" in observed, (
        f"node_status never showed kafka_unavailable during a {OUTAGE_SECONDS}s outage: {states}")
    first_unavailable = next(t for t, s, _ in states if s == "kafka_unavailable")
    assert first_unavailable < 10, f"kafka_unavailable only after {first_unavailable:.1f}s: {states}"

    # "Kafka down means WAL is retained and the status view shows it."
    assert retained[-1] > retained[0] + 100_000, f"retained_wal_bytes during the outage: {retained}"

    # Transactions that certainly committed while Kafka was down.
    key_lsn = {r.key["user_id"]: r.lsn for r in deduped}
    outage_lsns = [key_lsn[t["keys"][0]] for t in committed
                   if t["start"] > down_at and t["end"] < up_at]
    assert len(outage_lsns) > 50, f"too few transactions during the outage: {len(outage_lsns)}"
    lowest_unacked = min(outage_lsns)
    confirmed = [lsn for _, lsn in samples]
    assert all(c is not None for c in confirmed), samples
    too_far = [(round(t, 2), f"{c:X}") for t, c in samples if c >= lowest_unacked]
    assert not too_far, (
        f"slot confirmed past records Kafka had not acknowledged: first outage commit at "
        f"{lowest_unacked:X}, confirmed_flush_lsn samples {too_far}")

    # and once Kafka is back, the slot moves on past everything
    last_lsn = lsns[-1]
    wait_until(lambda: (node.confirmed_flush_lsn() or 0) >= last_lsn, 20,
               f"slot confirmed up to the last record {last_lsn:X}",
               diagnostics=lambda: node.diagnostics(log_start))
    print(f"outage: {len(records)} records, {dupes} resent duplicates, "
          f"{len(outage_lsns)} txns during outage, states {sorted(set(observed))}")


# -- 5. server restarts ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_under_load_loses_no_committed_row(node_factory, mode):
    node = node_factory()
    node.create()
    node.wait_state("streaming")
    pg = node.pg
    log_start = pg.log_position()

    writer = Writer(node, prefix="r", rows_per_txn=3, pause=0.003)
    writer.start()
    try:
        wait_until(lambda: len(writer.committed()) >= 100, 15, "writer warm-up")
        pg.restart(mode=mode)
        node.wait_state("streaming", timeout=60, log_since=log_start)
        n = len(writer.committed())
        wait_until(lambda: len(writer.committed()) >= n + 100, 30, "writer after the restart")
    finally:
        writer.stop()

    table = node.table_keys()
    committed = writer.committed()
    for t in committed:
        assert set(t["keys"]) <= table, f"COMMIT returned but rows are missing: {t}"
    for t in writer.txns:
        if t["outcome"] == "failed":
            assert not set(t["keys"]) & table, f"a failed transaction left rows: {t}"
    # commit order: the writer's order, keeping the transactions that exist
    expected = [k for t in writer.txns for k in t["keys"] if k in table]
    assert set(expected) == table

    records = read_covering(node, table, timeout=90, log_since=log_start)
    # wait until the topic is quiet so late duplicates are checked as well
    records = node.read_all(idle_timeout=1.5) or records

    # Every copy of a row has the lsn header and value of the first copy
    # (payload.ts_ms is Debezium's processing time and may differ).
    copies = defaultdict(list)
    for r in records:
        copies[r.key["user_id"]].append(r)
    for uid, rs in copies.items():
        for r in rs[1:]:
            assert r.headers["kafka_sync.lsn"] == rs[0].headers["kafka_sync.lsn"], (
                f"duplicate of {uid} with another lsn header: {rs}")
            assert r.same_content(rs[0], ignore_processing_time=True), (
                f"duplicate of {uid} differs from its first copy:\n{rs[0].raw_value}\n{r.raw_value}")

    # A consumer that applies whole transactions and skips LSNs at or below
    # its progress sees every committed row exactly once, in commit order.
    applied, duplicates, abandoned = apply_like_a_consumer(records)
    applied_keys = [r.key["user_id"] for t in applied for r in t]
    assert applied_keys == expected, (
        f"applied stream differs from the commit order ({len(applied_keys)} vs {len(expected)} rows)")
    for t in applied:
        check_transaction_framing(t)
    complete_lsns = {t[0].lsn for t in applied}
    for piece in abandoned:
        assert piece[0].lsn in complete_lsns, f"an incomplete transaction was never sent whole: {piece}"
    dup_records = sum(len(t) for t, _ in duplicates) + sum(len(p) for p in abandoned)
    byte_identical = sum(1 for rs in copies.values() for r in rs[1:] if r.raw_value == rs[0].raw_value)
    print(f"restart -m {mode}: {len(records)} records for {len(expected)} rows, "
          f"{dup_records} duplicate records ({byte_identical} byte-identical), "
          f"{len(abandoned)} partial transactions, "
          f"{writer.reconnects} writer reconnects")


# On librdkafka's mock cluster (see the test), which keeps only the last 5 MB
# of a partition: small enough that the topic, resent part included, fits.
MID_ROWS = 4000


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_in_the_middle_of_producing_a_transaction_sends_it_again_whole(
        node_factory, mock_kafka, mode):
    """A transaction cut off half-way on the topic is sent again from its
    first record, with the same lsn header: a consumer that applies whole
    transactions by LSN loses nothing and applies nothing twice.

    On the mock cluster: it answers every request 100 ms late, so the
    server restart lands in the middle of the transaction every time; a real
    broker cannot be slowed per request on purpose."""
    kafka = mock_kafka
    node = node_factory(kafka_cluster=kafka)
    # small batches + a slow broker: the transaction takes seconds to produce
    node.create(kafka_config={**NODE_KAFKA_CONFIG, "batch.num.messages": 200})
    node.wait_state("streaming")
    log_start = node.pg.log_position()
    kafka.rtt("all", 100)
    node.sql("INSERT INTO user_table VALUES ('first', 'a', 'online')")
    info = run_txn(node, [f"INSERT INTO user_table SELECT 'x' || lpad(g::text, 5, '0'), 'a', 'online' "
                          f"FROM generate_series(1, {MID_ROWS}) g"])
    wait_until(lambda: node.status()["records_acknowledged"] > MID_ROWS // 4, 30,
               "part of the big transaction acknowledged",
               diagnostics=lambda: node.diagnostics(log_start))
    st = node.status()
    assert st["records_acknowledged"] < MID_ROWS + 1, f"too late, the transaction is already out: {st}"
    node.pg.restart(mode=mode)
    kafka.rtt("all", 0)
    node.sql("INSERT INTO user_table VALUES ('last', 'a', 'online')")

    records = read_until_marker(node, key="last", timeout=60, log_since=log_start)
    applied, duplicates, abandoned = apply_like_a_consumer(records)
    assert [len(t) for t in applied] == [1, MID_ROWS, 1], (
        f"applied transactions {[len(t) for t in applied]}:\n{describe(records)}")
    for t in applied:
        check_transaction_framing(t)
    big = applied[1]
    assert big[0].headers["kafka_sync.xid"] == str(info["xid"])
    assert [r.key["user_id"] for r in big] == [f"x{g:05d}" for g in range(1, MID_ROWS + 1)]
    first_copy = {}
    for r in records:
        if r.ident() in first_copy:
            assert r.same_content(first_copy[r.ident()], ignore_processing_time=True), (
                f"resent record differs from its first copy:\n{first_copy[r.ident()]!r}\n{r!r}")
        else:
            first_copy[r.ident()] = r
    resent = len(records) - (MID_ROWS + 2)
    print(f"restart -m {mode} mid-transaction: {len(abandoned)} partial copies "
          f"({sum(len(p) for p in abandoned)} records), {len(duplicates)} duplicate transactions, "
          f"{resent} records sent twice")
    if mode == "immediate":  # a crash always cuts the transaction off
        assert resent > 0 and abandoned, (
            "the crash did not interrupt the transaction (test too slow?): "
            f"{[len(t) for t in split_transactions(records)]}")


# -- 6. initial snapshot -----------------------------------------------------------------------


def test_snapshot_then_stream_has_no_gap_and_every_later_commit_streams(node_factory):
    """create_node() returns once its slot is consistent at C; the initial
    snapshot is read when the worker starts, at T >= C, and published under
    lsn header C+1. A transaction that committed between C and T is in the
    snapshot and also streams after it, as its own transaction: nothing is
    missing, and nothing committed after create_node() is only a snapshot row."""
    node = node_factory()
    node.sql("INSERT INTO user_table SELECT 's' || lpad(g::text, 8, '0'), 'snap ' || g, 'online' "
             "FROM generate_series(1, 5000) g")
    log_start = node.pg.log_position()

    writer = Writer(node, prefix="c", rows_per_txn=1, pause=0.002)
    writer.start()
    try:
        wait_until(lambda: len(writer.committed()) >= 20, 10, "writer warm-up")
        node.create(snapshot=True)
        created = set(writer.committed_keys())
        node.wait_state("streaming", timeout=60, log_since=log_start)
        n = len(writer.committed())
        wait_until(lambda: len(writer.committed()) >= n + 100, 20, "writer after the snapshot")
    finally:
        writer.stop()
    insert_marker(node)

    table = node.table_keys()
    records = read_until_marker(node, timeout=60, log_since=log_start)[:-1]
    table.discard("zz_marker")

    keys = [r.key["user_id"] for r in records]
    assert set(keys) == table, (
        f"topic and table differ: missing {sorted(table - set(keys))[:20]}, "
        f"extra {sorted(set(keys) - table)[:20]}")

    ops = [r.op for r in records]
    n_r = ops.count("r")
    assert ops == ["r"] * n_r + ["c"] * (len(ops) - n_r), "snapshot records must come before streamed ones"
    assert n_r >= 5000, f"only {n_r} snapshot records"
    snap, stream = records[:n_r], records[n_r:]
    snap_keys = [r.key["user_id"] for r in snap]
    stream_keys = [r.key["user_id"] for r in stream]
    assert len(set(snap_keys)) == len(snap_keys), "a row twice in the snapshot"
    assert len(set(stream_keys)) == len(stream_keys), "a row streamed twice"
    assert split_transactions(snap) == [snap], "snapshot records must form one pseudo-transaction"
    check_transaction_framing(snap)
    assert all(r.source["snapshot"] == "true" for r in snap)
    assert all(r.source["snapshot"] == "false" for r in stream)
    snap_lsn = snap[0].lsn
    assert all(r.lsn > snap_lsn for r in stream), "a streamed change precedes the snapshot point"
    m = re.search(rf"kafka_sync: replication slot {node.slot} consistent at ([0-9A-F]+/[0-9A-F]+)",
                  node.pg.log_text(log_start))
    assert m, "create_node did not log its consistent point"
    assert parse_lsn(m.group(1)) + 1 == snap_lsn, (
        f"snapshot lsn header {snap[0].headers['kafka_sync.lsn']} != consistent point {m.group(1)} + 1")
    # Every row the writer committed after create_node() returned streams as its own transaction.
    later = set(writer.committed_keys()) - created
    assert later <= set(stream_keys), f"commits after create_node() not streamed: {sorted(later - set(stream_keys))[:20]}"
    # Rows of the concurrent writer from before create_node() are in the snapshot.
    assert any(k.startswith("c") for k in snap_keys), "no concurrent row in the snapshot (test too slow?)"
    print(f"snapshot: {n_r} r records, {len(stream)} c records, "
          f"{len(set(snap_keys) & set(stream_keys))} in both")


def test_commits_right_after_create_node_stream_as_their_own_transactions(node_factory):
    """create_node() returns only once its slot is consistent: twenty
    single-row inserts and a delete committed right after it returns each
    come out as a transaction of their own (op c / d), after the snapshot
    (which, read when the worker starts, may hold some of them as well)."""
    node = node_factory()
    node.sql("INSERT INTO user_table VALUES ('before', 'x', 'online')")
    log_start = node.pg.log_position()
    node.create(snapshot=True)
    for i in range(20):
        node.sql("INSERT INTO user_table VALUES (%s, 'x', 'online')", (f"after{i:02d}",))
    node.sql("DELETE FROM user_table WHERE user_id = 'before'")
    insert_marker(node)
    records = read_until_marker(node, timeout=60, log_since=log_start)[:-1]
    txns = split_transactions(records)
    assert {r.op for r in txns[0]} == {"r"}, f"the snapshot: {describe(txns[0])}"
    streamed = txns[1:]
    for t in streamed:
        check_transaction_framing(t)
    got = [(t[0].op, t[0].key["user_id"]) for t in streamed if len(t) == 1]
    want = [("c", f"after{i:02d}") for i in range(20)] + [("d", "before")]
    assert got == want and len(streamed) == len(want), f"streamed after create_node: {describe(records)}"


# -- 7. drop_node ----------------------------------------------------------------------------


def test_drop_node_stops_the_worker_and_removes_the_slot_and_create_node_works_again(node_factory):
    node = node_factory()
    node.create(snapshot=False)
    st = node.wait_state("streaming")
    pid = st["worker_pid"]
    assert pid and pid_alive(pid)
    assert node.slot_info() is not None
    node.sql("INSERT INTO user_table VALUES ('before_drop', 'a', 'online')")
    node.read(1)

    log_start = node.pg.log_position()
    node.drop()
    assert node.status() is None, "node_status still shows a node after drop_node()"
    assert node.sql("SELECT count(*) FROM kafka_sync.node")[0][0] == 0
    wait_until(lambda: not pid_alive(pid), 10, f"worker {pid} to exit")
    assert node.slot_info() is None, f"slot survived drop_node(): {node.slot_info()}"

    node.sql("INSERT INTO user_table VALUES ('while_dropped', 'b', 'online')")
    # Nothing comes back on its own: no worker, no slot, no record.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert node.slot_info() is None, "the slot came back after drop_node()"
        producers = node.pg.sql(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'kafka_sync producer' "
            "AND datname = %s AND pid = %s", (node.db, pid))
        assert not producers, "the old worker is still running"
        time.sleep(0.2)
    assert len(node.read_all(idle_timeout=1.0)) == 1, "a record was produced after drop_node()"

    node.create(snapshot=False, create_topic=False)  # same name, same topic
    st2 = node.wait_state("streaming", log_since=log_start)
    assert st2["worker_pid"] != pid
    assert node.slot_info() is not None
    node.sql("INSERT INTO user_table VALUES ('after_recreate', 'c', 'online')")
    records = node.read(2, log_since=log_start)
    assert [r.key["user_id"] for r in records] == ["before_drop", "after_recreate"], describe(records)
    assert records[1].lsn > records[0].lsn


def test_drop_node_inside_a_transaction_block_is_refused_and_the_node_keeps_running(node_factory):
    node = node_factory()
    node.create(snapshot=False)
    pid = node.wait_state("streaming")["worker_pid"]
    conn = node.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            with pytest.raises(Exception) as exc:
                cur.execute("SELECT kafka_sync.drop_node()")
            assert "transaction block" in str(exc.value), str(exc.value)
        conn.rollback()
    finally:
        conn.close()
    assert node.slot_info() is not None, "the slot is gone although drop_node() failed"
    st = node.wait_state("streaming", timeout=15)
    node.sql("INSERT INTO user_table VALUES ('still_there', 'a', 'online')")
    records = node.read(1)
    assert records[0].key == {"user_id": "still_there"}
    if st["worker_pid"] != pid:
        pytest.fail(f"the worker was restarted by a refused drop_node() ({pid} -> {st['worker_pid']})")


# -- 8. a large transaction ----------------------------------------------------------------------

BIG_ROWS = 200_000
RSS_LIMIT_KB = 300 * 1024


class BigTxnReader(threading.Thread):
    """Follows the topic while the big transaction is produced and checks
    every record it gets against what record number offset+1 must be.

    A gap in the offsets (`gaps`) means records the broker lost.
    """

    def __init__(self, bootstrap, topic, n):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.n = bootstrap, topic, n
        self.checked = 0
        self.gaps = []          # (first missing offset, next offset seen)
        self.bad = []           # descriptions of wrong records
        self.lsn = None
        self.xid = None
        self.last = None        # Record of offset n-1
        self.done = threading.Event()
        self.stop_event = threading.Event()
        self.error = None

    def run(self):
        try:
            self._run()
        except Exception as e:
            self.error = e
        finally:
            self.done.set()

    def _run(self):
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"kafka_sync_pytest_big_{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
        })
        try:
            consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
            expected = 0
            while not self.stop_event.is_set() and expected < self.n:
                for msg in consumer.consume(num_messages=10000, timeout=0.2):
                    if msg.error():
                        continue
                    o = msg.offset()
                    if o != expected:
                        if o < expected:
                            self.bad.append(f"offset {o} read twice / went back (expected {expected})")
                            continue
                        self.gaps.append((expected, o))
                    expected = o + 1
                    self._check(o, msg)
        finally:
            consumer.close()

    def _check(self, o, msg):
        if o >= self.n:
            self.bad.append(f"record beyond the transaction at offset {o}")
            return
        want_key = ('{"user_id":"big%07d"}' % (o + 1)).encode()
        headers = dict(msg.headers() or [])
        lsn, xid = headers.get("kafka_sync.lsn"), headers.get("kafka_sync.xid")
        if self.lsn is None:
            self.lsn, self.xid = lsn, xid
        problems = []
        if msg.key() != want_key:
            problems.append(f"key {msg.key()!r} != {want_key!r}")
        if lsn != self.lsn or xid != self.xid:
            problems.append(f"lsn/xid headers {lsn}/{xid} != {self.lsn}/{self.xid}")
        if (b'"total_order":%d,' % (o + 1)) not in msg.value():
            problems.append("wrong transaction.total_order")
        end = headers.get("kafka_sync.txn_end")
        if o == self.n - 1:
            self.last = Record(msg)
            if end != str(self.n).encode():
                problems.append(f"txn_end {end!r} on the last record, expected {self.n}")
        elif end is not None:
            problems.append(f"txn_end {end!r} on a record that is not the last")
        if problems and len(self.bad) < 20:
            self.bad.append(f"offset {o}: " + "; ".join(problems))
        self.checked += 1


def test_large_transaction_streams_complete_with_bounded_worker_memory(node_factory):
    node = node_factory()
    node.create(snapshot=False, kafka_config=NODE_KAFKA_CONFIG)
    pid = node.wait_state("streaming")["worker_pid"]
    log_start = node.pg.log_position()
    hwm_before = proc_kb(pid, "VmHWM")

    reader = BigTxnReader(node.kafka.bootstrap, node.topic, BIG_ROWS)
    reader.start()
    try:
        t0 = time.monotonic()
        info = run_txn(node, [
            f"INSERT INTO user_table SELECT 'big' || lpad(g::text, 7, '0'), "
            f"'name ' || g, 'online' FROM generate_series(1, {BIG_ROWS}) g"])
        t_commit = time.monotonic() - t0
        if not reader.done.wait(180):
            pytest.fail(f"the last record did not arrive within 180s: read {reader.checked} "
                        f"records\n{node.diagnostics(log_start)}")
        t_done = time.monotonic() - t0
    finally:
        reader.stop_event.set()
        reader.join(10)
    hwm = proc_kb(pid, "VmHWM")
    if reader.error:
        raise reader.error

    st = node.status()
    assert st["worker_pid"] == pid, "the worker restarted during the big transaction"
    assert not reader.bad, "wrong records:\n" + "\n".join(reader.bad)
    assert reader.last is not None, f"never saw the last record; gaps {reader.gaps}"
    low, high = watermarks(node.kafka.bootstrap, node.topic)
    assert high == BIG_ROWS, f"the topic holds offsets {low}..{high}, expected exactly {BIG_ROWS} records"
    last = reader.last
    assert last.txn_end == BIG_ROWS and last.total_order == BIG_ROWS, last.brief()
    assert info["lsn_before"] < last.lsn <= info["lsn_after"], last.brief()
    assert last.headers["kafka_sync.xid"] == str(info["xid"])
    # the consumer can see the last record before its delivery report reaches the worker
    wait_until(lambda: node.status()["records_acknowledged"] >= BIG_ROWS, 30,
               "the worker counted every record acknowledged", diagnostics=lambda: str(node.status()))
    assert not reader.gaps, f"offsets missing: {reader.gaps[:10]}"
    assert reader.checked == BIG_ROWS, f"only {reader.checked} records checked"
    assert hwm is not None and hwm < RSS_LIMIT_KB, (
        f"worker peak RSS (VmHWM) {hwm} kB exceeds {RSS_LIMIT_KB} kB (before: {hwm_before} kB)")
    print(f"big transaction: commit {t_commit:.1f}s, last record {t_done:.1f}s, worker VmHWM "
          f"{hwm_before} -> {hwm} kB, {reader.checked} records checked in flight, gaps {reader.gaps[:5]}")


def test_records_carry_the_node_incarnation_and_a_re_created_node_has_a_new_one(node_factory):
    """kafka_sync.incarnation = <system identifier>/<timeline>/<node created_at in µs>: a
    subscriber compares LSNs only within one incarnation (a node restored from a backup,
    failed over or created again writes at LSNs it may already have passed)."""
    node = node_factory()
    node.create(snapshot=False)
    node.wait_state("streaming", timeout=60)
    sysid = node.sql("SELECT system_identifier FROM pg_control_system()")[0][0]
    tli = node.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0]
    created = node.sql("SELECT (extract(epoch FROM created_at) * 1000000)::bigint FROM kafka_sync.node")[0][0]
    node.sql("INSERT INTO user_table VALUES ('first', 'x', 'online')")
    first = node.read(1)[0]
    assert first.headers.get("kafka_sync.incarnation") == f"{sysid}/{tli}/{created}", first.headers
    node.drop()
    node.create(snapshot=False, create_topic=False)
    node.wait_state("streaming", timeout=60)
    node.sql("INSERT INTO user_table VALUES ('second', 'x', 'online')")
    records = node.read(2)
    assert records[1].key["user_id"] == "second"
    second = records[1].headers["kafka_sync.incarnation"]
    assert second.startswith(f"{sysid}/{tli}/") and second != first.headers["kafka_sync.incarnation"], second
