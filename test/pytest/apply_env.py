"""Multi-master setups for the apply-path tests: PostgreSQL servers chat1,
chat2, ... (one per master), each a node publishing to Kafka and subscribing
to every other, each with its own kafka_sync_sidecar process. make_pair
builds two; make_mesh builds N with a conflict resolution strategy.
"""

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from psycopg2 import sql as pgsql

from conftest import NODE_SERVER_CONF
from ks_helpers import wait_until, watermarks
from pg_env import PgCluster

REPO_ROOT = Path(__file__).resolve().parents[2]
SIDECAR_BINARY = Path(os.environ.get("KAFKA_SYNC_SIDECAR", REPO_ROOT / "sidecar" / "kafka_sync_sidecar"))

# The same server settings as every other end-to-end test.
SERVER_CONF = NODE_SERVER_CONF

# Payload-only records and quick reconnects after an outage.
NODE_CONFIG = '{"kafka_sync.schemas": false, "reconnect.backoff.max.ms": 500}'


class Sidecar:
    """A kafka_sync_sidecar process next to one database."""

    def __init__(self, dsn, logfile):
        self.dsn = dsn
        self.logfile = Path(logfile)
        self.proc = None

    def start(self):
        assert SIDECAR_BINARY.exists(), f"{SIDECAR_BINARY} is not built (make)"
        log = open(self.logfile, "ab")
        self.proc = subprocess.Popen([str(SIDECAR_BINARY), "--dsn", self.dsn, "--log-level", os.environ.get("KAFKA_SYNC_SIDECAR_LOG_LEVEL", "info")],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout=30):
        """SIGTERM: finishes the current transaction and exits 0."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log_text(self):
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Master:
    """One server = one node (database "chat") with a sidecar."""

    def __init__(self, name, kafka, prefix, base_dir):
        self.name = name
        self.kafka = kafka
        self.prefix = prefix
        self.pg = PgCluster(name, extra_conf=SERVER_CONF, base_dir=base_dir)
        self.pg.start()
        self.pg.create_database("chat")
        self.sidecar = Sidecar(self.pg.dsn("chat"), self.pg.dir / "sidecar.log")

    @property
    def topic(self):
        return f"{self.prefix}.{self.name}"

    def sql(self, query, params=None):
        return self.pg.sql(query, params, dbname="chat")

    def connect(self, autocommit=True):
        return self.pg.connect(dbname="chat", autocommit=autocommit)

    def create_node(self, snapshot=True, kafka_config=NODE_CONFIG):
        self.kafka.create_topic(self.topic)
        self.sql("SELECT kafka_sync.create_node(%s, %s, topic_prefix => %s, kafka_config => %s, snapshot => %s)",
                 (self.name, self.kafka.bootstrap, self.prefix, kafka_config, snapshot))
        wait_until(lambda: self.sql("SELECT state FROM kafka_sync.node_status")[0][0] == "streaming", 60,
                   f"node {self.name} streaming", diagnostics=lambda: self.pg.log_text()[-3000:])

    def subscribe(self, peer, on_error="pause", start="earliest", conflict_resolution=None):
        """Subscription from_<peer>; conflict_resolution None: the extension's default."""
        query = "SELECT kafka_sync.create_subscription(%s, %s, %s, topic_prefix => %s, on_error => %s, start => %s"
        params = [f"from_{peer.name}", peer.name, self.kafka.bootstrap, self.prefix, on_error, start]
        if conflict_resolution is not None:
            query += ", conflict_resolution => %s"
            params.append(conflict_resolution)
        self.sql(query + ")", params)

    def subscribe_mesh(self, peers, on_error="pause", start="earliest", conflict_resolution=None):
        """create_mesh_subscriptions: from_<peer> for every peer; returns the names it reports."""
        query = ("SELECT * FROM kafka_sync.create_mesh_subscriptions(%s, %s, topic_prefix => %s, "
                 "start => %s, on_error => %s")
        params = [[p.name for p in peers], self.kafka.bootstrap, self.prefix, start, on_error]
        if conflict_resolution is not None:
            query += ", conflict_resolution => %s"
            params.append(conflict_resolution)
        return sorted(r[0] for r in self.sql(query + ")", params))

    def rows(self, query, params=None):
        """Rows of a query as dicts."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                names = [d[0] for d in cur.description]
                return [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            conn.close()

    def subscriptions(self):
        """kafka_sync.subscription_status, one dict per subscription, by name."""
        return self.rows("SELECT * FROM kafka_sync.subscription_status ORDER BY name")

    def conflicts(self):
        """kafka_sync.conflicts in the order they were logged."""
        return self.rows("SELECT * FROM kafka_sync.conflicts ORDER BY id")

    def digest(self, tables):
        """{table: (row count, md5 of the rows' text output in text order)}: equal
        digests mean equal contents, whatever the tables' keys."""
        out = {}
        for table in tables:
            query = pgsql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text "
                              "COLLATE \"C\"), '')) FROM {} t").format(pgsql.Identifier(*table.split(".")))
            out[table] = tuple(self.sql(query)[0])
        return out

    def subscription(self, peer_name):
        rows = self.sql("SELECT state, last_error, applied_offset, rows_applied, dead_letters, lag "
                        "FROM kafka_sync.subscription_status WHERE peer = %s", (peer_name,))
        return rows[0] if rows else None

    def table(self, table, order_by):
        """Rows as PostgreSQL's text output (exact, and NaN equals NaN)."""
        return [r[0] for r in self.sql(f"SELECT t::text FROM {table} t ORDER BY {order_by}")]

    def diagnostics(self):
        return (f"--- {self.name} server log ---\n{self.pg.log_text()[-3000:]}\n"
                f"--- {self.name} sidecar log ---\n{self.sidecar.log_text()[-3000:]}")

    def crashed_backends(self):
        """Lines of the server log showing a backend that died by a signal."""
        return [line for line in self.pg.log_text().splitlines()
                if "terminated by signal" in line or "was terminated by" in line]

    def destroy(self):
        try:
            self.sidecar.kill9()
        finally:
            self.pg.destroy()


def make_pair(kafka, base_dir, schema_sql, on_error="pause"):
    """chat1 and chat2, both nodes of the same tables, subscribed to each other."""
    prefix = "ks_apply_" + uuid.uuid4().hex[:8]
    run = uuid.uuid4().hex[:6]
    chat1 = Master("chat1", kafka, prefix, Path(base_dir) / run)
    chat2 = Master("chat2", kafka, prefix, Path(base_dir) / run)
    for m in (chat1, chat2):
        m.sql("CREATE EXTENSION kafka_sync")
        for stmt in schema_sql:
            m.sql(stmt)
        m.sql("CREATE PUBLICATION kafka_sync FOR ALL TABLES")
        m.create_node()
    chat1.subscribe(chat2, on_error=on_error)
    chat2.subscribe(chat1, on_error=on_error)
    chat1.sidecar.start()
    chat2.sidecar.start()
    return chat1, chat2


def prepare_master(name, kafka, prefix, base_dir, schema_sql):
    """A server with the extension, the tables and publication kafka_sync; no node yet."""
    m = Master(name, kafka, prefix, base_dir)
    m.sql("CREATE EXTENSION kafka_sync")
    for stmt in schema_sql:
        m.sql(stmt)
    m.sql("CREATE PUBLICATION kafka_sync FOR ALL TABLES")
    return m


def node_config(**extra):
    """NODE_CONFIG with more kafka_config settings (e.g. {"compression.codec": "zstd"})."""
    cfg = json.loads(NODE_CONFIG)
    cfg.update(extra)
    return json.dumps(cfg)


def add_master(mesh, name, schema_sql):
    """One more server beside an existing mesh (same Kafka, topic prefix and base directory)."""
    first = mesh[0]
    return prepare_master(name, first.kafka, first.prefix, first.pg.dir.parent, schema_sql)


def make_mesh(kafka, base_dir, n, schema_sql, conflict_resolution="last_update_wins", node_config=NODE_CONFIG,
              on_error="pause", mesh_api=True, start_sidecars=True):
    """chat1..chatN, all nodes of the same tables, each subscribed to every other
    (create_mesh_subscriptions), each with a sidecar. mesh_api=False subscribes
    with one create_subscription per peer instead; conflict_resolution None
    leaves the argument out (the extension's default)."""
    prefix = "ks_mesh_" + uuid.uuid4().hex[:8]
    run_dir = Path(base_dir) / uuid.uuid4().hex[:6]
    mesh = []
    try:
        for i in range(1, n + 1):
            m = prepare_master(f"chat{i}", kafka, prefix, run_dir, schema_sql)
            mesh.append(m)
            m.create_node(kafka_config=node_config)
        for m in mesh:
            peers = [p for p in mesh if p is not m]
            if mesh_api:
                names = m.subscribe_mesh(peers, on_error=on_error, conflict_resolution=conflict_resolution)
                assert names == sorted(f"from_{p.name}" for p in peers), names
            else:
                for p in peers:
                    m.subscribe(p, on_error=on_error, conflict_resolution=conflict_resolution)
        if start_sidecars:
            for m in mesh:
                m.sidecar.start()
    except BaseException:
        for m in mesh:
            m.destroy()
        raise
    return mesh


def topic_end(master):
    """The high watermark (offset of the next record) of a master's topic."""
    return watermarks(master.kafka.bootstrap, master.topic)[1]


def wait_topic_end(master, end, timeout=60.0):
    """Until the master's producer has published up to `end` (exclusive) on its topic."""
    return wait_until(lambda: topic_end(master) >= end, timeout, f"{master.topic} reaching offset {end}",
                      diagnostics=master.diagnostics)


def wait_applied_through(target, source, timeout=60.0):
    """Until target's subscription to source has applied everything now on source's topic."""
    end = topic_end(source)

    def done():
        sub = target.subscription(source.name)
        return sub is not None and sub[2] is not None and sub[2] >= end - 1
    return wait_until(done, timeout, f"{target.name} applying {source.topic} through offset {end - 1}",
                      diagnostics=lambda: f"{target.subscription(source.name)}\n{target.diagnostics()}")


def wait_mesh_converged(nodes, tables, timeout=120.0, quiet=2.0):
    """Until every node holds the same contents of `tables` and every subscription
    is running with nothing left to apply, unchanged for `quiet` seconds.
    Returns the common digest ({table: (count, md5)})."""
    seen = {"digest": None, "since": 0.0}

    def state():
        digests = [m.digest(tables) for m in nodes]
        if any(d != digests[0] for d in digests[1:]):
            return None
        for m in nodes:
            for s in m.subscriptions():
                if s["state"] != "running" or s["lag"] is None or s["lag"] > 0:
                    return None
        return digests[0]

    def settled():
        d, now = state(), time.monotonic()
        if d is None or d != seen["digest"]:
            seen["digest"], seen["since"] = d, now
            return None
        return d if now - seen["since"] >= quiet else None

    def diagnostics():
        lines = []
        for m in nodes:
            lines.append(f"{m.name}: {m.digest(tables)}")
            for s in m.subscriptions():
                lines.append(f"  {s['name']}: state={s['state']} lag={s['lag']} applied={s['applied_offset']} "
                             f"high={s['high_water']} error={s['last_error']}")
        return "\n".join(lines) + "\n" + "\n".join(m.diagnostics() for m in nodes)

    return wait_until(settled, timeout, f"{', '.join(tables)} identical on {', '.join(m.name for m in nodes)}",
                      interval=0.5, diagnostics=diagnostics)


def wait_converged(a, b, table, order_by, timeout=60.0):
    def same():
        ra, rb = a.table(table, order_by), b.table(table, order_by)
        return ra == rb and ra
    return wait_until(same, timeout, f"{table} identical on {a.name} and {b.name}",
                      diagnostics=lambda: a.diagnostics() + "\n" + b.diagnostics())


def wait_caught_up(target, source, table, order_by, timeout=60.0):
    """Until target's table equals source's (source not written meanwhile)."""
    def same():
        return target.table(table, order_by) == source.table(table, order_by)
    return wait_until(same, timeout, f"{table} of {target.name} equal to {source.name}'s",
                      diagnostics=lambda: target.diagnostics() + "\n" + source.diagnostics())


def settle(seconds=0.5):
    time.sleep(seconds)
