"""The report of test/bench/bench.py: medians over the repeats, one table
(scenario, native, then each kafka_sync system with its ratio to native),
the latency-against-rate curve (a table of its own: per offered rate and
system, and the rate where each system stops keeping up), the Kafka and the
machine it ran on."""

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
        rows.append((f"{s} source CPU s per 100k rows (kafka_sync: producer worker; native and Debezium: "
                     "walsender), from the load's start until all visible", med(s, "source_cpu_per_100k"), 2))
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


# -- latency against rate ---------------------------------------------------------------------------

# A system keeps up at a rate when its apply rate is at least this share of the write rate, i.e.
# when its latency grows by at most 1/0.9 - 1 = 111 ms per second of writing
KEEPS_UP = 0.9


def build_curve(curve_runs, systems):
    """curve_runs: {offered rate: {system: [S4 results]}}. Returns (points, stops):
    points: [{offered_rate, system, runs, <medians of the S4 keys>, keeps_up}] in rate order;
    stops: {system: {offered_rate, write_rate} of the lowest offered rate at which it did not
    keep up (None if it kept up at every rate), kept_up_write_rate: the highest achieved write
    rate it kept up with below that}."""
    keys = ("write_rate", "latency_growth_ms_per_s", "apply_rate", "apply_ratio", "p50_ms", "p99_ms", "max_ms",
            "p50_first_ms", "p50_last_ms", "p99_last_ms", "drain_s", "window_s")
    points = []
    for rate in sorted(curve_runs):
        for system in systems:
            results = curve_runs[rate].get(system) or []
            if not results:
                continue
            point = {"offered_rate": rate, "system": system, "runs": len(results)}
            point.update({k: median(r.get(k) for r in results) for k in keys})
            point["keeps_up"] = point["apply_ratio"] is not None and point["apply_ratio"] >= KEEPS_UP
            points.append(point)
    stops = {}
    for system in systems:
        mine = [p for p in points if p["system"] == system]
        failed = next((p for p in mine if not p["keeps_up"]), None)
        kept = [p["write_rate"] for p in mine if p["keeps_up"] and (failed is None
                                                                   or p["offered_rate"] < failed["offered_rate"])]
        stops[system] = {"offered_rate": failed and failed["offered_rate"],
                         "write_rate": failed and failed["write_rate"],
                         "kept_up_write_rate": max(kept) if kept else None}
    return points, stops


def print_curve(points, stops, columns, seconds, repeat):
    """columns: [(system, header)] of the curve's systems."""
    def fmt(v, d):
        return "-" if v is None else f"{v:,.{d}f}"
    header = dict(columns)
    window = next((p["window_s"] for p in points if p["window_s"]), None)
    print(f"\nLatency against rate: single-row INSERT txns paced in the server, {seconds:g} s per offered rate, "
          + (f"median of {repeat} runs" if repeat > 1 else "1 run") + f"; keeps up = applied >= {KEEPS_UP:.0%} "
          "of written")
    print("(written: txns / the writer's duration; growth: least-squares slope of the latency against the commit "
          "time; applied = written / (1 + growth); drain: last row visible - last commit)")
    print(f"{'offered/s':>9}  {'system':<12}  {'written/s':>9}  {'growth ms/s':>11}  {'applied/s':>9}  "
          f"{'p50 ms':>8}  {'p99 ms':>8}  {f'p50 last {window or 0:.3g} s':>14}  {'drain s':>7}  keeps up")
    for p in points:
        print(f"{p['offered_rate']:>9,}  {header[p['system']]:<12}  {fmt(p['write_rate'], 0):>9}  "
              f"{fmt(p['latency_growth_ms_per_s'], 1):>11}  {fmt(p['apply_rate'], 0):>9}  {fmt(p['p50_ms'], 1):>8}  "
              f"{fmt(p['p99_ms'], 1):>8}  {fmt(p['p50_last_ms'], 1):>14}  {fmt(p['drain_s'], 2):>7}  "
              f"{'yes' if p['keeps_up'] else 'NO'}")
    print("stops keeping up at (the lowest offered rate at which it did not keep up):")
    for system, header_text in columns:
        st = stops.get(system)
        if st is None:
            continue
        kept = (f"kept up with up to {st['kept_up_write_rate']:,.0f} txn/s written"
                if st["kept_up_write_rate"] else "kept up at no rate tested")
        if st["offered_rate"] is None:
            print(f"  {header_text}: kept up at every rate tested ({kept})")
        else:
            print(f"  {header_text}: {st['offered_rate']:,} txn/s offered ({fmt(st['write_rate'], 0)} written); {kept}")
