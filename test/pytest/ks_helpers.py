"""Helpers for the end-to-end tests of the kafka_sync source path.

Everything here is about *observing* the extension: polling with deadlines
and good failure messages, reading a node's topic in bulk, decoding the
records, and a background writer that remembers exactly which transactions
committed (and when), so tests can compare the topic against ground truth.
"""

import json
import os
import threading
import time

import psycopg2
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from kafka_env import _topic_exists, manual_consumer

# The kafka_config every test node uses: payload-only values (as the brief's
# record layout assumes) and quick reconnects after a broker outage.
NODE_KAFKA_CONFIG = {"kafka_sync.schemas": False, "reconnect.backoff.max.ms": 500}

USER_TABLE_DDL = ("CREATE TABLE user_table(user_id text PRIMARY KEY, "
                  "user_name text, user_status text)")


# -- polling -------------------------------------------------------------------

class WaitTimeout(AssertionError):
    pass


def connection_lost(exc):
    """True for errors that mean "the server went away" (a restart), not a
    problem with the statement: psycopg2 reports an abruptly closed
    connection as a bare DatabaseError."""
    return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) or (
        type(exc) is psycopg2.DatabaseError)


def wait_until(predicate, timeout, what, interval=0.1, diagnostics=None):
    """Poll predicate() until it returns a truthy value; return that value.

    On timeout raise AssertionError naming `what`, the last value seen (or
    the last exception) and the output of diagnostics(), if given.
    """
    deadline = time.monotonic() + timeout
    last, last_exc = None, None
    while True:
        try:
            last = predicate()
            last_exc = None
            if last:
                return last
        except psycopg2.Error as e:
            if not connection_lost(e):
                raise
            # The server may be restarting; keep polling.
            last_exc = e
        if time.monotonic() >= deadline:
            extra = ""
            if diagnostics is not None:
                try:
                    extra = "\n" + str(diagnostics())
                except Exception as e:  # diagnostics must never hide the real failure
                    extra = f"\n(diagnostics failed: {e!r})"
            raise WaitTimeout(
                f"timed out after {timeout}s waiting for {what}; last value: {last!r}"
                + (f"; last error: {last_exc!r}" if last_exc else "") + extra)
        time.sleep(interval)


# -- LSNs ----------------------------------------------------------------------

def parse_lsn(text):
    """'16/B374D848' -> int; None stays None."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode()
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(value):
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


# -- records ---------------------------------------------------------------------

class Record:
    """One Kafka message of a node topic, decoded."""

    __slots__ = ("offset", "partition", "raw_key", "raw_value", "raw_headers",
                 "key", "value", "headers")

    def __init__(self, msg):
        self.offset = msg.offset()
        self.partition = msg.partition()
        self.raw_key = msg.key()
        self.raw_value = msg.value()
        self.raw_headers = list(msg.headers() or [])
        self.headers = {}
        for k, v in self.raw_headers:
            self.headers[k] = None if v is None else v.decode("utf-8")
        self.key = None if self.raw_key is None else json.loads(self.raw_key)
        self.value = None if self.raw_value is None else json.loads(self.raw_value)

    # Debezium payload accessors (kafka_sync.schemas = false: value is the payload)
    @property
    def op(self):
        return self.value["op"]

    @property
    def after(self):
        return self.value["after"]

    @property
    def before(self):
        return self.value["before"]

    @property
    def source(self):
        return self.value["source"]

    @property
    def total_order(self):
        return self.value["transaction"]["total_order"]

    @property
    def lsn(self):
        """The kafka_sync.lsn header as an int."""
        return parse_lsn(self.headers["kafka_sync.lsn"])

    @property
    def txn_end(self):
        v = self.headers.get("kafka_sync.txn_end")
        return None if v is None else int(v)

    @property
    def user_id(self):
        return self.key["user_id"]

    def ident(self):
        """Identity of a record within the source's history."""
        return (self.lsn, self.total_order)

    def same_content(self, other, ignore_processing_time=False):
        """Equal key, headers and value; optionally ignoring payload.ts_ms,
        which Debezium defines as the time the record was *made* (it
        legitimately differs when a transaction is decoded again)."""
        if self.raw_key != other.raw_key or self.raw_headers != other.raw_headers:
            return False
        if not ignore_processing_time:
            return self.raw_value == other.raw_value
        a = dict(self.value)
        b = dict(other.value)
        a.pop("ts_ms", None)
        b.pop("ts_ms", None)
        return a == b

    def brief(self):
        return (f"@{self.offset} lsn={self.headers.get('kafka_sync.lsn')} "
                f"xid={self.headers.get('kafka_sync.xid')} end={self.txn_end} "
                f"key={self.key} op={self.value and self.value.get('op')} "
                f"order={self.value and self.value.get('transaction', {}).get('total_order')}")

    def __repr__(self):
        return f"<Record {self.brief()}>"


def describe(records, limit=20):
    if len(records) <= limit:
        return "\n".join(r.brief() for r in records)
    half = limit // 2
    return "\n".join([r.brief() for r in records[:half]] + [f"... {len(records) - limit} more ..."]
                     + [r.brief() for r in records[-half:]])


# -- reading a topic -------------------------------------------------------------

class TruncatedTopic(AssertionError):
    pass


def watermarks(bootstrap, topic, partition=0, timeout=10.0):
    """(low, high) offsets of a partition: high - low records are stored."""
    consumer = manual_consumer(bootstrap)
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                              timeout=timeout, cached=False)
    finally:
        consumer.close()


def consume(bootstrap, topic, min_count=None, timeout=30.0, idle_timeout=None,
            partition=0, until=None):
    """Read a partition from the beginning, in bulk, and decode every record.

    Stops when `min_count` records were read, when `until(records)` is true,
    when `idle_timeout` passes without a new record (if given), or at
    `timeout`. Never creates the topic (like kafka_env.read_topic). Returns
    a list of Record; the caller asserts on the count.
    """
    consumer = manual_consumer(bootstrap, **{"fetch.max.bytes": 64 * 1024 * 1024,
                                             "max.partition.fetch.bytes": 16 * 1024 * 1024})
    records = []
    start = last = time.monotonic()
    try:
        while not _topic_exists(consumer, topic):
            if time.monotonic() - start >= timeout:
                return records
            time.sleep(0.1)
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        while True:
            if min_count is not None and len(records) >= min_count:
                break
            if until is not None and until(records):
                break
            now = time.monotonic()
            if now - start >= timeout:
                break
            if idle_timeout is not None and now - last >= idle_timeout:
                break
            batch = consumer.consume(num_messages=10000, timeout=0.2)
            for msg in batch:
                if msg.error():
                    code = msg.error().code()
                    if code in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART,
                                KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC):
                        continue
                    raise KafkaException(msg.error())
                if not records and msg.offset() != 0:
                    # librdkafka's mock cluster keeps only the last 5 MB of a
                    # partition (rdkafka_mock.c: max_size); a test that reads
                    # "everything" must never silently get a suffix.
                    raise TruncatedTopic(
                        f"{topic}[{partition}] starts at offset {msg.offset()}: older "
                        f"records were dropped by the Kafka cluster's retention (the mock "
                        f"keeps 5 MB per partition); keep test topics smaller")
                records.append(Record(msg))
            if batch:
                last = time.monotonic()
    finally:
        consumer.close()
    return records


def wait_records(bootstrap, topic, count, timeout=30.0, diagnostics=None):
    """Exactly what consume() returns once `count` records are there; fails
    with the records read so far (and diagnostics) otherwise."""
    records = consume(bootstrap, topic, min_count=count, timeout=timeout)
    if len(records) < count:
        extra = ""
        if diagnostics is not None:
            try:
                extra = "\n" + str(diagnostics())
            except Exception as e:
                extra = f"\n(diagnostics failed: {e!r})"
        raise AssertionError(
            f"expected {count} records on {topic} within {timeout}s, got {len(records)}:\n"
            f"{describe(records)}{extra}")
    return records


# -- transactions on the topic ------------------------------------------------------

def split_transactions(records):
    """Group consecutive records sharing the lsn header (one source txn)."""
    txns = []
    for r in records:
        if txns and txns[-1][0].lsn == r.lsn:
            txns[-1].append(r)
        else:
            txns.append([r])
    return txns


def check_transaction_framing(txn):
    """Assert one complete transaction's records are well formed."""
    n = len(txn)
    lsns = {r.headers["kafka_sync.lsn"] for r in txn}
    assert len(lsns) == 1, f"lsn header differs inside a transaction: {describe(txn)}"
    xids = {r.headers["kafka_sync.xid"] for r in txn}
    assert len(xids) == 1, f"xid header differs inside a transaction: {describe(txn)}"
    assert [r.total_order for r in txn] == list(range(1, n + 1)), (
        f"total_order is not 1..{n}: {describe(txn)}")
    assert txn[-1].txn_end == n, (
        f"last record must carry kafka_sync.txn_end={n}: {describe(txn)}")
    bad = [r for r in txn[:-1] if "kafka_sync.txn_end" in r.headers]
    assert not bad, f"txn_end on a record that is not the transaction's last: {describe(bad)}"


def apply_like_a_consumer(records):
    """Replay the topic the way the apply side promises to (DESIGN.md,
    "exactly-once effect"): whole transactions only, and a transaction whose
    commit LSN is at or below the progress already applied is skipped.

    Returns (applied, duplicates, abandoned): applied is the list of
    transactions (lists of Records) in the order they take effect;
    duplicates pairs every skipped complete transaction with the applied one
    of the same LSN; abandoned lists incomplete transactions (a producer
    that died half-way, whose transaction was sent again later).
    """
    applied, duplicates, abandoned = [], [], []
    by_lsn = {}
    progress = -1
    for txn in split_transactions(records):
        # A transaction may be interrupted and immediately sent again from its
        # start: split where total_order restarts at 1.
        pieces, cur = [], []
        for r in txn:
            if cur and r.total_order == 1:
                pieces.append(cur)
                cur = []
            cur.append(r)
        pieces.append(cur)
        for piece in pieces:
            complete = piece[-1].txn_end == len(piece) and piece[0].total_order == 1
            if not complete:
                abandoned.append(piece)
                continue
            lsn = piece[0].lsn
            if lsn <= progress:
                duplicates.append((piece, by_lsn.get(lsn)))
                continue
            applied.append(piece)
            by_lsn[lsn] = piece
            progress = lsn
    return applied, duplicates, abandoned


# -- the database side ---------------------------------------------------------------

class Node:
    """A database of the test cluster that is (or will be) a kafka_sync node."""

    def __init__(self, pg, kafka, dbname, node_name, topic_prefix):
        self.pg = pg
        self.kafka = kafka
        self.db = dbname
        self.name = node_name
        self.prefix = topic_prefix
        self.topic = f"{topic_prefix}.{node_name}"
        self.slot = f"kafka_sync_{node_name}"
        self.created = False

    def sql(self, query, params=None):
        return self.pg.sql(query, params, dbname=self.db)

    def connect(self, autocommit=True):
        return self.pg.connect(dbname=self.db, autocommit=autocommit)

    def create(self, snapshot=True, kafka_config=None, create_topic=True, partitions=1):
        if create_topic:
            self.kafka.create_topic(self.topic, partitions=partitions)
        cfg = json.dumps(kafka_config if kafka_config is not None else NODE_KAFKA_CONFIG)
        topic = self.sql(
            "SELECT kafka_sync.create_node(%s, %s, topic_prefix => %s, "
            "kafka_config => %s::jsonb, snapshot => %s)",
            (self.name, self.kafka.bootstrap, self.prefix, cfg, snapshot))[0][0]
        assert topic == self.topic, f"create_node returned topic {topic!r}, expected {self.topic!r}"
        self.created = True
        return self

    def drop(self):
        self.sql("SELECT kafka_sync.drop_node()")
        self.created = False

    def status(self):
        """kafka_sync.node_status as a dict, or None when this is no node."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT * FROM kafka_sync.node_status")
                row = cur.fetchone()
                if row is None:
                    return None
                return dict(zip([d[0] for d in cur.description], row))
        finally:
            conn.close()

    def slot_info(self):
        rows = self.pg.sql(
            "SELECT slot_name, plugin, slot_type, database, temporary, active, active_pid, "
            "restart_lsn::text, confirmed_flush_lsn::text FROM pg_replication_slots "
            "WHERE slot_name = %s", (self.slot,))
        if not rows:
            return None
        keys = ["slot_name", "plugin", "slot_type", "database", "temporary", "active",
                "active_pid", "restart_lsn", "confirmed_flush_lsn"]
        return dict(zip(keys, rows[0]))

    def confirmed_flush_lsn(self):
        info = self.slot_info()
        return None if info is None else parse_lsn(info["confirmed_flush_lsn"])

    def diagnostics(self, log_since=0):
        try:
            status = self.status()
        except Exception as e:
            status = f"(status failed: {e!r})"
        try:
            slot = self.slot_info()
        except Exception as e:
            slot = f"(slot info failed: {e!r})"
        log = self.pg.log_text(log_since)
        return (f"node_status: {status}\nslot: {slot}\n--- server log (tail) ---\n"
                f"{log[-4000:]}")

    def wait_state(self, state, timeout=30.0, log_since=0):
        return wait_until(
            lambda: (lambda s: s if s and s["state"] == state else None)(self.status()),
            timeout, f"node {self.name} state {state!r}",
            diagnostics=lambda: self.diagnostics(log_since))

    def read(self, count, timeout=30.0, log_since=0):
        return wait_records(self.kafka.bootstrap, self.topic, count, timeout,
                            diagnostics=lambda: self.diagnostics(log_since))

    def read_all(self, idle_timeout=2.0, timeout=60.0):
        return consume(self.kafka.bootstrap, self.topic, timeout=timeout,
                       idle_timeout=idle_timeout)

    def table_keys(self, table="user_table", key="user_id"):
        return {r[0] for r in self.sql(f"SELECT {key} FROM {table}")}


def proc_status(pid):
    """/proc/<pid>/status as a dict of str, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            out = {}
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
            return out
    except (FileNotFoundError, ProcessLookupError):
        return None


def proc_kb(pid, field):
    st = proc_status(pid)
    if st is None or field not in st:
        return None
    return int(st[field].split()[0])


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    st = proc_status(pid)
    return st is not None and not st.get("State", "").startswith("Z")


class Writer(threading.Thread):
    """Background write load: small insert-only transactions into user_table
    with keys '<prefix>NNNNNNNN', one connection, so commit order is the
    order in which commits returned.

    For every attempt it records (start, end, keys, outcome) where outcome
    is 'committed' (COMMIT returned), 'failed' (an error before COMMIT was
    sent: certainly not committed) or 'unknown' (the connection died during
    COMMIT). Connection errors (server restarts) are survived by
    reconnecting; keys are never reused, so an 'unknown' transaction can be
    settled later by looking at the table.
    """

    def __init__(self, node, prefix="w", rows_per_txn=3, pause=0.005, max_txns=None):
        super().__init__(daemon=True)
        self.node = node
        self.prefix = prefix
        self.rows_per_txn = rows_per_txn
        self.pause = pause
        self.max_txns = max_txns
        self.txns = []  # dicts: start, end, keys, outcome, error
        self._stop_event = threading.Event()
        self.errors = []
        self.next_id = 0
        self.reconnects = 0
        self.fatal = None

    def stop(self, timeout=30):
        self._stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "writer thread did not stop"
        assert self.fatal is None, f"writer died: {self.fatal!r}"

    def committed(self):
        return [t for t in self.txns if t["outcome"] == "committed"]

    def committed_keys(self):
        return [k for t in self.committed() for k in t["keys"]]

    def unknown(self):
        return [t for t in self.txns if t["outcome"] == "unknown"]

    def _connect(self):
        deadline = time.monotonic() + 60
        while True:
            try:
                return self.node.connect(autocommit=False)
            except psycopg2.OperationalError:
                if time.monotonic() > deadline or self._stop_event.is_set():
                    raise
                time.sleep(0.1)

    def run(self):
        try:
            self._run()
        except Exception as e:  # surfaced by stop()
            self.fatal = e

    def _run(self):
        conn = None
        while not self._stop_event.is_set():
            if self.max_txns is not None and len(self.txns) >= self.max_txns:
                break
            if conn is None:
                try:
                    conn = self._connect()
                except psycopg2.OperationalError:
                    if self._stop_event.is_set():
                        break
                    raise
            keys = [f"{self.prefix}{self.next_id + i:08d}" for i in range(self.rows_per_txn)]
            self.next_id += self.rows_per_txn
            t = {"start": time.monotonic(), "end": None, "keys": keys, "outcome": None}
            stage = "statement"
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "INSERT INTO user_table(user_id, user_name, user_status) "
                        "SELECT k, 'name ' || k, 'online' FROM unnest(%s::text[]) AS k",
                        (keys,))
                    stage = "commit"
                    conn.commit()
                t["outcome"] = "committed"
            except psycopg2.Error as e:
                if not connection_lost(e):
                    raise
                t["outcome"] = "unknown" if stage == "commit" else "failed"
                t["error"] = repr(e)
                self.errors.append(e)
                try:
                    conn.close()
                except Exception:
                    pass
                conn = None
                self.reconnects += 1
                time.sleep(0.05)
            t["end"] = time.monotonic()
            self.txns.append(t)
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()
