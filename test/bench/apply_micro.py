#!/usr/bin/python3
"""The apply functions alone, in one backend: no Kafka, no sidecar, no network.

Prepares N insert records of kafka_sync's own format (as a peer's producer
writes them, payload only) in a table, then times, in one session:
  single  CALL apply_transactions over chunks of 1,000 single-row source
          transactions (one commit per millisecond of source time: S1's shape)
  big     CALL apply_transactions with one N-row source transaction
  chunk   apply_chunk over chunks of 1,000 records inside one transaction
          (how the sidecar applies a big transaction: S2's shape)
and beside it a PL/pgSQL loop inserting the same rows (one commit per row in
"single", one transaction otherwise), as a yardstick of this machine's speed
at the moment: read the ratio, the machine is shared.

Usage: /usr/bin/python3 test/bench/apply_micro.py [--rows N] [--mode single|big|chunk] [--schemas] [--perf FILE]
  --schemas     records with the Kafka Connect schema wrapper, as a node on its
                defaults writes them ({"schema": ..., "payload": ...})
  --perf FILE   perf record -g of the applying backend into FILE
As root, the server runs as the postgres OS user (test/pytest/pg_env.py).
It is a benchmark: it asserts nothing but that every row arrived.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pytest"))

from conftest import NODE_SERVER_CONF  # noqa: E402
from pg_env import PgCluster  # noqa: E402

SETUP = """
CREATE EXTENSION kafka_sync;
CREATE TABLE bench_t (id bigint PRIMARY KEY, payload text, n int);
CREATE TABLE plain_t (id bigint PRIMARY KEY, payload text, n int);
CREATE PUBLICATION kafka_sync FOR ALL TABLES;
SELECT kafka_sync.create_node('dst', 'localhost:1', snapshot => false);
SELECT kafka_sync.create_subscription('from_src', 'src', 'localhost:1');
CREATE FUNCTION hdrs(lsn pg_lsn, ts bigint, txn_end int) RETURNS bytea LANGUAGE sql AS $$
    SELECT int4send(14) || 'kafka_sync.lsn'::bytea || int4send(octet_length(lsn::text)) || convert_to(lsn::text, 'UTF8')
        || int4send(17) || 'kafka_sync.origin'::bytea || int4send(3) || 'src'::bytea
        || int4send(20) || 'kafka_sync.commit_ts'::bytea || int4send(octet_length(ts::text)) || convert_to(ts::text, 'UTF8')
        || CASE WHEN txn_end IS NULL THEN ''::bytea
           ELSE int4send(18) || 'kafka_sync.txn_end'::bytea || int4send(octet_length(txn_end::text))
                || convert_to(txn_end::text, 'UTF8') END
$$
"""

# payload-only records as kafka_sync's producer writes them (schemas off);
# with --schemas wrapped in the Connect schema as its encoder writes it
RECORDS = """
CREATE TABLE recs AS SELECT i AS off,
  convert_to(%(head)s || jsonb_build_object('before', NULL,
      'after', jsonb_build_object('id', i::text, 'payload', md5(i::text), 'n', (i %% 1000)::text),
      'source', jsonb_build_object('version', 'kafka_sync-0.1.0', 'connector', 'kafka_sync', 'name', 'src',
                                   'ts_ms', 1700000000000 + i / 4, 'snapshot', 'false', 'db', 'ks',
                                   'schema', 'public', 'table', 'bench_t', 'txId', 1000 + i, 'lsn', 1000000 + i,
                                   'origin', 'src'),
      'op', 'c', 'ts_ms', 1700000000000 + i / 4,
      'transaction', jsonb_build_object('id', NULL, 'total_order', 1, 'data_collection_order', 1))::text
      || %(tail)s, 'UTF8') AS val,
  CASE WHEN %(single)s THEN hdrs(pg_lsn('0/1000000') + i * 100, 1700000000000 + i / 4, 1)
       ELSE hdrs(pg_lsn('0/2000000'), 1700000000000, CASE WHEN i = %(n)s THEN %(n)s END) END AS hdr
FROM generate_series(1, %(n)s) i
"""


def connect_schema(node, schema, table, columns):
    """The value schema kafka_sync's encoder writes for a table of text columns
    (extension/wire/record_encoder.cpp), members in its order, compact."""
    def field(type_, optional, name):
        return {"type": type_, "optional": optional, "field": name}

    base = f"{node}.{schema}.{table}"

    def row(name):
        return {"type": "struct",
                "fields": [dict(field("string", col != "id", col),
                                parameters={"__debezium.source.column.type": typ}) for col, typ in columns],
                "optional": True, "name": base + ".Value", "field": name}
    source = {"type": "struct", "fields": [
        field("string", False, "version"), field("string", False, "connector"), field("string", False, "name"),
        field("int64", True, "ts_ms"), field("string", True, "snapshot"), field("string", False, "db"),
        field("string", False, "schema"), field("string", False, "table"), field("int64", True, "txId"),
        field("int64", True, "lsn"), field("string", False, "origin"), field("int64", True, "row_ts_ms"),
        field("string", True, "row_origin")], "optional": False, "name": "io.kafka_sync.Source", "field": "source"}
    txn = {"type": "struct", "fields": [field("string", True, "id"), field("int64", False, "total_order"),
                                        field("int64", False, "data_collection_order")],
           "optional": True, "name": "event.block", "field": "transaction"}
    env = {"type": "struct", "fields": [row("before"), row("after"), source, field("string", False, "op"),
                                        field("int64", True, "ts_ms"), txn],
           "optional": False, "name": base + ".Envelope"}
    return json.dumps(env, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--mode", choices=("single", "big", "chunk"), default="chunk")
    ap.add_argument("--schemas", action="store_true",
                    help="records with the Connect schema wrapper (a node's default)")
    ap.add_argument("--perf", help="perf record -g of the applying backend into this file")
    args = ap.parse_args()
    n = args.rows

    cluster = PgCluster(f"apply_micro_{os.getpid()}",
                        extra_conf=dict(NODE_SERVER_CONF, shared_buffers="256MB", log_min_messages="warning"))
    cluster.start()
    try:
        cluster.create_database("ks")
        for stmt in SETUP.split(";\n"):
            if stmt.strip():
                cluster.sql(stmt, dbname="ks")
        head, tail = "", ""
        if args.schemas:
            head = '{"schema":' + connect_schema("src", "public", "bench_t",
                                                 [("id", "int8"), ("payload", "text"), ("n", "int4")]) + ',"payload":'
            tail = "}"
        cluster.sql(RECORDS, {"single": args.mode == "single", "n": n, "head": head, "tail": tail}, dbname="ks")
        per_chunk = n if args.mode == "big" else 1000
        cluster.sql("CREATE TABLE chunks AS SELECT (off - 1) / %s AS lo, array_agg(off::int8 ORDER BY off) offs, "
                    "array_agg(NULL::bytea) keys, array_agg(val ORDER BY off) vals, array_agg(hdr ORDER BY off) hdrs "
                    "FROM recs GROUP BY 1", (per_chunk,), dbname="ks")
        conn = cluster.connect("ks")
        cur = conn.cursor()
        cur.execute("SET synchronous_commit = off")  # as the sidecar's session
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-g", "-q", "-p", str(pid), "-o", args.perf],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)

        t0 = time.monotonic()
        if args.mode == "chunk":
            cur.execute("BEGIN")
            cur.execute("SELECT sum((kafka_sync.apply_chunk('from_src', offs, keys, vals, hdrs, false)).applied) "
                        "FROM (SELECT * FROM public.chunks ORDER BY lo) c")
            cur.execute("COMMIT")
        else:
            cur.execute("""DO $$ DECLARE r record; a int8; s int8; c int8; BEGIN
                FOR r IN SELECT * FROM public.chunks ORDER BY lo LOOP
                    CALL kafka_sync.apply_transactions('from_src', r.offs, r.keys, r.vals, r.hdrs, a, s, c);
                END LOOP; END $$""")
        applied_s = time.monotonic() - t0
        if perf:
            perf.send_signal(2)
            perf.wait()
        rows = cluster.sql("SELECT count(*) FROM bench_t", dbname="ks")[0][0]
        if rows != n:
            raise SystemExit(f"only {rows} of {n} rows were applied")

        commit = "COMMIT;" if args.mode == "single" else ""
        cur.execute(f"""CREATE PROCEDURE public.plain(n int) LANGUAGE plpgsql AS $$ BEGIN
            FOR i IN 1 .. n LOOP
                INSERT INTO public.plain_t VALUES (i, md5(i::text), i % 1000); {commit}
            END LOOP; END $$""")
        t0 = time.monotonic()
        cur.execute("CALL public.plain(%s)", (n,))
        plain_s = time.monotonic() - t0
        print(f"{args.mode}{' schemas' if args.schemas else ''}: {n:,} rows applied in {applied_s:.2f} s ({applied_s / n * 1e6:.1f} us each); "
              f"PL/pgSQL insert loop {plain_s / n * 1e6:.1f} us each; ratio {applied_s / plain_s:.2f}")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
