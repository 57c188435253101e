#!/usr/bin/python3
"""Apply-path benchmark: kafka_sync beside PostgreSQL's native logical
replication, between the same two clusters, in one run.

  S1 catch-up: N single-row INSERT transactions written while the native
     subscription is disabled / the kafka_sync subscription is paused; then
     the time until the target has them all -> txn/s.
  S2 one M-row INSERT transaction, from its commit until every row is
     visible on the target -> rows/s.

Each scenario runs --repeat times; medians are reported. Ratios matter, not
absolute figures: the machine is shared. JSON goes to --json.

Usage: /usr/bin/python3 test/bench/apply_bench.py [--txns 100000] [--rows 200000] [--repeat 3]
       (KAFKA_BROKERS=host:port for a real Kafka)

librdkafka's mock cluster keeps only the last 5 MB of a partition: the node
compresses its records with zstd (level 12) so that 100,000 waiting records
(S1) and a producer running ahead of the sidecar (S2) fit.
"""

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pytest"))

from apply_env import SERVER_CONF, Sidecar  # noqa: E402
from kafka_env import kafka_for_tests  # noqa: E402
from pg_env import PgCluster  # noqa: E402

TABLE = "CREATE TABLE bench_t (id bigint PRIMARY KEY, payload text, n int)"
NODE_KAFKA_CONFIG = '{"kafka_sync.schemas": false, "compression.type": "zstd", "compression.level": 12}'


def wait_until(fn, timeout, what, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


class Bench:
    def __init__(self):
        self.kafka = kafka_for_tests()
        base = Path(os.environ.get("KAFKA_SYNC_BENCH_DIR", "/tmp/kafka_sync_bench")) / uuid.uuid4().hex[:6]
        # wal_retrieve_retry_interval: a re-enabled native subscription restarts its
        # apply worker at once instead of up to 5 s later
        conf = dict(SERVER_CONF, max_wal_size="4GB", shared_buffers="256MB", synchronous_commit="off",
                    wal_retrieve_retry_interval="100ms")
        self.src = PgCluster("src", extra_conf=conf, base_dir=base)
        self.dst = PgCluster("dst", extra_conf=conf, base_dir=base)
        for c in (self.src, self.dst):
            c.start()
            c.create_database("native")
            c.create_database("ks")
            c.sql(TABLE, dbname="native")
            c.sql(TABLE, dbname="ks")
        # native logical replication
        self.src.sql("CREATE PUBLICATION native_pub FOR TABLE bench_t", dbname="native")
        self.dst.sql(f"CREATE SUBSCRIPTION native_sub CONNECTION '{self.src.dsn('native')}' "
                     "PUBLICATION native_pub WITH (copy_data = false)", dbname="native")
        # kafka_sync
        prefix = "bench" + uuid.uuid4().hex[:8]
        self.kafka.create_topic(f"{prefix}.src")
        for c in (self.src, self.dst):
            c.sql("CREATE EXTENSION kafka_sync", dbname="ks")
        self.src.sql("CREATE PUBLICATION kafka_sync FOR TABLE bench_t", dbname="ks")
        # payload-only, zstd-compressed records: the mock cluster keeps only 5 MB per partition
        self.src.sql("SELECT kafka_sync.create_node('src', %s, topic_prefix => %s, snapshot => false, "
                     "kafka_config => %s)",
                     (self.kafka.bootstrap, prefix, NODE_KAFKA_CONFIG), dbname="ks")
        wait_until(lambda: self.src.sql("SELECT state FROM kafka_sync.node_status", dbname="ks")[0][0] == "streaming",
                   60, "source node streaming", interval=0.1)
        self.dst.sql("SELECT kafka_sync.create_subscription('from_src', 'src', %s, topic_prefix => %s)",
                     (self.kafka.bootstrap, prefix), dbname="ks")
        self.sidecar = Sidecar(self.dst.dsn("ks"), self.dst.dir / "sidecar.log").start()
        self.next_id = 0

    def count(self, db):
        return self.dst.sql("SELECT count(*) FROM bench_t", dbname=db)[0][0]

    def write_small_txns(self, db, n):
        start, self.next_id = self.next_id, self.next_id + n
        self.src.sql(f"""DO $$ BEGIN
            FOR i IN {start} .. {start + n - 1} LOOP
                INSERT INTO bench_t VALUES (i, md5(i::text), i % 1000); COMMIT;
            END LOOP; END $$""", dbname=db)

    def write_big_txn(self, db, n):
        start, self.next_id = self.next_id, self.next_id + n
        self.src.sql("INSERT INTO bench_t SELECT g, md5(g::text), g %% 1000 FROM generate_series(%s, %s) g",
                     (start, start + n - 1), dbname=db)

    def s1(self, system, n):
        db = "native" if system == "native" else "ks"
        expected = self.count(db) + n
        if system == "native":
            self.dst.sql("ALTER SUBSCRIPTION native_sub DISABLE", dbname=db)
        else:
            self.dst.sql("SELECT kafka_sync.pause_subscription('from_src')", dbname=db)
        self.write_small_txns(db, n)
        if system == "kafka_sync":  # the source side is not what S1 measures: let it finish
            wait_until(lambda: self.src.sql("SELECT records_acknowledged FROM kafka_sync.node_status",
                                            dbname=db)[0][0] >= n, 600, "source produced", interval=0.1)
        t0 = time.monotonic()
        if system == "native":
            self.dst.sql("ALTER SUBSCRIPTION native_sub ENABLE", dbname=db)
        else:
            self.dst.sql("SELECT kafka_sync.resume_subscription('from_src')", dbname=db)
        t1 = wait_until(lambda: self.count(db) >= expected, 900, f"{system} S1 caught up")
        return n / (t1 - t0)

    def s2(self, system, n):
        db = "native" if system == "native" else "ks"
        expected = self.count(db) + n
        t0 = time.monotonic()
        self.write_big_txn(db, n)
        t_commit = time.monotonic()
        t1 = wait_until(lambda: self.count(db) >= expected, 900, f"{system} S2 visible")
        return n / (t1 - t_commit), t_commit - t0

    def close(self):
        self.sidecar.stop()
        self.dst.sql("DROP SUBSCRIPTION native_sub", dbname="native")
        for c in (self.src, self.dst):
            c.destroy()
        self.kafka.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--txns", type=int, default=100000)
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=str(HERE / "results" / "apply_bench.json"))
    args = ap.parse_args()

    bench = Bench()
    results = {"S1 catch-up, txn/s": {"native": [], "kafka_sync": []},
               "S2 one big transaction, rows/s": {"native": [], "kafka_sync": []}}
    try:
        for _ in range(args.repeat):
            for system in ("native", "kafka_sync"):
                results["S1 catch-up, txn/s"][system].append(bench.s1(system, args.txns))
                results["S2 one big transaction, rows/s"][system].append(bench.s2(system, args.rows)[0])
    finally:
        bench.close()

    table = []
    print(f"{'scenario':34} {'native':>10} {'kafka_sync':>11} {'ratio':>6}")
    for name, r in results.items():
        nat, ks = statistics.median(r["native"]), statistics.median(r["kafka_sync"])
        table.append({"scenario": name, "native": round(nat), "kafka_sync": round(ks), "ratio": round(ks / nat, 2)})
        print(f"{name:34} {round(nat):>10} {round(ks):>11} {ks / nat:>6.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"medians": table, "runs": results, "txns": args.txns, "rows": args.rows,
                   "kafka": os.environ.get("KAFKA_BROKERS", "mock")}, f, indent=2)
    print(f"(medians of {args.repeat} runs; {args.txns} transactions, {args.rows} rows; JSON in {args.json})")


if __name__ == "__main__":
    main()
