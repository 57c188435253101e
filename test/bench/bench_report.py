"""The report of test/bench/bench.py: medians over the repeats, one table
(scenario, native, then each kafka_sync system with its ratio to native),
the Kafka and the machine it ran on."""

import os
import platform
import statistics
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def build_table(args, runs, peak_rss, systems):
    """Rows: (scenario, {system: median}, decimals); medians over the repeats.
    peak_rss: {system: MB} of the kafka_sync systems' sidecars (the Debezium systems': their
    Connect worker's, one JVM for both)."""
    def med(scenario, key, apply_only=False):
        return {system: None if apply_only and system == "native"
                else median(r.get(key) for r in runs[scenario][system]) for system in systems}

    T, R, U = f"{args.txns:,}", f"{args.rows:,}", f"{args.update_rows:,}"
    win = f"{min(10.0, args.seconds / 3):g} s"
    rows = [
        (f"source: one {R}-row txn, records/s (native = pgoutput via pg_recvlogical)", med("source_big", "rate"), 0),
        (f"source: {T} single-row txns, records/s (native = pgoutput)", med("source_small", "rate"), 0),
        (f"S1 catch-up of {T} single-row txns, txn/s", med("S1", "rate"), 0),
        (f"S2 one {R}-row INSERT txn, commit to visible, rows/s", med("S2", "rate"), 0),
        (f"S3 one {U}-row UPDATE txn, commit to visible, rows/s", med("S3", "rate"), 0),
        (f"S4 {args.rate:,} txn/s for {args.seconds:g} s: latency p50, ms", med("S4", "p50_ms"), 1),
        ("S4 latency p99, ms", med("S4", "p99_ms"), 1),
        ("S4 latency max, ms", med("S4", "max_ms"), 1),
        (f"S4 latency p50 of the first {win}, ms", med("S4", "p50_first_ms"), 1),
        (f"S4 latency p50 of the last {win}, ms", med("S4", "p50_last_ms"), 1),
        (f"S4 latency p99 of the last {win} (steady state), ms", med("S4", "p99_last_ms"), 1),
        ("S4 achieved write rate, txn/s", med("S4", "write_rate"), 0),
    ]
    for s in ("S1", "S2", "S3"):
        rows.append((f"{s} apply CPU s per 100k rows (native: apply worker; kafka_sync: sidecar + its backends; "
                     "Debezium: Connect worker + sink's backends)", med(s, "apply_cpu_per_100k"), 2))
        rows.append((f"{s} sidecar CPU s per 100k rows", med(s, "sidecar_cpu_per_100k", apply_only=True), 2))
        rows.append((f"{s} Connect worker JVM CPU s per 100k rows (source + sink connectors)",
                     med(s, "connect_cpu_per_100k", apply_only=True), 2))
        rows.append((f"{s} broker CPU s per 100k rows", med(s, "broker_cpu_per_100k", apply_only=True), 2))
    rows.append(("sidecar (Debezium: Connect worker) peak RSS (VmHWM), MB",
                 {system: (peak_rss or {}).get(system) for system in systems}, 1))
    return rows


def print_table(rows, kafka, columns, notes=()):
    """columns: [(system, header)], native first; each other column is followed by its ratio to native."""
    def fmt(v, d):
        return "-" if v is None else f"{v:,.{d}f}"
    width = max(len(r[0]) for r in rows)
    print(f"\nKafka: {kafka}")
    head = f"{'scenario':{width}}  {columns[0][1]:>10}"
    for _, header in columns[1:]:
        head += f"  {header:>12}  {'/native':>7}"
    print(head)
    native = columns[0][0]
    for name, values, d in rows:
        line = f"{name:{width}}  {fmt(values[native], d):>10}"
        for system, _ in columns[1:]:
            v, nat = values[system], values[native]
            ratio = f"{v / nat:.2f}" if nat and v is not None else "-"
            line += f"  {fmt(v, d):>12}  {ratio:>7}"
        print(line)
    for note in notes:
        print(note)


def machine_info(kafka):
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "kafka": kafka}
    try:
        import confluent_kafka
        info["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"],
                                        capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        pass
    try:
        info["os"] = Path("/etc/debian_version").read_text().strip()
    except OSError:
        pass
    return info
