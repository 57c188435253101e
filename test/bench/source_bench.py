#!/usr/bin/python3
"""Source-path benchmark: kafka_sync's decode + produce rate beside
pg_recvlogical draining the same WAL with pgoutput, in one run.

Both consumers start from the same point and drain the same pre-written WAL:
the node is paused (kafka_sync.pause_node) while the load is written and a
pgoutput slot is created at the same moment, then
  - kafka_sync: resume_node(), time until Kafka acknowledged every record
    (records_acknowledged in kafka_sync.node_status);
  - pgoutput:   pg_recvlogical --endpos=<end of load> -f /dev/null, timed.
Scenarios: one 200k-row transaction; 100k single-row transactions.
Prints a table and writes JSON. Ratios, not absolute numbers, are the
result: the machine is shared and noisy.

Usage: /usr/bin/python3 test/bench/source_bench.py [--rows 200000] [--txns 100000]
       [--repeat 3] [--json out.json]     (KAFKA_BROKERS=host:port for real Kafka)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pytest"))

from kafka_env import kafka_for_tests  # noqa: E402
from pg_env import PgCluster, pg_bindir  # noqa: E402

NODE_CONF = {
    "shared_preload_libraries": "kafka_sync",
    "wal_level": "logical",
    "track_commit_timestamp": "on",
    "output_plugin_libraries": "pgoutput, test_decoding, kafka_sync",
    "max_replication_slots": 10,
    "max_wal_senders": 10,
    "max_worker_processes": 16,
    "max_wal_size": "4GB",
    "shared_buffers": "256MB",
}


def wait_until(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.01)
    raise TimeoutError(f"timed out waiting for {what}")


class Bench:
    def __init__(self, args):
        self.args = args
        self.kafka = kafka_for_tests()
        base = Path(os.environ.get("KAFKA_SYNC_BENCH_DIR", "/tmp/kafka_sync_bench"))
        self.pg = PgCluster("source", extra_conf=NODE_CONF, base_dir=base)
        self.pg.start()
        self.db = "bench"
        self.pg.create_database(self.db)
        prefix = "bench" + uuid.uuid4().hex[:8]
        self.topic = f"{prefix}.src"
        self.kafka.create_topic(self.topic)
        self.sql("CREATE EXTENSION kafka_sync")
        self.sql("CREATE TABLE bench_t (id bigint PRIMARY KEY, payload text, n int)")
        self.sql("CREATE PUBLICATION kafka_sync FOR ALL TABLES")
        self.sql("SELECT kafka_sync.create_node('src', %s, topic_prefix => %s, snapshot => false)",
                 (self.kafka.bootstrap, prefix))
        wait_until(lambda: self.state() == "streaming", 60, "node streaming")
        self.next_id = 0

    def sql(self, q, params=None):
        return self.pg.sql(q, params, dbname=self.db)

    def state(self):
        rows = self.sql("SELECT state FROM kafka_sync.node_status")
        return rows[0][0] if rows else None

    def acked(self):
        rows = self.sql("SELECT coalesce(records_acknowledged, 0), state FROM kafka_sync.node_status")
        return rows[0][0] if rows and rows[0][1] == "streaming" else 0

    def write_big_txn(self, rows):
        start = self.next_id
        self.next_id += rows
        self.sql("INSERT INTO bench_t SELECT g, md5(g::text), g %% 1000 FROM generate_series(%s, %s) g",
                 (start, start + rows - 1))

    def write_small_txns(self, txns):
        start = self.next_id
        self.next_id += txns
        self.sql("""
            DO $$
            BEGIN
                SET LOCAL synchronous_commit = off;
                FOR i IN %s .. %s LOOP
                    INSERT INTO bench_t VALUES (i, md5(i::text), i %% 1000);
                    COMMIT;
                END LOOP;
            END $$""" % (start, start + txns - 1))

    def run_scenario(self, name, nrecords, write):
        self.sql("SELECT kafka_sync.pause_node()")
        wait_until(lambda: self.sql("SELECT worker_pid IS NULL FROM kafka_sync.node_status")[0][0], 30,
                   "worker stopped")
        slot = "bench_pgoutput"
        self.sql("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        write(nrecords)
        end_lsn = self.sql("SELECT pg_current_wal_flush_lsn()")[0][0]

        t0 = time.monotonic()
        self.sql("SELECT kafka_sync.resume_node()")
        wait_until(lambda: self.acked() >= nrecords, 600, f"{nrecords} records acknowledged")
        ks_secs = time.monotonic() - t0

        cmd = [str(pg_bindir() / "pg_recvlogical"), "-h", str(self.pg.socket_dir), "-p", str(self.pg.port),
               "-U", "postgres", "-d", self.db, "--slot", slot, "--start", "--endpos", end_lsn,
               "-o", "proto_version=1", "-o", "publication_names=kafka_sync", "-f", "/dev/null", "--no-loop"]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        pg_secs = time.monotonic() - t0
        self.sql("SELECT pg_drop_replication_slot(%s)", (slot,))
        return {"scenario": name, "records": nrecords, "kafka_sync_s": ks_secs, "pgoutput_s": pg_secs,
                "kafka_sync_per_s": nrecords / ks_secs, "pgoutput_per_s": nrecords / pg_secs}

    def close(self):
        try:
            self.sql("SELECT kafka_sync.drop_node()")
        finally:
            self.pg.destroy()
            self.kafka.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200000, help="rows of the big transaction")
    ap.add_argument("--txns", type=int, default=100000, help="number of single-row transactions")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=str(HERE / "results" / "source_bench.json"))
    args = ap.parse_args()

    bench = Bench(args)
    runs = []
    try:
        for _ in range(args.repeat):
            runs.append(bench.run_scenario(f"one {args.rows}-row transaction", args.rows, bench.write_big_txn))
            runs.append(bench.run_scenario(f"{args.txns} single-row transactions", args.txns, bench.write_small_txns))
    finally:
        bench.close()

    table = []
    for name in dict.fromkeys(r["scenario"] for r in runs):
        rs = [r for r in runs if r["scenario"] == name]
        ks = statistics.median(r["kafka_sync_per_s"] for r in rs)
        pg = statistics.median(r["pgoutput_per_s"] for r in rs)
        table.append({"scenario": name, "pg_recvlogical_pgoutput_records_per_s": round(pg),
                      "kafka_sync_records_per_s": round(ks), "ratio": round(ks / pg, 2), "runs": len(rs)})

    print(f"{'scenario':40} {'pgoutput rec/s':>15} {'kafka_sync rec/s':>17} {'ratio':>6}")
    for row in table:
        print(f"{row['scenario']:40} {row['pg_recvlogical_pgoutput_records_per_s']:>15} "
              f"{row['kafka_sync_records_per_s']:>17} {row['ratio']:>6}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"medians": table, "runs": runs, "kafka": os.environ.get("KAFKA_BROKERS", "mock")}, f, indent=2)
    print(f"(medians of {args.repeat} runs; JSON in {args.json})")


if __name__ == "__main__":
    main()
