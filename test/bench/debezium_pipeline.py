#!/usr/bin/env python3
"""The seed's pipeline (shared/SEED_PIPELINE.md) for test/bench/bench.py: one
Kafka Connect worker with Debezium's PostgreSQL source connector and
Debezium's JDBC sink connector, one way src -> dst, on the bench's broker.

The jars are those of debezium/pom.xml beside this file, fetched from Maven
Central once with `mvn dependency:copy-dependencies` into a cache outside
the source tree ($KAFKA_SYNC_CACHE, default ~/.cache/kafka_sync), as
test/kafka_broker/kafka_broker.py does for the broker, whose helpers this
uses. Nothing of theirs is in the repository. Three folders:
  worker/          the Connect runtime 4.1.1: the worker JVM's classpath
  plugins/source/  Debezium's PostgreSQL connector (plugin.path)
  plugins/sink/    Debezium's JDBC sink connector (plugin.path)
so each connector has its own class loader, as in a Connect deployment.

The worker runs in standalone mode (offsets of the source in a file, the
sink's in its consumer group), listens for REST on loopback, and gets its
connectors through REST. Its JVM dies with the Python process that started
it (PR_SET_PDEATHSIG), as the test broker's do.

  debezium_pipeline.py fetch      cache the jars, print their folder
"""

import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "kafka_broker"))

from kafka_broker import (  # noqa: E402
    _die_with_parent, cache_root, free_port, java_binary, log4j2_properties, maven_fetch, tail_lines, terminate)

POM = HERE / "debezium" / "pom.xml"
# The same as debezium/pom.xml's (they name the cache folder and the table's note)
CONNECT_VERSION = "4.1.1"
DEBEZIUM_VERSION = "3.6.1.Final"
DEBEZIUM_JDBC_VERSION = "3.6.0.Final"  # 3.6.1.Final of the JDBC sink is not served (see the pom)
PROFILES = {"worker": "worker", "source": "plugins/source", "sink": "plugins/sink"}
HEAP = "1g"  # Kafka's connect-distributed.sh: -Xms256M -Xmx2G
START_TIMEOUT = 120.0

# The seed's transforms, on both connectors as it had them
SEED_TRANSFORMS = {
    "transforms": "unwrap,addTopicPrefix",
    "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
    "transforms.addTopicPrefix.type": "org.apache.kafka.connect.transforms.RegexRouter",
    "transforms.addTopicPrefix.regex": "(.*)",
    "transforms.addTopicPrefix.replacement": "$1",
}
JSON_WITH_SCHEMAS = {
    "key.converter": "org.apache.kafka.connect.json.JsonConverter",
    "key.converter.schemas.enable": "true",
    "value.converter": "org.apache.kafka.connect.json.JsonConverter",
    "value.converter.schemas.enable": "true",
}
SINK_APP = "debezium_jdbc_sink"  # the sink's application_name on the target


class PipelineError(RuntimeError):
    """The jars could not be fetched, or the worker or a connector failed."""


class RestError(PipelineError):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


# -- fetching ---------------------------------------------------------------------------------------

def fetch(quiet=True):
    """Return the cache folder holding worker/ and plugins/, fetching first if needed (keyed by
    the pom's content; a lock keeps parallel callers from fetching twice)."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    home = cache_root() / f"debezium-{DEBEZIUM_VERSION}-connect-{CONNECT_VERSION}-{digest}"
    jobs = []
    for profile, folder in PROFILES.items():
        extra = ["-P", profile]
        if profile != "worker":
            # The worker provides these, as to Debezium's own plugin archives: the Connect
            # API and the Kafka client (a plugin's copies would be shadowed anyway), and
            # Jackson (a plugin's own jackson-databind beside the worker's modules fails:
            # ServiceLoader finds the worker's Jdk8Module, "not a subtype" of the plugin's Module)
            extra.append("-DexcludeGroupIds=org.apache.kafka,com.fasterxml.jackson.core,"
                         "com.fasterxml.jackson.datatype")
        jobs.append((folder, extra))
    maven_fetch(POM, home, jobs, f"Kafka Connect {CONNECT_VERSION} and Debezium {DEBEZIUM_VERSION}",
                f"{CONNECT_VERSION} {DEBEZIUM_VERSION}", quiet, PipelineError)
    return home


# -- the worker -------------------------------------------------------------------------------------



class ConnectWorker:
    """One standalone Kafka Connect worker JVM (see the file's header)."""

    def __init__(self, bootstrap, directory):
        self.home = fetch()
        self.bootstrap = bootstrap
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def log_path(self):
        return self.dir / "connect.log"

    def start(self):
        props = {
            "bootstrap.servers": self.bootstrap,
            **JSON_WITH_SCHEMAS,
            "offset.storage.file.filename": self.dir / "offsets",
            "listeners": f"http://127.0.0.1:{self.port}",
            # each folder under plugins/ is one plugin with its own class loader
            "plugin.path": self.home / "plugins",
        }
        (self.dir / "worker.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.dir / "log4j2.properties").write_text(log4j2_properties(self.log_path, {"org.reflections": "ERROR"}))
        cmd = [java_binary(), "-Xms256m", f"-Xmx{HEAP}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
               "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
               "-cp", f"{self.home / 'worker'}/*", "org.apache.kafka.connect.cli.ConnectStandalone",
               str(self.dir / "worker.properties")]
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise PipelineError(f"the Connect worker exited (rc={self.proc.returncode}):\n{self.log_tail()}")
            try:
                plugins = self.rest("GET", "/connector-plugins")
                classes = {p["class"] for p in plugins}
                missing = {"io.debezium.connector.postgresql.PostgresConnector",
                           "io.debezium.connector.jdbc.JdbcSinkConnector"} - classes
                if missing:
                    raise PipelineError(f"the Connect worker lacks {sorted(missing)}:\n{self.log_tail()}")
                return self
            except (urllib.error.URLError, ConnectionError):
                pass
            except RestError as e:  # 404 until its REST resources are in place
                if e.code != 404:
                    raise
            if time.monotonic() > deadline:
                raise PipelineError(f"the Connect worker did not serve REST within {START_TIMEOUT:.0f}s:\n"
                                    f"{self.log_tail()}")
            time.sleep(0.5)

    def rest(self, method, path, body=None, timeout=60):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as e:
            raise RestError(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace')}", e.code) from None
        return json.loads(text) if text else None

    # -- connectors

    def create(self, name, config):
        self.rest("PUT", f"/connectors/{name}/config", {k: str(v) for k, v in config.items()})
        self.wait_state(name, "RUNNING")

    def status(self, name):
        return self.rest("GET", f"/connectors/{name}/status")

    def wait_state(self, name, state, timeout=120):
        """Until the connector and its task are in state; a FAILED one raises with its trace."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.status(name)
            except RestError as e:  # 404 while it is being created
                if e.code != 404:
                    raise
                st = None
            if st:
                states = [st["connector"]["state"]] + [t["state"] for t in st.get("tasks", [])]
                if "FAILED" in states:
                    traces = [t.get("trace", "") for t in [st["connector"], *st.get("tasks", [])]]
                    raise PipelineError(f"connector {name} FAILED:\n" + "\n".join(t for t in traces if t)[-4000:])
                if st.get("tasks") and all(s == state for s in states):
                    return
            if time.monotonic() > deadline:
                raise PipelineError(f"connector {name} not {state} within {timeout}s: {st}\n{self.log_tail()}")
            time.sleep(0.05)

    def pause(self, name):
        self.rest("PUT", f"/connectors/{name}/pause")
        self.wait_state(name, "PAUSED")

    def resume(self, name):
        """Resume and return at once (the caller times the catch-up from here)."""
        self.rest("PUT", f"/connectors/{name}/resume")

    def delete(self, name):
        self.rest("DELETE", f"/connectors/{name}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=30):
        if self.running():
            terminate(self.proc, timeout)

    def log_tail(self, lines=40):
        text = tail_lines(self.log_path, lines) + tail_lines(self.dir / "stdout.log", 10)
        return "\n".join(text[-lines:])


# -- the seed's connectors --------------------------------------------------------------------------

def source_config(host, port, dbname, topic_prefix, table="public.bench_t", slot="debezium",
                  publication="dbz_publication"):
    """Debezium's PostgreSQL connector as the seed ran it (pgoutput, its slot and publication, JSON
    with schemas, ExtractNewRecordState). The publication is created by the caller for the bench's
    table only (the connector would otherwise create one FOR ALL TABLES)."""
    return {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "tasks.max": 1,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": publication,
        "publication.autocreate.mode": "disabled",
        "database.hostname": host,
        "database.port": port,
        "database.user": "postgres",
        "database.password": "",
        "database.dbname": dbname,
        "topic.prefix": topic_prefix,
        "table.include.list": table,
        **JSON_WITH_SCHEMAS,
        **SEED_TRANSFORMS,
    }


def sink_config(topic, host, port, dbname, table="bench_t", batch_size=None):
    """Debezium's JDBC sink as the seed's sink: upsert on the record key, deletes enabled, no
    auto-create or evolution, JSON with schemas, the seed's transforms; batch_size None leaves the
    connector's default."""
    config = {
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": 1,
        "topics": topic,
        "connection.url": f"jdbc:postgresql://{host}:{port}/{dbname}?ApplicationName={SINK_APP}",
        "connection.username": "postgres",
        "connection.password": "",
        "insert.mode": "upsert",
        "primary.key.mode": "record_key",
        "delete.enabled": "true",
        "schema.evolution": "none",
        "collection.name.format": table,
        **JSON_WITH_SCHEMAS,
        **SEED_TRANSFORMS,
    }
    if batch_size is not None:
        config["batch.size"] = batch_size
    return config


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["fetch"]:
        print(__doc__.split("\n\n")[-1].strip(), file=sys.stderr)
        return 2
    try:
        print(fetch(quiet=False))
    except PipelineError as e:
        print(f"debezium_pipeline: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
