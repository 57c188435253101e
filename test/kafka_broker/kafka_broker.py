#!/usr/bin/env python3
"""A real Apache Kafka (KRaft) on loopback for kafka_sync's tests, demo and benchmark.

The broker is the pinned Apache Kafka of pom.xml beside this file, fetched
from Maven Central once with `mvn dependency:copy-dependencies` into a cache
outside the source tree ($KAFKA_SYNC_CACHE, default ~/.cache/kafka_sync), and
run with the machine's Java 17. No ZooKeeper, no Docker, no download at run
time once cached.

Two shapes:
  KafkaCluster(brokers=1)  one combined broker+controller (most tests)
  KafkaCluster(brokers=3)  three combined nodes, a 3-voter KRaft quorum,
                           replication factor 3 and min.insync.replicas=2
                           (failover tests)

Every node listens on 127.0.0.1 only, on ports free when it starts. Its
directory (data and server.log) is a fresh temporary one; stop() removes it
unless asked to keep it, so a failed test keeps its broker's logs.

A cluster started from Python (pytest) has its JVMs tied to the Python
process: they get SIGKILL when it dies (PR_SET_PDEATHSIG), however it dies,
so no test run leaves a JVM behind. The command line starts a detached
cluster for the demo and the benchmark:

  kafka_broker.py fetch                       cache the jars, print their folder
  kafka_broker.py start --dir D [--brokers N] start in D, print the bootstrap
  kafka_broker.py stop --dir D                stop what `start` started in D
  kafka_broker.py run [--brokers N]           start, serve until Ctrl-C, stop
"""

import argparse
import base64
import ctypes
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
KAFKA_VERSION = "4.1.1"  # the same as pom.xml's kafka.version

# Heap per node. Kafka's own scripts default to 1 GiB; a broker keeps its
# data in the page cache, not the heap, and this machine has 2 cores and
# 24 GiB shared with PostgreSQL servers and the test processes.
HEAP_SINGLE = "1g"
HEAP_PER_NODE_OF_THREE = "512m"

START_TIMEOUT = 120.0


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted or started."""


# -- fetching ---------------------------------------------------------------------------------------

def cache_root():
    return Path(os.environ.get("KAFKA_SYNC_CACHE") or Path.home() / ".cache" / "kafka_sync")


def fetch(quiet=True):
    """Return the folder of the broker's jars, fetching them first if needed.

    The cache is keyed by the pom's content, so a changed version fetches
    anew; a lock file keeps parallel callers from fetching twice.
    """
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    home = cache_root() / f"kafka-{KAFKA_VERSION}-{digest}"
    maven_fetch(POM, home, [("lib", [])], f"Apache Kafka {KAFKA_VERSION}", KAFKA_VERSION, quiet, BrokerError)
    return home / "lib"


def maven_fetch(pom, home, jobs, what, stamp, quiet=True, error=RuntimeError):
    """Fetch jars with `mvn dependency:copy-dependencies` of pom into folders of
    home, once: jobs is [(folder, extra mvn arguments)]. Each folder appears
    whole or not at all (written as <folder>.partial, then renamed); the file
    "complete" (holding stamp) marks a finished fetch, and a lock file keeps
    parallel callers from fetching twice. Failures raise error."""
    if (home / "complete").exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / "complete").exists():
            return
        print(f"fetching {what} with Maven into {home}", file=sys.stderr, flush=True)
        for folder, extra in jobs:
            target = home / folder
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(target, ignore_errors=True)
            cmd = (["mvn", "-B"] + (["-q"] if quiet else []) + ["-f", str(pom)] + extra
                   + ["dependency:copy-dependencies", f"-DoutputDirectory={partial}", "-DincludeScope=runtime"])
            try:
                done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, timeout=900)
            except FileNotFoundError:
                raise error(f"mvn is not installed: {what} is fetched with Maven (apt-get install maven)") from None
            if done.returncode != 0:
                raise error(f"mvn could not fetch {what}, {folder} (exit {done.returncode}):\n{done.stdout[-3000:]}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial.rename(target)
        (home / "complete").write_text(stamp + "\n")


def log4j2_properties(log, levels):
    """A log4j2 configuration writing INFO and above to the file log, with the
    loggers in levels ({logger name: level}) set apart."""
    text = ("status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = file\n"
            f"appender.file.fileName = {log}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = file\n")
    for i, (name, level) in enumerate(levels.items()):
        text += f"logger.l{i}.name = {name}\nlogger.l{i}.level = {level}\n"
    return text


def java_binary():
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise BrokerError("java is not installed: Apache Kafka 4 needs Java 17 or later")
    return found


# -- one node ---------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_libc = None


def _die_with_parent():
    # Runs in the child between fork and exec: the JVM gets SIGKILL when the
    # Python thread that started it ends, so a killed test run leaves none.
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)




class BrokerNode:
    """One combined broker+controller JVM of a cluster."""

    def __init__(self, cluster, node_id, directory):
        self.cluster = cluster
        self.node_id = node_id
        self.dir = Path(directory)
        self.port = free_port()
        self.controller_port = free_port()
        self.sasl_port = free_port() if cluster.sasl_users else None
        self.proc = None
        self.pid = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self):
        return self.dir / "server.log"

    def write_config(self, voters, extra):
        n = len(self.cluster.nodes)
        listeners = f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
        advertised = f"PLAINTEXT://127.0.0.1:{self.port}"
        sasl = {}
        if self.sasl_port:
            # SASL/PLAIN on a listener of its own, for tests of credentials
            listeners += f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            advertised += f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            users = " ".join(f'user_{u}="{p}"' for u, p in self.cluster.sasl_users.items())
            sasl = {
                "sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config":
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
            }
        props = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": listeners,
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map":
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            **sasl,
            "log.dirs": str(self.dir / "data"),
            "num.partitions": 1,
            "default.replication.factor": n,
            "min.insync.replicas": 2 if n >= 3 else 1,
            "offsets.topic.replication.factor": n,
            "transaction.state.log.replication.factor": n,
            "transaction.state.log.min.isr": 2 if n >= 3 else 1,
            "share.coordinator.state.topic.replication.factor": n,
            "share.coordinator.state.topic.min.isr": 2 if n >= 3 else 1,
            "group.initial.rebalance.delay.ms": 0,
            # Retention is checked every second (default 5 minutes), so a
            # test that gives a topic a short retention sees it applied.
            "log.retention.check.interval.ms": 1000,
            **extra,
        }
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        (self.dir / "server.properties").write_text(text)
        (self.dir / "log4j2.properties").write_text(
            log4j2_properties(self.log_path, {"kafka.request.logger": "WARN", "kafka.authorizer.logger": "WARN"}))

    def _java(self, main, args, heap):
        lib = self.cluster.lib
        return [java_binary(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.dir}",
                "-cp", f"{lib}/*", main, *args]

    def format(self, cluster_id):
        cmd = self._java("kafka.tools.StorageTool",
                         ["format", f"--cluster-id={cluster_id}", "--config", str(self.dir / "server.properties")],
                         "256m")
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise BrokerError(f"formatting node {self.node_id}'s storage failed:\n{done.stdout[-3000:]}")

    def start(self):
        """Start the JVM (not waiting for it to serve)."""
        if self.running():
            return
        cmd = self._java("kafka.Kafka", [str(self.dir / "server.properties")], self.cluster.heap)
        with open(self.dir / "stdout.log", "ab") as out:
            if self.cluster.detached:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            else:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        (self.dir / "pid").write_text(f"{self.pid}\n")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.running():
            os.kill(self.proc.pid, sig)

    def kill(self):
        """kill -9, and reap it."""
        if self.running():
            self.proc.kill()
            self.proc.wait()

    def freeze(self):
        """SIGSTOP: the process stays, answers nothing, holds its sockets."""
        self.signal(signal.SIGSTOP)

    def thaw(self):
        self.signal(signal.SIGCONT)

    def stop(self, timeout=15.0):
        """SIGTERM (a controlled shutdown), SIGKILL after timeout."""
        if not self.running():
            return
        self.proc.send_signal(signal.SIGCONT)
        terminate(self.proc, timeout)

    def log_tail(self, lines=40):
        return "\n".join(tail_lines(self.log_path, lines))


def terminate(proc, timeout):
    """SIGTERM, then SIGKILL when proc has not exited after timeout seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail_lines(path, lines):
    """The last lines of a log file ([] when it cannot be read)."""
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _kill_quietly(nodes):
    for node in nodes:
        try:
            node.kill()
        except OSError:
            pass


# -- a cluster --------------------------------------------------------------------------------------

class KafkaCluster:
    """One or three Apache Kafka nodes on loopback (see the file's header).

    Also the interface the test harness expects of a Kafka: bootstrap,
    create_topic(), stop(), context manager.
    """

    supports_fault_injection = False   # per-request errors: the mock only
    is_local_broker = True

    def __init__(self, brokers=1, directory=None, heap=None, config=None, detached=False,
                 start=True, sasl_users=None):
        if brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        self.lib = fetch()
        # {user: password}: a SASL_PLAINTEXT listener (mechanism PLAIN) beside
        # the PLAINTEXT one; sasl_bootstrap names it
        self.sasl_users = dict(sasl_users or {})
        self.detached = detached
        self.heap = heap or (HEAP_SINGLE if brokers == 1 else HEAP_PER_NODE_OF_THREE)
        self.extra_config = dict(config or {})
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="kafka_sync_broker_"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes = []
        for i in range(brokers):
            d = self.dir / f"node{i + 1}"
            d.mkdir(exist_ok=True)
            self.nodes.append(BrokerNode(self, i + 1, d))
        self.bootstrap = ",".join(n.address for n in self.nodes)
        self.sasl_bootstrap = ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.nodes) if sasl_users else None
        self.replication_factor = brokers
        self._admin = None
        self._finalizer = None if detached else weakref.finalize(self, _kill_quietly, list(self.nodes))
        if start:
            self.start()

    def start(self):
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's own Uuid: never one that looks like an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        for node in self.nodes:
            node.write_config(voters, self.extra_config)
            node.format(cluster_id)
        for node in self.nodes:
            node.start()
        self.wait_serving()
        (self.dir / "bootstrap").write_text(self.bootstrap + "\n")
        return self

    # -- state ---------------------------------------------------------------

    def admin(self):
        from confluent_kafka.admin import AdminClient
        if self._admin is None:
            # quiet: its failures surface as exceptions, and its log would
            # report every refused connection while a test has a broker down
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return self._admin

    def wait_serving(self, timeout=START_TIMEOUT, nodes=None):
        """Wait until every running node (or those given) is a live broker in
        the cluster's metadata; raise with the log's tail if one died."""
        from confluent_kafka.admin import AdminClient
        want = {n.node_id for n in (nodes or self.nodes) if n.running()}
        deadline = time.monotonic() + timeout
        last_error = None
        while True:
            for node in self.nodes:
                if node.node_id in want and not node.running():
                    raise BrokerError(f"Kafka node {node.node_id} exited "
                                      f"(rc={node.proc.returncode}):\n{node.log_tail()}")
            for node in self.nodes:
                if node.node_id not in want:
                    continue
                try:
                    # Connect first: librdkafka logs every refused connection.
                    socket.create_connection(("127.0.0.1", node.port), timeout=1).close()
                    md = AdminClient({"bootstrap.servers": node.address,
                                      "log_level": 0}).list_topics(timeout=2)
                    live = set(md.brokers)
                    if want <= live:
                        return
                    last_error = f"brokers seen by {node.node_id}: {sorted(live)}"
                except Exception as e:  # not listening yet
                    last_error = repr(e)
                break
            if time.monotonic() > deadline:
                raise BrokerError(f"Kafka did not serve within {timeout:.0f}s ({last_error}):\n"
                                  + "\n".join(n.log_tail(20) for n in self.nodes))
            time.sleep(0.3)

    def node(self, node_id):
        return next(n for n in self.nodes if n.node_id == node_id)

    def leader_of(self, topic, partition=0, timeout=30.0):
        """The BrokerNode that leads the partition now."""
        deadline = time.monotonic() + timeout
        while True:
            md = self.admin().list_topics(topic=topic, timeout=5)
            t = md.topics.get(topic)
            if t is not None and t.error is None and partition in t.partitions:
                leader = t.partitions[partition].leader
                if leader >= 0:
                    return self.node(leader)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}[{partition}] has no leader")
            time.sleep(0.2)

    # -- topics --------------------------------------------------------------

    def create_topic(self, name, partitions=1, exist_ok=True, config=None, timeout=30.0):
        create_topic(self.admin(), name, partitions, self.replication_factor, exist_ok, config, timeout)

    def alter_topic(self, name, config, timeout=30.0):
        alter_topic_config(self.admin(), name, config, timeout)

    # -- stopping ------------------------------------------------------------

    def stop(self, keep=False):
        """Stop every node; remove the cluster's directory unless keep (or
        unless the caller gave it). Returns the directory when it is kept."""
        self._admin = None
        for node in self.nodes:
            node.thaw()
        for node in self.nodes:
            if node.running():
                node.proc.terminate()
        for node in self.nodes:
            node.stop()
        if self._finalizer is not None:
            self._finalizer.detach()
        if keep or not self._own_dir:
            return self.dir
        shutil.rmtree(self.dir, ignore_errors=True)
        return None

    def log_tails(self, lines=40):
        return "\n".join(f"--- Kafka node {n.node_id} ({n.log_path}):\n{n.log_tail(lines)}"
                         for n in self.nodes)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        self.stop(keep=exc_type is not None)


def create_topic(admin, name, partitions, replication_factor, exist_ok=True, config=None, timeout=30.0):
    """Create a topic and wait until every partition has a leader; an
    existing one is fine when exist_ok."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=int(partitions), replication_factor=replication_factor,
                  config=dict(config or {}))],
        request_timeout=timeout)
    try:
        futures[name].result(timeout=timeout)
    except KafkaException as e:
        err = e.args[0] if e.args else None
        if not (exist_ok and isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise
    wait_for_leaders(admin, name, timeout)


def alter_topic_config(admin, name, config, timeout=30.0):
    """Set the topic's configs to exactly `config` (Debian's confluent-kafka
    1.7 has only the non-incremental AlterConfigs: a topic config not named
    goes back to the broker's default)."""
    from confluent_kafka.admin import ConfigResource
    resource = ConfigResource("topic", name, set_config={k: str(v) for k, v in config.items()})
    for f in admin.alter_configs([resource]).values():
        f.result(timeout=timeout)


def wait_for_leaders(admin, name, timeout):
    # CreateTopics returns before every broker knows the topic; producing
    # straight away would race with leader election.
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(topic=name, timeout=timeout)
        t = md.topics.get(name)
        if (t is not None and t.error is None and t.partitions
                and all(p.leader >= 0 for p in t.partitions.values())):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} has no leaders yet")
        time.sleep(0.2)


# -- command line (demo, bench) ---------------------------------------------------------------------

def _pid_alive_in(pid, directory):
    """Is pid a live JVM of this directory (not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return str(directory) in cmdline


def stop_directory(directory, timeout=15.0):
    directory = Path(directory).resolve()
    pids = []
    for pidfile in sorted(directory.glob("node*/pid")):
        pid = int(pidfile.read_text())
        if _pid_alive_in(pid, pidfile.parent):
            pids.append(pid)
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="fetch the jars into the cache, print their folder")
    p = sub.add_parser("start", help="start a detached cluster in DIR, print its bootstrap")
    p.add_argument("--dir", required=True)
    p.add_argument("--brokers", type=int, default=1)
    p.add_argument("--heap")
    p = sub.add_parser("stop", help="stop the cluster that start left in DIR")
    p.add_argument("--dir", required=True)
    p = sub.add_parser("run", help="start a cluster, serve until interrupted, stop it")
    p.add_argument("--brokers", type=int, default=1)
    p.add_argument("--heap")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(fetch(quiet=False))
        elif args.cmd == "start":
            directory = Path(args.dir).resolve()
            if any(_pid_alive_in(int(f.read_text()), f.parent) for f in directory.glob("node*/pid")):
                raise BrokerError(f"a cluster is already running in {directory}; "
                                  f"stop it first: {sys.argv[0]} stop --dir {directory}")
            shutil.rmtree(directory, ignore_errors=True)
            cluster = KafkaCluster(args.brokers, directory=directory, heap=args.heap, detached=True,
                                   start=False)
            try:
                cluster.start()
            except BaseException:
                cluster.stop(keep=True)
                raise
            print(cluster.bootstrap)
        elif args.cmd == "stop":
            n = stop_directory(args.dir)
            print(f"stopped {n} Kafka node(s)", file=sys.stderr)
        elif args.cmd == "run":
            cluster = KafkaCluster(args.brokers, heap=args.heap)
            print(f"Apache Kafka {KAFKA_VERSION} serving at {cluster.bootstrap} "
                  f"(logs in {cluster.dir}); Ctrl-C stops it", flush=True)
            try:
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                while all(n.running() for n in cluster.nodes):
                    time.sleep(1)
                print("a Kafka node exited:\n" + cluster.log_tails(), file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                pass
            finally:
                cluster.stop()
    except BrokerError as e:
        print(f"kafka_broker: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
