"""Self-check of the pytest harness itself (kafka_env, pg_env), not of the
extension: if these fail, every product test would fail for unrelated
reasons."""

import uuid

from confluent_kafka import Producer

from kafka_env import read_topic
from pg_env import PgCluster


def test_kafka_roundtrip(kafka):
    topic = f"harness_{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    producer = Producer({"bootstrap.servers": kafka.bootstrap,
                         "enable.idempotence": True})
    for i in range(3):
        producer.produce(topic, partition=0, key=f"k{i}".encode(),
                         value=f"v{i}".encode(),
                         headers=[("n", str(i).encode())])
    assert producer.flush(15) == 0

    msgs = read_topic(kafka.bootstrap, topic, timeout=10, expect=3)
    assert [m["key"] for m in msgs] == [b"k0", b"k1", b"k2"]
    assert [m["value"] for m in msgs] == [b"v0", b"v1", b"v2"]
    assert [m["headers"] for m in msgs] == [{"n": b"0"}, {"n": b"1"},
                                            {"n": b"2"}]
    assert [m["offset"] for m in msgs] == [0, 1, 2]
    assert all(m["partition"] == 0 for m in msgs)


def test_pg_cluster_lifecycle():
    pg = PgCluster("harness_selfcheck")
    try:
        pg.start()
        assert pg.sql("select 1") == [(1,)]
        pg.create_database("harness_db")
        assert pg.sql("select current_database()", dbname="harness_db") == [
            ("harness_db",)]
        pg.restart(mode="immediate")
        assert pg.sql("select %s::int + 1", (41,)) == [(42,)]
        pg.stop()
        assert not pg.is_running()
        assert "database system is shut down" in pg.log_text()
    finally:
        pg.destroy()
