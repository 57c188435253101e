"""Secrets by reference: kafka_config names a secrets file
("kafka_sync.secrets_file") instead of holding the broker password, so the
password is in no SQL text, table, view or log; the producer worker and the
sidecar read the file when they connect, and again when it changed."""

import json
import os
import pwd
import tempfile
import uuid

import psycopg2
import psycopg2.errors
import pytest

from apply_env import Sidecar
from ks_helpers import wait_until


def write_secrets(path, password):
    with open(path, "w") as f:
        f.write(f"# kafka_sync secrets\nsasl.password = {password}\n")


@pytest.fixture
def secrets_file():
    d = tempfile.mkdtemp(prefix="ks_secrets_")
    path = os.path.join(d, "chat.properties")
    write_secrets(path, "placeholder")
    pg_user = pwd.getpwnam(os.environ.get("PGUSER_OS", "postgres"))
    for p in (d, path):
        os.chown(p, pg_user.pw_uid, pg_user.pw_gid)
    os.chmod(d, 0o700)
    os.chmod(path, 0o600)
    return path


def test_a_broker_password_given_by_file_is_in_no_sql_text_table_view_or_log_and_a_changed_file_is_picked_up(
        broker_factory, node_factory, secrets_file, pg_running):
    password = "pw-" + uuid.uuid4().hex
    wrong = "wrong-" + uuid.uuid4().hex
    kafka = broker_factory(sasl_users={"chat": password})
    config = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "chat",
              "kafka_sync.secrets_file": secrets_file, "kafka_sync.schemas": False,
              "reconnect.backoff.max.ms": 500}
    node = node_factory(kafka_cluster=kafka)
    kafka.create_topic(node.topic)
    write_secrets(secrets_file, password)

    conn = node.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET log_statement = 'all'")
            # a call that fails is logged with its statement: only the file's name is in it
            with pytest.raises(psycopg2.Error):
                cur.execute("SELECT kafka_sync.create_node('Not A Name', %s, topic_prefix => %s, kafka_config => %s)",
                            (kafka.sasl_bootstrap, node.prefix, json.dumps(config)))
            cur.execute("SELECT kafka_sync.create_node(%s, %s, topic_prefix => %s, kafka_config => %s)",
                        (node.name, kafka.sasl_bootstrap, node.prefix, json.dumps(config)))
    finally:
        conn.close()
    node.created = True
    node.wait_state("streaming", timeout=60)
    node.sql("INSERT INTO user_table VALUES ('one', 'x', 'online')")
    wait_until(lambda: node.status()["records_acknowledged"] >= 1, 30, "the first row acknowledged",
               diagnostics=node.diagnostics)

    # the file changes to a wrong password: a configuration reload restarts the
    # producer with it, and it cannot authenticate
    write_secrets(secrets_file, wrong)
    node.sql("SELECT pg_reload_conf()")
    # node_status says which broker refused what, not just "Broker transport failure"
    wait_until(lambda: (lambda s: s["state"] == "kafka_unavailable"
                        and kafka.sasl_bootstrap in (s["last_error"] or "")
                        and "authentication" in (s["last_error"] or "").lower())(node.status()),
               60, "the wrong password refused, with the broker and the reason", diagnostics=node.diagnostics)
    node.sql("INSERT INTO user_table VALUES ('two', 'x', 'online')")
    # and back to the right one
    write_secrets(secrets_file, password)
    node.sql("SELECT pg_reload_conf()")
    wait_until(lambda: (lambda s: s["state"] == "streaming" and s["records_acknowledged"] >= 1)(node.status()),
               60, "streaming again with the right password", diagnostics=node.diagnostics)

    # a subscriber in another database reads the topic with the same file
    sub = node_factory(kafka_cluster=kafka)
    sub.sql("SELECT kafka_sync.create_subscription('from_n', %s, %s, topic_prefix => %s, kafka_config => %s, "
            "tables => ARRAY['user_table']::regclass[])",
            (node.name, kafka.sasl_bootstrap, node.prefix, json.dumps(config)))
    log = tempfile.NamedTemporaryFile(prefix="sidecar_secrets_", suffix=".log", delete=False)
    log.close()
    sidecar = Sidecar(pg_running.dsn(sub.db), log.name).start()
    try:
        wait_until(lambda: sub.table_keys() == {"one", "two"}, 60, "the rows through SASL",
                   diagnostics=lambda: sidecar.log_text()[-3000:])
        sidecar_log = sidecar.log_text()
    finally:
        sidecar.kill9()

    shown = [
        pg_running.log_text(),
        sidecar_log,
        repr(node.sql("SELECT * FROM kafka_sync.node_status")),
        repr(node.sql("SELECT * FROM kafka_sync.node")),
        repr(sub.sql("SELECT * FROM kafka_sync.subscription_status")),
        repr(sub.sql("SELECT * FROM kafka_sync.subscription")),
    ]
    for secret in (password, wrong):
        assert not any(secret in text for text in shown), "a password from the secrets file was shown"
    assert "kafka_sync.create_node('Not A Name'" in shown[0], "the failing call was not logged (test broken?)"
    assert secrets_file in shown[0]


def test_a_secrets_file_the_server_cannot_read_is_refused_by_create_node(node_factory):
    node = node_factory()
    with pytest.raises(psycopg2.errors.InvalidParameterValue) as refused:
        node.sql("SELECT kafka_sync.create_node(%s, %s, kafka_config => %s)",
                 (node.name, node.kafka.bootstrap,
                  json.dumps({"kafka_sync.secrets_file": "/nonexistent/kafka_sync.properties"})))
    assert "cannot read the secrets file" in str(refused.value)
