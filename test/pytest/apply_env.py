"""Two-master setups for the apply-path tests: two PostgreSQL servers (chat1,
chat2), each a node publishing to Kafka and subscribing to the other, each
with its own kafka_sync_sidecar process.
"""

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from conftest import NODE_SERVER_CONF
from ks_helpers import wait_until
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
        self.proc = subprocess.Popen([str(SIDECAR_BINARY), "--dsn", self.dsn, "--log-level", "info"],
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

    def create_node(self, snapshot=True):
        self.kafka.create_topic(self.topic)
        self.sql("SELECT kafka_sync.create_node(%s, %s, topic_prefix => %s, kafka_config => %s, snapshot => %s)",
                 (self.name, self.kafka.bootstrap, self.prefix, NODE_CONFIG, snapshot))
        wait_until(lambda: self.sql("SELECT state FROM kafka_sync.node_status")[0][0] == "streaming", 60,
                   f"node {self.name} streaming", diagnostics=lambda: self.pg.log_text()[-3000:])

    def subscribe(self, peer, on_error="pause", start="earliest"):
        self.sql("SELECT kafka_sync.create_subscription(%s, %s, %s, topic_prefix => %s, on_error => %s, start => %s)",
                 (f"from_{peer.name}", peer.name, self.kafka.bootstrap, self.prefix, on_error, start))

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
