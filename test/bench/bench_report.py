"""The report of test/bench/bench.py: medians over the repeats, one table
(scenario, native, kafka_sync, ratio), the machine it ran on."""

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


def build_table(args, runs, peak_rss):
    """Rows: (scenario, native, kafka_sync, decimals); medians over the repeats."""
    def med(system, scenario, key):
        return median(r[key] for r in runs[scenario][system])

    T, R, U = f"{args.txns:,}", f"{args.rows:,}", f"{args.update_rows:,}"
    win = f"{min(10.0, args.seconds / 3):g} s"
    rows = [
        (f"source: one {R}-row txn, records/s (native = pgoutput via pg_recvlogical)",
         med("native", "source_big", "rate"), med("kafka_sync", "source_big", "rate"), 0),
        (f"source: {T} single-row txns, records/s (native = pgoutput)",
         med("native", "source_small", "rate"), med("kafka_sync", "source_small", "rate"), 0),
        (f"S1 catch-up of {T} single-row txns, txn/s", med("native", "S1", "rate"), med("kafka_sync", "S1", "rate"), 0),
        (f"S2 one {R}-row INSERT txn, commit to visible, rows/s",
         med("native", "S2", "rate"), med("kafka_sync", "S2", "rate"), 0),
        (f"S3 one {U}-row UPDATE txn, commit to visible, rows/s",
         med("native", "S3", "rate"), med("kafka_sync", "S3", "rate"), 0),
        (f"S4 {args.rate:,} txn/s for {args.seconds:g} s: latency p50, ms",
         med("native", "S4", "p50_ms"), med("kafka_sync", "S4", "p50_ms"), 1),
        ("S4 latency p99, ms", med("native", "S4", "p99_ms"), med("kafka_sync", "S4", "p99_ms"), 1),
        ("S4 latency max, ms", med("native", "S4", "max_ms"), med("kafka_sync", "S4", "max_ms"), 1),
        (f"S4 latency p50 of the first {win}, ms",
         med("native", "S4", "p50_first_ms"), med("kafka_sync", "S4", "p50_first_ms"), 1),
        (f"S4 latency p50 of the last {win}, ms",
         med("native", "S4", "p50_last_ms"), med("kafka_sync", "S4", "p50_last_ms"), 1),
        ("S4 achieved write rate, txn/s", med("native", "S4", "write_rate"), med("kafka_sync", "S4", "write_rate"), 0),
    ]
    for s in ("S1", "S2", "S3"):
        rows.append((f"{s} apply CPU s per 100k rows (native: apply worker; kafka_sync: sidecar + its backends)",
                     med("native", s, "apply_cpu_per_100k"), med("kafka_sync", s, "apply_cpu_per_100k"), 2))
        rows.append((f"{s} sidecar CPU s per 100k rows", None, med("kafka_sync", s, "sidecar_cpu_per_100k"), 2))
    rows.append(("sidecar peak RSS (VmHWM), MB", None, peak_rss, 1))
    return rows


def print_table(rows):
    def fmt(v, d):
        return "-" if v is None else f"{v:,.{d}f}"
    width = max(len(r[0]) for r in rows)
    print(f"\n{'scenario':{width}}  {'native':>10}  {'kafka_sync':>10}  {'ks/native':>9}")
    for name, nat, ks, d in rows:
        ratio = f"{ks / nat:.2f}" if nat and ks is not None else "-"
        print(f"{name:{width}}  {fmt(nat, d):>10}  {fmt(ks, d):>10}  {ratio:>9}")


def machine_info():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "kafka": os.environ.get("KAFKA_BROKERS", "librdkafka mock cluster")}
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
