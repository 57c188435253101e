"""Kafka side of the pytest harness for kafka_sync.

Provides a Kafka cluster for tests: a real Apache Kafka started on loopback
by test/kafka_broker/kafka_broker.py (the default), an existing cluster named
by $KAFKA_BROKERS, or, only for faults a broker cannot be made to produce on
purpose (an error answer to one chosen request, a delay on every request),
librdkafka's mock cluster run by test/kafka_mock/kafka_sync_mock_kafka. Plus
helpers to read back what the extension published.
"""

import os
import queue
import subprocess
import tempfile
import threading
import time
import uuid
import sys
import weakref
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MOCK_BINARY = REPO_ROOT / "test" / "kafka_mock" / "kafka_sync_mock_kafka"

sys.path.insert(0, str(REPO_ROOT / "test" / "kafka_broker"))
from kafka_broker import KafkaCluster, alter_topic_config, create_topic  # noqa: E402


class KafkaCommandError(RuntimeError):
    """The mock cluster answered a command with ERR."""


def _reap(proc, stdin):
    # Runs from weakref.finalize (also at interpreter exit) so a failing test
    # run never leaves mock brokers listening behind it.
    try:
        stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class MockKafka:
    """librdkafka mock cluster in a child process, driven over its stdin.

    Only for per-request fault injection: it keeps just the last 5 MB of a
    partition and answers fetches unlike a broker."""

    supports_fault_injection = True
    is_local_broker = False

    def __init__(self, binary=None, brokers=1, topics=(), start_timeout=10.0,
                 verbose=False):
        binary = Path(binary) if binary else DEFAULT_MOCK_BINARY
        if not binary.exists():
            raise FileNotFoundError(
                f"{binary} not built; see test/kafka_mock/mock_kafka.cpp")
        args = [str(binary), "--brokers", str(brokers)]
        for topic in topics:
            args += ["--topic", topic]
        if verbose:
            args.append("--verbose")

        # stderr goes to a file: nobody drains a pipe while tests run, and the
        # file is handy when a test fails.
        fd, self.stderr_path = tempfile.mkstemp(prefix="kafka_sync_mock_",
                                                suffix=".log")
        with os.fdopen(fd, "wb") as err:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, text=True, bufsize=1)
        self._finalizer = weakref.finalize(self, _reap, self._proc,
                                           self._proc.stdin)
        self._lock = threading.Lock()
        # A reader thread turns stdout into a queue so every wait can have a
        # timeout instead of blocking forever on a wedged child.
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

        line = self._next_line(start_timeout)
        if not line.startswith("BOOTSTRAP "):
            self.stop()
            raise RuntimeError(f"unexpected first line from mock: {line!r}")
        self.bootstrap = line.split(" ", 1)[1]
        self.brokers = brokers

    def _read_stdout(self):
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next_line(self, timeout):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"mock kafka did not answer within {timeout}s") from None
        if line is None:
            raise RuntimeError(
                f"mock kafka exited (rc={self._proc.poll()}): "
                f"{self.stderr_text()[-2000:]}")
        return line

    def stderr_text(self):
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except OSError:
            return ""

    def command(self, line, timeout=10.0):
        """Send one command line; return the text after "OK", raise on ERR."""
        with self._lock:
            if self._proc.poll() is not None:
                raise RuntimeError("mock kafka is not running")
            self._proc.stdin.write(line.strip() + "\n")
            self._proc.stdin.flush()
            answer = self._next_line(timeout)
        if answer.startswith("ERR"):
            raise KafkaCommandError(f"{line!r}: {answer[3:].strip()}")
        if not answer.startswith("OK"):
            raise RuntimeError(f"unexpected answer to {line!r}: {answer!r}")
        return answer[2:].strip()

    def create_topic(self, name, partitions=1, exist_ok=True):
        try:
            self.command(f"create_topic {name} {int(partitions)}")
        except KafkaCommandError as e:
            if not (exist_ok and "TOPIC_ALREADY_EXISTS" in str(e)):
                raise

    def down(self, broker="all"):
        self.command(f"down {broker}")

    def up(self, broker="all"):
        self.command(f"up {broker}")

    def request_errors(self, api_key, *errors):
        """Fail the next len(errors) requests of api_key (0 = Produce)."""
        self.command(f"request_errors {int(api_key)} "
                     + " ".join(str(e) for e in errors))

    def clear_errors(self, api_key):
        self.command(f"clear_errors {int(api_key)}")

    def rtt(self, broker, ms):
        self.command(f"rtt {broker} {int(ms)}")

    def set_leader(self, topic, partition, broker):
        """Move leadership; down() alone never does (creates the topic if
        missing, with the mock's default of 4 partitions)."""
        self.command(f"leader {topic} {int(partition)} {int(broker)}")

    def stop(self):
        if self._proc.poll() is None:
            try:
                with self._lock:
                    self._proc.stdin.write("quit\n")
                    self._proc.stdin.flush()
            except (OSError, ValueError):
                pass
        self._finalizer()
        try:
            os.unlink(self.stderr_path)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class ExternalKafka:
    """A real cluster given by $KAFKA_BROKERS; no fault injection."""

    supports_fault_injection = False
    is_local_broker = False

    def __init__(self, bootstrap=None, replication_factor=None):
        self.bootstrap = bootstrap or os.environ["KAFKA_BROKERS"]
        self.replication_factor = int(
            replication_factor
            or os.environ.get("KAFKA_REPLICATION_FACTOR", "1"))
        self._admin = AdminClient({"bootstrap.servers": self.bootstrap})

    def create_topic(self, name, partitions=1, exist_ok=True, config=None, timeout=30.0):
        create_topic(self._admin, name, partitions, self.replication_factor, exist_ok, config, timeout)

    def alter_topic(self, name, config, timeout=30.0):
        alter_topic_config(self._admin, name, config, timeout)

    def command(self, line, timeout=10.0):
        pytest.skip("fault injection needs the mock cluster")

    def down(self, broker="all"):
        pytest.skip("fault injection needs the mock cluster")

    def up(self, broker="all"):
        pytest.skip("fault injection needs the mock cluster")

    def request_errors(self, api_key, *errors):
        pytest.skip("fault injection needs the mock cluster")

    def clear_errors(self, api_key):
        pytest.skip("fault injection needs the mock cluster")

    def rtt(self, broker, ms):
        pytest.skip("fault injection needs the mock cluster")

    def set_leader(self, topic, partition, broker):
        pytest.skip("fault injection needs the mock cluster")

    def stop(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def kafka_for_tests():
    """ExternalKafka if $KAFKA_BROKERS is set, else a fresh local Apache Kafka."""
    if os.environ.get("KAFKA_BROKERS"):
        return ExternalKafka()
    return KafkaCluster(brokers=1)


def _message_dict(msg):
    headers = {}
    for k, v in msg.headers() or []:
        headers[k] = v
    return {
        "key": msg.key(),
        "value": msg.value(),
        "headers": headers,
        "offset": msg.offset(),
        "partition": msg.partition(),
        "timestamp": msg.timestamp(),
    }


def _topic_exists(client, topic):
    try:
        md = client.list_topics(timeout=5)
    except KafkaException:
        return False
    t = md.topics.get(topic)
    return t is not None and t.error is None and bool(t.partitions)


def manual_consumer(bootstrap, **extra):
    """A consumer for manual assignment that never commits offsets."""
    return Consumer({
        "bootstrap.servers": bootstrap,
        # Required by the client even though only manual assignment is used
        # and nothing is committed.
        "group.id": f"kafka_sync_pytest_{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "topic.metadata.refresh.interval.ms": 1000,
        **extra,
    })


def _consume(bootstrap, topic, expect, idle_timeout, total_timeout,
             partition, start_offset):
    consumer = manual_consumer(bootstrap)
    messages = []
    try:
        start = last = time.monotonic()
        # Reading must never create the topic: the mock ignores
        # allow.auto.create.topics (its Metadata API predates it) and would
        # make a 4-partition topic, masking a producer that never wrote.
        # Metadata for all topics does not auto-create, so wait on that.
        while not _topic_exists(consumer, topic):
            now = time.monotonic()
            if now - last >= idle_timeout or (
                    total_timeout is not None
                    and now - start >= total_timeout):
                return messages
            time.sleep(0.1)
        consumer.assign([TopicPartition(topic, partition, start_offset)])
        while expect is None or len(messages) < expect:
            now = time.monotonic()
            if now - last >= idle_timeout:
                break
            if total_timeout is not None and now - start >= total_timeout:
                break
            msg = consumer.poll(min(0.2, idle_timeout))
            if msg is None:
                continue
            if msg.error():
                code = msg.error().code()
                # The topic may simply not exist yet; keep waiting for it.
                if code in (KafkaError._PARTITION_EOF,
                            KafkaError.UNKNOWN_TOPIC_OR_PART,
                            KafkaError._UNKNOWN_PARTITION,
                            KafkaError._UNKNOWN_TOPIC):
                    continue
                raise KafkaException(msg.error())
            messages.append(_message_dict(msg))
            last = time.monotonic()
    finally:
        consumer.close()
    return messages


def read_topic(bootstrap, topic, timeout=5.0, expect=None, partition=0,
               start_offset=OFFSET_BEGINNING):
    """Read a partition from the beginning (manual assignment, no commits).

    Stops once `expect` messages were read, or after `timeout` seconds
    without a new message; a topic that does not exist yet counts as no
    message and is never auto-created. Returns dicts with key, value,
    headers (dict of str -> bytes), offset, partition and timestamp.
    """
    return _consume(bootstrap, topic, expect, timeout, None, partition,
                    start_offset)


def wait_for_messages(bootstrap, topic, count, timeout=30.0, partition=0):
    """Wait until partition holds `count` messages; return them.

    Raises AssertionError with whatever arrived if the deadline passes.
    """
    messages = _consume(bootstrap, topic, count, timeout, timeout, partition,
                        OFFSET_BEGINNING)
    if len(messages) < count:
        raise AssertionError(
            f"expected {count} messages on {topic}[{partition}] within "
            f"{timeout}s, got {len(messages)}: {messages!r}")
    return messages

