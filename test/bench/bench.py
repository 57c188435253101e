#!/usr/bin/python3
"""kafka_sync beside PostgreSQL's own logical replication, in one run.

Source path (one cluster per kafka_sync system, with that system's node):
  decode + produce: kafka_sync's producer worker against pg_recvlogical
  draining the same WAL with pgoutput. The node is paused while the load is
  written and a pgoutput slot created at the same moment; then resume_node()
  until Kafka acknowledged every record, and pg_recvlogical --endpos, timed.
  Loads: one R-row transaction; T single-row transactions.  -> records/s
  (the native column: pgoutput on the default system's cluster; the JSON
  keeps pgoutput's rate beside every system's)

Apply path (two clusters src -> dst per system: database "native" with a
publication and a subscription; for each kafka_sync system a database with
a kafka_sync node on its src, a subscription and a kafka_sync_sidecar on its
dst; the same table in all. Separate clusters because a logical decoder
reads all of its cluster's WAL: sharing them, each system's decoder would
also read the other systems' writes, and S2/S3 would pay for it):
  S1 catch-up: T single-row INSERT transactions written while the native
     subscription is disabled / the kafka_sync subscription is paused (the
     sidecar's runner has stopped, and the node has produced them all: the
     records wait in Kafka); then the time from ENABLE / resume_subscription
     until the target has them all (native: this includes the walsender
     decoding the backlog; kafka_sync: the records are in Kafka already).
     Debezium: its sink connector paused through Connect's REST API until
     the source connector has put them all in the topic (its end offset),
     then timed from the resume request.  -> txn/s
  S2 one R-row INSERT transaction, from its commit until every row is
     visible on the target.  -> rows/s
  S3 one U-row UPDATE transaction of rows already on the target, from its
     commit until the target shows every new value.  -> rows/s
  S4 latency: single-row INSERT transactions at a steady rate (1,000/s) for
     D seconds, paced inside the server (a DO loop that sleeps until each
     transaction's slot). Per transaction: source commit time (exactly,
     pg_xact_commit_timestamp(xmin) on the source, track_commit_timestamp is
     on) to the time it became visible on the target. Visibility is observed
     by a poller on the target: one connection, every 2 ms a
     "SELECT id ... WHERE id >= <lowest id not seen yet>", each new id
     stamped with the time the query was sent (same machine, same clock).
     A poller, not a trigger: it sees what readers see (after the applying
     transaction's commit, whatever the apply batches), needs nothing on the
     target table, and works the same for both systems (native apply fires
     only ENABLE ALWAYS triggers). Its error is at most one poll interval
     plus a query (~2-3 ms), the same for both.  -> p50, p99, max, and p50
     of the first and of the last 10 s (growth would show as a rising p50).
  Beside them: CPU seconds per 100,000 rows of the apply side (native: the
  apply worker; kafka_sync: the sidecar plus the backends it uses;
  Debezium: the Connect worker JVM plus the sink's backends), the sidecar's
  own CPU (utime + stime from /proc/<pid>/stat), the Connect worker JVM's
  alone (both its connectors: in S2-S3 the source connector's work is in
  it too), the local broker's, and the sidecar's (Connect worker's) peak
  RSS (VmHWM from /proc/<pid>/status) over the whole run (the curve's
  included). The broker's CPU includes what it serves the idle systems'
  clients meanwhile, so a slower system is charged more of it. The apply
  side is metered over the scenario's timed window (S1: from the resume).
  And the source side's CPU seconds per 100,000 rows, for S1-S3: the
  process that decodes the source's WAL for that system on its src
  cluster: kafka_sync's producer worker (worker_pid of
  kafka_sync.node_status: it decodes in process and produces to Kafka),
  native's walsender (pgoutput, for the subscription's apply worker),
  Debezium's walsender (pgoutput, for its source connector; the
  connector's own work is in the Connect worker's row). Metered from the
  moment the load starts being written until every row is visible on the
  target, the same window for all systems, so each is charged wherever its
  source side works: in S1 kafka_sync's producer and Debezium's walsender
  work while the load is written (the records wait in Kafka), native's
  walsender after the ENABLE (it decodes the backlog during the catch-up);
  the idle time in between costs next to nothing. The backend that writes
  the load is not counted: the same work in every system.

Latency against rate (a table of its own after the main one; --no-curve
leaves it out): S4 at each offered rate of --curve-rates (default 1,000,
5,000, 10,000, 20,000 txn/s; --quick 1,000 and 5,000) for --curve-seconds
each (20; --quick 5, see below), for native, kafka_sync on its defaults and Debezium
with the sink's default batch.size (Debezium bs1 and schemas off are left
out, they idle meanwhile: bs1 applies some 3,600 txn/s at most, its S1,
so from 5,000 txn/s on it would drain its backlog for minutes), the
rates interleaved over the systems. Once per rate unless --repeat is
given (then --repeat times, medians): 4 rates x 20 s x 3 systems, about
5-6 minutes with the draining. Per rate and system: p50,
p99, the p50 of the last window, the achieved write rate (txns / the
writer's duration: on this 2-core machine the writer may fall short of
the offered rate, so that is the rate each system was given), and:
  latency growth: the least-squares slope of each transaction's latency
     against its commit time. About 0 for a system that keeps up; a system
     that applies at a rate A below the write rate W lets its backlog, and
     each row's wait, grow linearly: slope W/A - 1. Fitted over every
     transaction, so one late row barely moves it, unlike a count over the
     first and last rows. A system that applies in batches every P seconds
     (Debezium: P ~ 1 s) has a latency sawtooth, which biases the slope by
     about -(P/D)^2 over D seconds: -2.5 ms/s over 20 s, -40 ms/s over
     --quick's 5 s (over 3 s it would be -110 ms/s, as much as the
     threshold below: hence 5 s, not less).
  apply rate = write rate / (1 + latency growth).
  keeps up: apply rate >= 90% of the write rate (latency growing by at most
     111 ms per second of writing).
  drain: the last row's visibility minus the last commit.
The rate where a system stops keeping up is the lowest offered rate at
which it did not keep up (with the write rate achieved there and the
highest write rate it kept up with below it); "kept up at every rate
tested" otherwise. The JSON has the curve under "curve": its medians, the
rate where each system stops keeping up and every run.

Warm-up: before the measured runs, each system runs S1-S3 once at a quarter
of their sizes and S4 for min(D, 5) s, not measured, and the JVMs are let
settle (idle): the JVMs of a running deployment (the Kafka broker,
Debezium's Connect worker) have their code compiled, a fresh one compiles
it while it first runs it (on a fresh broker, half of its CPU in a
100,000-row S2 went to its JIT compiler threads, 2,735 compilations), and
that was charged to whichever system ran first.

Every scenario runs --repeat times (default 3); the table shows medians,
the JSON (test/bench/results/bench-<timestamp>.json) every run as well. It
is a benchmark, not a test: nothing is asserted about the times. Ratios
matter, not absolute figures: the machine is shared.

Usage: /usr/bin/python3 test/bench/bench.py [--quick] [--repeat N] [--txns T] [--rows R]
           [--update-rows U] [--seconds D] [--rate 1000] [--json FILE] [--perf DIR]
           [--curve-rates 1000,5000,10000,20000] [--curve-seconds 20] [--no-curve]
           [--skip-source] [--defaults-only] [--no-debezium]
       make bench [BENCH_ARGS=--quick]
       KAFKA_BROKERS=host:port to run on an existing Kafka cluster.
As root, the servers run as the postgres OS user (test/pytest/pg_env.py).

Kafka: a real Apache Kafka broker (KRaft, one node on loopback, the pinned
version of test/kafka_broker/kafka_broker.py) started for the run and
stopped after it, or the cluster named by $KAFKA_BROKERS. The table and the
JSON say which. The rows' payload is an md5 (32 hex digits).

The kafka_sync systems (columns of the table):
  kafka_sync              everything on its defaults: the node (schemas on,
                          no compression, its own topic created by it), the
                          subscription and the sidecar's consumer settings.
  kafka_sync schemas off  an extra column, NOT the defaults: the same but the
                          node's kafka_config is {"kafka_sync.schemas": false}
                          (payload-only records, as JsonConverter with
                          schemas.enable=false). Earlier runs of this bench
                          measured this shape, and the apply functions read it
                          on their fast path; the default's records (with the
                          Connect schema) go through jansson. --defaults-only
                          leaves it out.
  kafka_sync streaming    an extra column, NOT the defaults: the node's
                          kafka_config is {"kafka_sync.streaming": true}: a
                          transaction that outgrows kafka_sync.streaming_work_mem
                          (4 MB) is sent to Kafka while it runs, and the
                          sidecar applies it when its commit record arrives.
                          Only the apply path (S1-S4); --defaults-only leaves
                          it out.

The seed's pipeline (shared/SEED_PIPELINE.md; test/bench/debezium_pipeline.py),
one way src -> dst on the same broker, two columns, left out by --no-debezium:
  Debezium bs1            Debezium's PostgreSQL connector (pgoutput,
                          ExtractNewRecordState, JsonConverter with schemas)
                          and Debezium's JDBC sink (upsert on the record key,
                          deletes enabled) on one standalone Kafka Connect
                          worker, all on their defaults but the sink's
                          batch.size 1, as the seed ran it.
  Debezium                the same with the sink's default batch.size.
  Both pipelines run in the one worker JVM (its CPU is measured as a whole;
  the other pipeline idles meanwhile). Their jars are fetched with Maven on
  the first run (test/bench/debezium/pom.xml, into ~/.cache/kafka_sync).
  Before the scenarios, the warm-up round (below) goes through each
  pipeline, so its JVM code is compiled as in a running deployment.
  The source path (above) is kafka_sync's producer only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pytest"))

from apply_env import Sidecar  # noqa: E402
from conftest import NODE_SERVER_CONF  # noqa: E402
from kafka_env import kafka_for_tests  # noqa: E402
from kafka_broker import KAFKA_VERSION  # noqa: E402  (kafka_env put test/kafka_broker on the path)
from pg_env import PgCluster, pg_bindir  # noqa: E402

from bench_report import (  # noqa: E402
    KEEPS_UP, build_curve, build_table, machine_info, percentile, print_curve, print_table)
import debezium_pipeline as dbz  # noqa: E402

TABLE = "CREATE TABLE bench_t (id bigint PRIMARY KEY, payload text, n int)"
# synchronous_commit stays on: logical decoding (both systems) only reads flushed
# WAL, and an asynchronous commit waits for the WAL writer (up to 200 ms) before
# anything can see it. With fsync off (pg_env.py) a flush costs a write() only.
SERVER_CONF = dict(NODE_SERVER_CONF, max_wal_size="4GB", shared_buffers="256MB", log_min_messages="warning",
                   # a re-enabled native subscription restarts its apply worker at
                   # once instead of up to 5 s later
                   wal_retrieve_retry_interval="100ms")
SIDECAR_APP = "kafka_sync_sidecar%"
# system -> (database, node kafka_config or None for the defaults, column header)
SYSTEMS = {
    "native": ("native", None, "native"),
    "kafka_sync": ("ks", None, "kafka_sync"),
    "kafka_sync_schemas_off": ("ks_schemas_off", {"kafka_sync.schemas": False}, "schemas off*"),
    "kafka_sync_streaming": ("ks_streaming", {"kafka_sync.streaming": True}, "streaming*"),
    # the seed's pipeline (test/bench/debezium_pipeline.py): the config is the sink's batch.size
    "debezium_batch1": ("dbz_batch1", {"batch.size": 1}, "Debezium bs1"),
    "debezium": ("dbz", {}, "Debezium"),
}
DEBEZIUM_SYSTEMS = ("debezium_batch1", "debezium")
CURVE_SYSTEMS = ("native", "kafka_sync", "debezium")  # the latency-against-rate curve's (those in the run)
WARMUP_ID = 10 ** 12  # the Debezium systems' first row, through the pipeline before anything else
DEBEZIUM_NOTE = (f"Debezium: the seed's pipeline, one way: Debezium {dbz.DEBEZIUM_VERSION} PostgreSQL connector (pgoutput, "
                 f"ExtractNewRecordState, JsonConverter with schemas) and Debezium {dbz.DEBEZIUM_JDBC_VERSION} JDBC sink "
                 f"(upsert on the record key, deletes enabled) on one standalone Kafka Connect {dbz.CONNECT_VERSION} "
                 "worker; 'bs1' = the sink's batch.size 1 as the seed ran it, 'Debezium' = its default batch.size")
EXTRA_NOTE = ('* extra, non-default: kafka_sync with the node\'s kafka_config {"kafka_sync.schemas": false} '
              '(payload-only records), and with {"kafka_sync.streaming": true} (in-progress transactions streamed '
              "to Kafka as they are decoded, applied at their commit); the kafka_sync column runs on the defaults")
CLK_TCK = os.sysconf("SC_CLK_TCK")
BASE_DIR = Path(os.environ.get("KAFKA_SYNC_BENCH_DIR", "/tmp/kafka_sync_bench"))


def wait_until(fn, timeout, what, interval=0.005, diagnostics=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}" + (f"\n{diagnostics()}" if diagnostics else ""))


def cpu_seconds(pid):
    """utime + stime of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def peak_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class CpuMeter:
    """CPU seconds used by a changing set of processes between start() and stop()."""

    def __init__(self, pids):
        self.pids = pids  # callable -> iterable of pids
        self.before = {}

    def start(self):
        self.before = {p: cpu_seconds(p) for p in self.pids()}

    def stop(self):
        # a process that started meanwhile (native: the re-enabled apply worker) counts from zero
        used = 0.0
        for p in self.pids():
            now = cpu_seconds(p)
            if now is not None:
                used += now - (self.before.get(p) or 0.0)
        return used


class Conn:
    """A persistent autocommit connection (pollers must not pay a backend start per query)."""

    def __init__(self, cluster, db):
        self.conn = cluster.connect(dbname=db)

    def one(self, q, params=None):
        with self.conn.cursor() as cur:
            cur.execute(q, params)
            return cur.fetchone()

    def all(self, q, params=None):
        with self.conn.cursor() as cur:
            cur.execute(q, params)
            return cur.fetchall()

    def close(self):
        self.conn.close()


def remove_if_empty(directory):
    """The run's own folder under BASE_DIR, once its clusters are destroyed."""
    try:
        directory.rmdir()
    except OSError:
        pass


# ---------------------------------------------------------------- source path

class SourceBench:
    def __init__(self, kafka, node_config=None):
        self.kafka = kafka
        self.base = BASE_DIR / uuid.uuid4().hex[:6]
        self.pg = PgCluster("source", extra_conf=SERVER_CONF, base_dir=self.base)
        self.pg.start()
        self.db = "bench"
        self.pg.create_database(self.db)
        prefix = "bench" + uuid.uuid4().hex[:8]
        self.sql("CREATE EXTENSION kafka_sync")
        self.sql(TABLE)
        self.sql("CREATE PUBLICATION kafka_sync FOR ALL TABLES")
        self.sql("SELECT kafka_sync.create_node('src', %s, topic_prefix => %s, snapshot => false, "
                 "kafka_config => %s)", (self.kafka.bootstrap, prefix, json.dumps(node_config or {})))
        wait_until(lambda: self.state() == "streaming", 60, "source node streaming", 0.1)
        self.next_id = 0

    def sql(self, q, params=None):
        return self.pg.sql(q, params, dbname=self.db)

    def state(self):
        rows = self.sql("SELECT state FROM kafka_sync.node_status")
        return rows[0][0] if rows else None

    def acked(self):
        rows = self.sql("SELECT coalesce(records_acknowledged, 0), state FROM kafka_sync.node_status")
        return rows[0][0] if rows and rows[0][1] == "streaming" else 0

    def run(self, nrecords, big_txn):
        self.sql("SELECT kafka_sync.pause_node()")
        wait_until(lambda: self.sql("SELECT worker_pid IS NULL FROM kafka_sync.node_status")[0][0], 30,
                   "producer worker stopped", 0.05)
        slot = "bench_pgoutput"
        self.sql("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        self.next_id = write_load(self.pg, self.db, self.next_id, nrecords, big_txn)
        end_lsn = self.sql("SELECT pg_current_wal_flush_lsn()")[0][0]

        t0 = time.monotonic()
        self.sql("SELECT kafka_sync.resume_node()")  # a new worker: records_acknowledged starts at 0
        t1 = wait_until(lambda: self.acked() >= nrecords, 900, f"{nrecords} records acknowledged", 0.01)
        ks = nrecords / (t1 - t0)

        cmd = [str(pg_bindir() / "pg_recvlogical"), "-h", str(self.pg.socket_dir), "-p", str(self.pg.port),
               "-U", "postgres", "-d", self.db, "--slot", slot, "--start", "--endpos", end_lsn,
               "-o", "proto_version=1", "-o", "publication_names=kafka_sync", "-f", "/dev/null", "--no-loop"]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True, timeout=900, stdin=subprocess.DEVNULL)
        native = nrecords / (time.monotonic() - t0)
        self.sql("SELECT pg_drop_replication_slot(%s)", (slot,))
        return native, ks

    def close(self):
        try:
            self.sql("SELECT kafka_sync.drop_node()")
        finally:
            self.pg.destroy()
            remove_if_empty(self.base)


def write_load(cluster, db, start, n, big_txn):
    """Rows start .. start+n-1 as one transaction or as n transactions; returns the next free id."""
    if big_txn:
        cluster.sql("INSERT INTO bench_t SELECT g, md5(g::text), g %% 1000 FROM generate_series(%s, %s) g",
                    (start, start + n - 1), dbname=db)
    else:
        cluster.sql(f"""DO $$ BEGIN
            FOR i IN {start} .. {start + n - 1} LOOP
                INSERT INTO bench_t VALUES (i, md5(i::text), i % 1000); COMMIT;
            END LOOP; END $$""", dbname=db)
    return start + n


def slope(xs, ys):
    """The least-squares slope of ys against xs (None for fewer than two distinct xs)."""
    n = len(xs)
    if n < 2:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var if var else None


# ----------------------------------------------------------------- apply path

class ApplyBench:
    def __init__(self, kafka, systems, perf_dir=None):
        self.kafka = kafka
        self.perf_dir = perf_dir
        self.systems = systems
        self.db = {system: SYSTEMS[system][0] for system in systems}
        self.base = base = BASE_DIR / uuid.uuid4().hex[:6]
        # Each system has its own two clusters: a logical decoder reads all of its
        # cluster's WAL, so in shared clusters each system's decoder would also
        # read (and pay for) the other systems' writes.
        dbs = list(self.db.values())
        # Debezium's connectors speak JDBC: TCP on loopback (trust, as the sockets)
        conf = {db: dict(SERVER_CONF, listen_addresses="127.0.0.1") if db.startswith("dbz") else SERVER_CONF
                for db in dbs}
        self.src = {db: PgCluster(f"src-{db}", extra_conf=conf[db], base_dir=base) for db in dbs}
        self.dst = {db: PgCluster(f"dst-{db}", extra_conf=conf[db], base_dir=base) for db in dbs}
        for db in dbs:
            for c in (self.src[db], self.dst[db]):
                c.start()
                c.create_database(db)
                c.sql(TABLE, dbname=db)
        self.src["native"].sql("CREATE PUBLICATION native_pub FOR TABLE bench_t", dbname="native")
        self.dst["native"].sql(f"CREATE SUBSCRIPTION native_sub CONNECTION '{self.src['native'].dsn('native')}' "
                               "PUBLICATION native_pub WITH (copy_data = false)", dbname="native")
        self.sidecars = {}
        for system in systems:
            if system != "native" and system not in DEBEZIUM_SYSTEMS:
                self.sidecars[system] = self.start_kafka_sync(self.db[system], SYSTEMS[system][1])
        self.connect = None  # the Connect worker of the Debezium systems
        self.dbz_topics = {}
        if any(system in DEBEZIUM_SYSTEMS for system in systems):
            self.connect = dbz.ConnectWorker(kafka.bootstrap, base / "connect").start()
            for system in systems:
                if system in DEBEZIUM_SYSTEMS:
                    self.start_debezium(system)
        self.next_id = {db: 0 for db in dbs}  # S3 updates ids 0 .. U-1 of its own database
        self.update_tag = 0
        self.watch = {db: Conn(self.dst[db], db) for db in dbs}
        self.src_watch = {db: Conn(self.src[db], db) for db in dbs}
        self.meters = {"native": CpuMeter(self.native_apply_pids)}
        for system in systems:  # the source side: what decodes the source's WAL for that system
            self.meters[system + ":source"] = CpuMeter(lambda s=system: self.source_pids(s))
        for system, sidecar in self.sidecars.items():
            self.meters[system] = CpuMeter(lambda s=system: [self.sidecars[s].proc.pid] + self.sidecar_backend_pids(s))
            self.meters[system + ":sidecar"] = CpuMeter(lambda s=system: [self.sidecars[s].proc.pid])
        for system in self.dbz_topics:
            self.meters[system] = CpuMeter(lambda s=system: [self.connect.pid] + self.dbz_sink_backend_pids(s))
            self.meters[system + ":connect"] = CpuMeter(lambda: [self.connect.pid])
        broker_pids = [n.pid for n in getattr(kafka, "nodes", []) if n.pid]  # the local broker's JVMs
        for system in systems:
            if system != "native" and broker_pids:
                self.meters[system + ":broker"] = CpuMeter(lambda: broker_pids)

    def start_kafka_sync(self, db, node_config):
        """A node on src[db] (its own topic), a subscription on dst[db] and its sidecar."""
        prefix = "bench" + uuid.uuid4().hex[:8]
        src, dst = self.src[db], self.dst[db]
        for c in (src, dst):
            c.sql("CREATE EXTENSION kafka_sync", dbname=db)
        src.sql("CREATE PUBLICATION kafka_sync FOR TABLE bench_t", dbname=db)
        src.sql("SELECT kafka_sync.create_node('src', %s, topic_prefix => %s, snapshot => false, "
                "kafka_config => %s)", (self.kafka.bootstrap, prefix, json.dumps(node_config or {})), dbname=db)
        wait_until(lambda: src.sql("SELECT state FROM kafka_sync.node_status", dbname=db)[0][0]
                   == "streaming", 60, "source node streaming", 0.1)
        dst.sql("SELECT kafka_sync.create_subscription('from_src', 'src', %s, topic_prefix => %s, "
                "tables => ARRAY['bench_t']::regclass[])",
                (self.kafka.bootstrap, prefix), dbname=db)
        return Sidecar(dst.dsn(db), dst.dir / "sidecar.log").start()

    def start_debezium(self, system):
        """The seed's pipeline src[db] -> dst[db]: a publication of the bench's table, the source
        connector (it creates its slot), the topic, the sink; then a row through it."""
        db = self.db[system]
        src, dst = self.src[db], self.dst[db]
        src.sql("CREATE PUBLICATION dbz_publication FOR TABLE bench_t", dbname=db)
        prefix = "dbserver_" + db
        topic = self.dbz_topics[system] = f"{prefix}.public.bench_t"
        self.kafka.create_topic(topic)
        self.connect.create(f"{db}_source", dbz.source_config("127.0.0.1", src.port, db, prefix))
        self.connect.create(f"{db}_sink", dbz.sink_config(topic, "127.0.0.1", dst.port, db,
                                                          batch_size=SYSTEMS[system][1].get("batch.size")))
        # The pipeline is up when a row gets through (the source's snapshot of the empty table
        # done, the sink's consumer in its group). Its id lies above any a scenario writes (S3
        # updates ids < U, the others read id ranges) and stays. (Its JVM's warm-up: warm_up.)
        warm = WARMUP_ID
        src.sql("INSERT INTO bench_t VALUES (%s, 'warm-up', 0)", (warm,), dbname=db)
        wait_until(lambda: dst.sql("SELECT 1 FROM bench_t WHERE id = %s", (warm,), dbname=db), 120,
                   f"{system}: a row through the pipeline", 0.05, lambda: self.diagnostics(system))

    def warm_up(self, system, args):
        """The scenarios once at a quarter of their sizes (S4 for at most 5 s), not measured, before
        the measured runs: a running deployment's JVMs (the broker, Debezium's Connect worker)
        have their code compiled; a fresh one compiles it while it first runs it, and on 2 cores
        that takes the measured scenarios' CPU: a fresh broker spent half of its CPU in its JIT
        compiler threads in a 100,000-row S2 (2,735 compilations), charged to whichever system
        ran first. The same paths as the measured runs, so the same code is compiled."""
        perf_dir, self.perf_dir = self.perf_dir, None  # --perf profiles the measured runs only
        try:
            self.s1_catch_up(system, max(1, args.txns // 4))
            self.s2_big_insert(system, max(1, args.rows // 4))
            # S3 updates ids 0 .. n-1: at most the rows written so far
            self.s3_big_update(system, max(1, min(args.update_rows // 4, self.next_id[self.db[system]])))
            self.s4_latency(system, args.rate, min(args.seconds, 5.0))
        finally:
            self.perf_dir = perf_dir

    def settle(self, idle=0.05, timeout=120):
        """Until the JVMs (the local broker, the Connect worker) are idle after the warm-up: their
        JIT compilers work through their queues for a while after the load (one C2 thread on 2
        cores). Idle: each below `idle` CPU seconds per second over a second; at most `timeout`."""
        pids = [n.pid for n in getattr(self.kafka, "nodes", []) if n.pid] + ([self.connect.pid] if self.connect else [])
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            before = {p: cpu_seconds(p) or 0.0 for p in pids}
            time.sleep(1.0)
            if all((cpu_seconds(p) or 0.0) - before[p] < idle for p in pids):
                return
        if pids:
            print(f"  (the JVMs were still busy after {timeout} s; measuring anyway)", flush=True)

    # -- processes

    def native_apply_pids(self):
        return [r[0] for r in self.watch["native"].all(
            "SELECT pid FROM pg_stat_subscription WHERE subname = 'native_sub' AND pid IS NOT NULL")]

    def source_pids(self, system):
        """The source-side process of the system on its src cluster: kafka_sync's producer worker
        (it decodes in process and produces); native's and Debezium's walsender (pgoutput), the
        only walsenders there."""
        db = self.db[system]
        if system == "native" or system in DEBEZIUM_SYSTEMS:
            q = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender'"
        else:
            q = "SELECT worker_pid FROM kafka_sync.node_status WHERE worker_pid IS NOT NULL"
        return [r[0] for r in self.src_watch[db].all(q)]

    def sidecar_backend_pids(self, system):
        return [r[0] for r in self.watch[self.db[system]].all(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", (SIDECAR_APP,))]

    def dbz_sink_backend_pids(self, system):
        return [r[0] for r in self.watch[self.db[system]].all(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (dbz.SINK_APP,))]

    def topic_end(self, topic):
        """The end offset of the topic's only partition."""
        from confluent_kafka import Consumer, TopicPartition
        if getattr(self, "_offsets", None) is None:
            self._offsets = Consumer({"bootstrap.servers": self.kafka.bootstrap, "group.id": "bench_offsets",
                                      "enable.auto.commit": False, "log_level": 0})
        return self._offsets.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]

    def sidecar_peak_rss_mb(self):
        """{system: MB}: the sidecars', and the Connect worker's for the Debezium systems (one JVM)."""
        out = {system: peak_rss_mb(sidecar.proc.pid) for system, sidecar in self.sidecars.items()}
        for system in self.dbz_topics:
            out[system] = peak_rss_mb(self.connect.pid)
        return out

    def diagnostics(self, system="kafka_sync"):
        db = self.db[system]
        sidecar = self.sidecars.get(system)
        return ((f"--- sidecar log ---\n{sidecar.log_text()[-3000:]}\n" if sidecar else "")
                + (f"--- Connect worker ({self.connect.log_path}) ---\n{self.connect.log_tail(30)[-4000:]}\n"
                   if system in DEBEZIUM_SYSTEMS and self.connect else "")
                + f"--- dst log ---\n{self.dst[db].log_text()[-2000:]}\n"
                f"--- src log ---\n{self.src[db].log_text()[-2000:]}")

    # -- target-side checks on a persistent connection

    def has_row(self, db, row_id):
        return self.watch[db].one("SELECT 1 FROM bench_t WHERE id = %s", (row_id,)) is not None

    def count_range(self, db, lo, hi):
        return self.watch[db].one("SELECT count(*) FROM bench_t WHERE id BETWEEN %s AND %s", (lo, hi))[0]

    def wait_rows(self, db, lo, hi, what):
        """Until ids lo..hi are all on the target: the cheap check first (the last id; both systems
        apply in commit order), then the count to be sure."""
        system = next(s for s, d in self.db.items() if d == db)
        wait_until(lambda: self.has_row(db, hi), 900, what, diagnostics=lambda: self.diagnostics(system))
        return wait_until(lambda: self.count_range(db, lo, hi) == hi - lo + 1, 300, what, 0.05,
                          diagnostics=lambda: self.diagnostics(system))

    def measured(self, system, scenario, fn, source_started=False):
        """fn() -> (rows, seconds, rate); adds the CPU seconds per 100k rows of the apply side
        and of the source side (the source meter: started by the caller when source_started,
        S1 starts it before writing its load; else here, fn writes the load).
        With --perf DIR, the whole machine is profiled meanwhile (perf record -a -g) into
        DIR/<scenario>-<system>.data: read it with perf report --sort comm,dso,sym."""
        extra = [k for k in (":sidecar", ":connect", ":broker", ":source") if system + k in self.meters]
        meters = [self.meters[system]] + [self.meters[system + k] for k in extra]
        perf = None
        if self.perf_dir:
            out = Path(self.perf_dir) / f"{scenario}-{system}.data"
            perf = subprocess.Popen(["perf", "record", "-a", "-g", "-q", "-o", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        for m in meters:
            if not (source_started and m is self.meters[system + ":source"]):
                m.start()
        try:
            rows, secs = fn()
        finally:
            if perf:
                perf.send_signal(2)
                perf.wait()
        used = [m.stop() for m in meters]
        out = {"rate": rows / secs, "seconds": secs, "rows": rows, "apply_cpu_per_100k": used[0] * 1e5 / rows}
        for k, u in zip(extra, used[1:]):
            out[f"{k[1:]}_cpu_per_100k"] = u * 1e5 / rows
        return out

    # -- scenarios

    def s1_catch_up(self, system, n):
        db = self.db[system]
        if system == "native":
            self.dst[db].sql("ALTER SUBSCRIPTION native_sub DISABLE", dbname=db)
            wait_until(lambda: not self.native_apply_pids(), 30, "native apply worker stopped", 0.05)
        elif system in DEBEZIUM_SYSTEMS:  # the sink paused (REST), the source goes on into Kafka
            self.connect.pause(f"{db}_sink")
            end0 = self.topic_end(self.dbz_topics[system])
        else:
            runner_seen = bool(self.sidecar_backend_pids_of_runner(system))
            self.dst[db].sql("SELECT kafka_sync.pause_subscription('from_src')", dbname=db)
            if runner_seen:  # the runner's connection closes when it has stopped
                wait_until(lambda: not self.sidecar_backend_pids_of_runner(system), 30, "sidecar runner stopped",
                           0.05, diagnostics=lambda: self.diagnostics(system))
            else:  # a sidecar that names its connections otherwise: give it time to notice
                time.sleep(2)
            acked0 = self.acked(system)
        # the source side works while the load is written (kafka_sync, Debezium) or after the
        # ENABLE (native): metered from here until the target has every row
        self.meters[system + ":source"].start()
        lo = self.next_id[db]
        self.next_id[db] = write_load(self.src[db], db, lo, n, big_txn=False)
        if system in DEBEZIUM_SYSTEMS:  # S1 measures the apply side: the records wait in Kafka
            wait_until(lambda: self.topic_end(self.dbz_topics[system]) >= end0 + n, 900, "source produced", 0.1,
                       lambda: self.diagnostics(system))
        elif system != "native":
            wait_until(lambda: self.acked(system) >= acked0 + n, 900, "source produced", 0.1,
                       lambda: self.diagnostics(system))

        def catch_up():
            t0 = time.monotonic()
            if system == "native":
                self.dst[db].sql("ALTER SUBSCRIPTION native_sub ENABLE", dbname=db)
            elif system in DEBEZIUM_SYSTEMS:
                self.connect.resume(f"{db}_sink")
            else:
                self.dst[db].sql("SELECT kafka_sync.resume_subscription('from_src')", dbname=db)
            return n, self.wait_rows(db, lo, self.next_id[db] - 1, f"{system} S1 caught up") - t0
        return self.measured(system, "S1", catch_up, source_started=True)

    def sidecar_backend_pids_of_runner(self, system):
        return [r[0] for r in self.watch[self.db[system]].all(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'kafka_sync_sidecar from_src'")]

    def acked(self, system):
        db = self.db[system]
        rows = self.src[db].sql("SELECT coalesce(records_acknowledged, 0), state FROM kafka_sync.node_status", dbname=db)
        return rows[0][0] if rows and rows[0][1] == "streaming" else 0

    def s2_big_insert(self, system, n):
        db = self.db[system]

        def run():
            lo = self.next_id[db]
            self.next_id[db] = write_load(self.src[db], db, lo, n, big_txn=True)
            t_commit = time.monotonic()
            return n, self.wait_rows(db, lo, self.next_id[db] - 1, f"{system} S2 visible") - t_commit
        return self.measured(system, "S2", run)

    def s3_big_update(self, system, n):
        db = self.db[system]
        self.update_tag -= 1
        tag = self.update_tag

        def updated(row_id):
            r = self.watch[db].one("SELECT n FROM bench_t WHERE id = %s", (row_id,))
            return r is not None and r[0] == tag

        def all_updated():
            return self.watch[db].one("SELECT count(*) FROM bench_t WHERE id < %s AND n = %s", (n, tag))[0] == n

        def run():
            self.src[db].sql("UPDATE bench_t SET n = %s WHERE id < %s", (tag, n), dbname=db)
            t_commit = time.monotonic()
            changed = self.src[db].sql("SELECT count(*) FROM bench_t WHERE id < %s AND n = %s", (n, tag), dbname=db)[0][0]
            if changed != n:
                raise RuntimeError(f"S3 updated {changed} rows, not {n}")
            wait_until(lambda: updated(n - 1), 900, f"{system} S3 visible",
                       diagnostics=lambda: self.diagnostics(system))
            return n, wait_until(all_updated, 300, f"{system} S3 complete", 0.05,
                                 lambda: self.diagnostics(system)) - t_commit
        return self.measured(system, "S3", run)

    def s4_latency(self, system, rate, seconds):
        db = self.db[system]
        n = int(rate * seconds)
        lo = self.next_id[db]
        hi = lo + n - 1
        self.next_id[db] = hi + 1
        seen = {}
        done = threading.Event()

        def poll():
            conn = Conn(self.dst[db], db)
            try:
                low = lo
                deadline = None
                while low <= hi:
                    t = time.time()
                    before = len(seen)
                    for (row_id,) in conn.all("SELECT id FROM bench_t WHERE id BETWEEN %s AND %s", (low, hi)):
                        seen.setdefault(row_id, t)
                    while low in seen:
                        low += 1
                    if done.is_set():
                        # gives up 120 s after the last row that arrived (a system that falls
                        # behind, as Debezium's batch.size 1 sink, may still be draining)
                        if deadline is None or len(seen) > before:
                            deadline = time.monotonic() + 120
                        if time.monotonic() > deadline:
                            break
                    time.sleep(0.002)
            finally:
                conn.close()

        poller = threading.Thread(target=poll)
        poller.start()
        t0 = time.monotonic()
        try:
            # paced in the server: transaction i waits for its slot t_start + i/rate
            self.src[db].sql(f"""DO $$ DECLARE t_start timestamptz := clock_timestamp(); BEGIN
                FOR i IN 0 .. {n - 1} LOOP
                    PERFORM pg_sleep(greatest(0, extract(epoch FROM
                        t_start + make_interval(secs => i / {float(rate)}) - clock_timestamp())));
                    INSERT INTO bench_t VALUES ({lo} + i, md5(i::text), i % 1000); COMMIT;
                END LOOP; END $$""", dbname=db)
            write_secs = time.monotonic() - t0
        finally:
            done.set()
            poller.join()
        if len(seen) < n:
            raise TimeoutError(f"{system} S4: {n - len(seen)} of {n} rows never arrived\n{self.diagnostics(system)}")
        commits = self.src[db].sql("SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 "
                               "FROM bench_t WHERE id BETWEEN %s AND %s ORDER BY id", (lo, hi), dbname=db)
        t_first = commits[0][1]
        window = min(10.0, seconds / 3)
        lat = [(c - t_first, (seen[i] - c) * 1000) for i, c in commits]
        all_ms = sorted(ms for _, ms in lat)
        first = [ms for t, ms in lat if t < window]
        last = [ms for t, ms in lat if t >= (commits[-1][1] - t_first) - window]
        # how fast the latency grows while the load is written (seconds per second): about 0 for a
        # system that keeps up, write rate / apply rate - 1 for one that applies slower than the
        # writer writes (its backlog, and each row's wait, grow linearly). Least squares over every
        # transaction: one late row barely moves it (apply batches every P s: a bias of ~-(P/D)^2)
        growth = slope([t for t, _ in lat], [ms / 1000 for _, ms in lat])
        write_rate = n / write_secs
        apply_rate = write_rate / (1 + growth) if growth is not None and growth > -1 else None
        return {"p50_ms": percentile(all_ms, 50), "p99_ms": percentile(all_ms, 99), "max_ms": all_ms[-1],
                "p50_first_ms": percentile(sorted(first), 50), "p50_last_ms": percentile(sorted(last), 50),
                "p99_last_ms": percentile(sorted(last), 99),
                "window_s": window, "txns": n, "write_rate": write_rate,
                "latency_growth_ms_per_s": None if growth is None else growth * 1000, "apply_rate": apply_rate,
                "apply_ratio": apply_rate / write_rate if apply_rate else None,
                "drain_s": max(seen.values()) - commits[-1][1]}

    def close(self):
        try:
            for c in (*self.watch.values(), *self.src_watch.values()):
                c.close()
            for sidecar in self.sidecars.values():
                sidecar.stop()
            if self.connect:
                self.connect.stop()
                shutil.rmtree(self.connect.dir, ignore_errors=True)
            if getattr(self, "_offsets", None) is not None:
                self._offsets.close()
            self.dst["native"].sql("DROP SUBSCRIPTION native_sub", dbname="native")
        finally:
            for c in (*self.src.values(), *self.dst.values()):
                c.destroy()
            remove_if_empty(self.base)


def describe_kafka(kafka):
    """Which Kafka the run used, for the table and the JSON."""
    if getattr(kafka, "is_local_broker", False):
        n = len(kafka.nodes)
        return f"Apache Kafka {KAFKA_VERSION} (local, KRaft, {n} broker{'s' if n > 1 else ''} at {kafka.bootstrap})"
    return f"external: {kafka.bootstrap}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="reduced sizes for CI: 2,000 txns, 5,000 rows, 5,000 updated rows, 3 s of S4, 1 repeat, "
                         "the curve at 1,000 and 5,000 txn/s for 5 s each")
    ap.add_argument("--repeat", type=int, help="runs per scenario (default 3, --quick 1)")
    ap.add_argument("--txns", type=int, help="single-row transactions of S1 and the source path (100,000)")
    ap.add_argument("--rows", type=int, help="rows of the big INSERT of S2 and the source path (200,000)")
    ap.add_argument("--update-rows", type=int, help="rows of the UPDATE of S3 (100,000)")
    ap.add_argument("--seconds", type=float, help="duration of S4 (30)")
    ap.add_argument("--rate", type=int, default=1000, help="transactions per second of S4 (1,000)")
    ap.add_argument("--curve-rates", metavar="R1,R2,...",
                    help="offered rates (txn/s) of the latency-against-rate curve (1000,5000,10000,20000; "
                         "--quick 1000,5000)")
    ap.add_argument("--curve-seconds", type=float,
                    help="duration of each rate of the curve (20; --quick 5)")
    ap.add_argument("--no-curve", action="store_true", help="leave out the latency-against-rate curve")
    ap.add_argument("--perf", metavar="DIR", help="profile S1-S3 with perf record -a -g into DIR (development)")
    ap.add_argument("--skip-source", action="store_true", help="only the apply path")
    ap.add_argument("--defaults-only", action="store_true",
                    help="leave out the extra, non-default kafka_sync columns (schemas off, streaming)")
    ap.add_argument("--no-debezium", action="store_true",
                    help="leave out the seed's pipeline (the two Debezium columns; development)")
    ap.add_argument("--json", help="output file (default test/bench/results/bench-<timestamp>.json)")
    args = ap.parse_args()
    # the curve runs once per rate unless --repeat is given
    curve_repeat = args.repeat or 1
    if args.curve_rates is None:
        args.curve_rates = "1000,5000" if args.quick else "1000,5000,10000,20000"
    try:
        args.curve_rates = [] if args.no_curve else sorted({int(r) for r in args.curve_rates.split(",") if r.strip()})
    except ValueError:
        ap.error("--curve-rates: comma-separated integers (txn/s)")
    if any(r <= 0 for r in args.curve_rates):
        ap.error("--curve-rates: rates must be positive")
    if args.curve_seconds is None:
        args.curve_seconds = 5.0 if args.quick else 20.0
    defaults = (1, 2000, 5000, 5000, 3.0) if args.quick else (3, 100000, 200000, 100000, 30.0)
    for name, d in zip(("repeat", "txns", "rows", "update_rows", "seconds"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, d)
    if args.update_rows > args.txns + args.rows:
        ap.error("--update-rows must not exceed --txns + --rows (S3 updates rows S1 and S2 wrote)")

    started = datetime.now()
    scenarios = ("source_big", "source_small", "S1", "S2", "S3", "S4")
    systems = ["native", "kafka_sync"] + ([] if args.defaults_only else ["kafka_sync_schemas_off"])
    source_systems = systems[1:]  # the source path measures kafka_sync's producer against pgoutput
    if not args.defaults_only:
        systems.append("kafka_sync_streaming")  # the source path measures from the commit: nothing to stream
    if not args.no_debezium:
        systems += list(DEBEZIUM_SYSTEMS)
        dbz.fetch()  # before the broker starts: a first run downloads them
    ks_systems = systems[1:]
    runs = {s: {system: [] for system in systems} for s in scenarios}
    curve_systems = [system for system in CURVE_SYSTEMS if system in systems]
    curve_runs = {rate: {system: [] for system in curve_systems} for rate in args.curve_rates}
    kafka = kafka_for_tests()
    broker = describe_kafka(kafka)
    print(f"Kafka: {broker}", flush=True)
    peak_rss = None
    try:
        if not args.skip_source:
            for system in source_systems:
                print(f"source path, {system} ...", flush=True)
                src = SourceBench(kafka, SYSTEMS[system][1])
                try:
                    for i in range(args.repeat):
                        for scenario, n, big in (("source_big", args.rows, True), ("source_small", args.txns, False)):
                            nat, ks = src.run(n, big)
                            # native: pgoutput on the default node's cluster; beside the others, kept in the JSON
                            if system == "kafka_sync":
                                runs[scenario]["native"].append({"rate": nat})
                            runs[scenario][system].append({"rate": ks, "pgoutput_rate": nat})
                            print(f"  run {i + 1} {scenario}: pgoutput {nat:,.0f}/s, {system} {ks:,.0f}/s", flush=True)
                finally:
                    src.close()
        print("apply path ...", flush=True)
        app = ApplyBench(kafka, systems, args.perf)
        try:
            print("warm-up round (not measured) ...", flush=True)
            for system in systems:
                app.warm_up(system, args)
            app.settle()
            for i in range(args.repeat):
                for system in systems:
                    for scenario, fn in (("S1", lambda: app.s1_catch_up(system, args.txns)),
                                         ("S2", lambda: app.s2_big_insert(system, args.rows)),
                                         ("S3", lambda: app.s3_big_update(system, args.update_rows)),
                                         ("S4", lambda: app.s4_latency(system, args.rate, args.seconds))):
                        r = fn()
                        runs[scenario][system].append(r)
                        shown = f"p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms" if scenario == "S4" \
                            else f"{r['rate']:,.0f}/s"
                        print(f"  run {i + 1} {scenario} {system}: {shown}", flush=True)
            if args.curve_rates:
                print(f"latency against rate ({args.curve_seconds:g} s per rate) ...", flush=True)
            for i in range(curve_repeat if args.curve_rates else 0):
                for rate in args.curve_rates:  # the rates interleaved over the systems (noise)
                    for system in curve_systems:
                        r = dict(app.s4_latency(system, rate, args.curve_seconds), offered_rate=rate)
                        curve_runs[rate][system].append(r)
                        print(f"  run {i + 1} {rate:,} txn/s {system}: written {r['write_rate']:,.0f}/s, applied "
                              f"{r['apply_rate'] or 0:,.0f}/s, p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms",
                              flush=True)
            peak_rss = app.sidecar_peak_rss_mb()
        finally:
            app.close()
    finally:
        kafka.stop()

    columns = [(system, SYSTEMS[system][2]) for system in systems]
    table = build_table(args, runs, peak_rss, systems)
    print_table(table, broker, columns, ([] if args.defaults_only else [EXTRA_NOTE])
                + ([] if args.no_debezium else [DEBEZIUM_NOTE]))
    curve_points, curve_stops = build_curve(curve_runs, curve_systems)
    if curve_points:
        print_curve(curve_points, curve_stops, [c for c in columns if c[0] in curve_systems],
                    args.curve_seconds, curve_repeat)
    out = Path(args.json) if args.json else HERE / "results" / f"bench-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump({"started": started.isoformat(timespec="seconds"), "kafka": broker,
                   "machine": machine_info(broker),
                   "settings": dict({k: getattr(args, k) for k in ("repeat", "txns", "rows", "update_rows",
                                                                    "seconds", "rate", "quick", "curve_rates",
                                                                    "curve_seconds")},
                                    curve_repeat=curve_repeat),
                   "systems": {system: ({"node_kafka_config": SYSTEMS[system][1] or {},
                                         "defaults": SYSTEMS[system][1] is None}
                                        if system not in DEBEZIUM_SYSTEMS else
                                        {"pipeline": DEBEZIUM_NOTE,
                                         "source_connector": dbz.source_config("HOST", "PORT", "DB", "PREFIX"),
                                         "sink_connector": dbz.sink_config(
                                             "TOPIC", "HOST", "PORT", "DB",
                                             batch_size=SYSTEMS[system][1].get("batch.size"))})
                               for system in systems if system != "native"},
                   "medians": [dict({"scenario": n}, **values,
                                    **{f"ratio_{s}" if s != "kafka_sync" else "ratio":
                                       (values[s] / values["native"]
                                        if values["native"] and values[s] is not None else None)
                                       for s in ks_systems})
                               for n, values, _ in table],
                   "runs": runs,
                   # the latency-against-rate curve: its medians per (offered rate, system), the rate
                   # where each system stops keeping up, and every run
                   "curve": {"seconds": args.curve_seconds, "repeat": curve_repeat, "systems": curve_systems,
                             "keeps_up": f"apply_rate >= {KEEPS_UP} * write_rate, "
                                         "apply_rate = write_rate / (1 + latency growth)",
                             "medians": curve_points, "stops_keeping_up": curve_stops,
                             "runs": [dict(r, system=system) for rate in args.curve_rates for system in curve_systems
                                      for r in curve_runs[rate][system]]}},
                  f, indent=2)
    print(f"\n(main table: medians of {args.repeat} run(s); ratio = that column / native: above 1 is better for rates, "
          f"worse for latency, CPU; JSON in {out})")


if __name__ == "__main__":
    main()
