"""Security (issue 15): what a database owner, a table owner or a peer topic
must not be able to make kafka_sync's superuser processes do. Each test
names the promise it checks."""

import json
import os
import time
import uuid

from ks_helpers import wait_until


def test_the_producer_worker_ignores_the_database_owners_search_path(node_factory):
    """A database owner sets the database's search_path to put public
    first and creates, in public, a function named like one the producer
    worker calls (jsonb_each_text, when it reads its kafka_config). The
    worker runs as superuser: it must call pg_catalog's, never theirs."""
    node = node_factory()
    db = node.db
    node.sql("CREATE ROLE ks_db_owner")
    try:
        node.sql(f'ALTER DATABASE "{db}" OWNER TO ks_db_owner')
        node.sql("CREATE TABLE public.trap_calls (who text, at timestamptz DEFAULT now())")
        node.sql("GRANT INSERT ON public.trap_calls TO PUBLIC")
        conn = node.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET ROLE ks_db_owner")
                cur.execute(f'ALTER DATABASE "{db}" SET search_path = public, pg_catalog')
                cur.execute("""
                    CREATE FUNCTION public.jsonb_each_text(j jsonb, OUT key text, OUT value text)
                    RETURNS SETOF record LANGUAGE plpgsql AS $$
                    BEGIN
                        INSERT INTO public.trap_calls (who) VALUES (current_user);
                        RETURN QUERY SELECT e.key, e.value FROM pg_catalog.jsonb_each_text(j) e;
                    END $$""")
                cur.execute("RESET ROLE")
        finally:
            conn.close()
        node.create(snapshot=False)  # a new worker connects with the database's settings
        node.wait_state("streaming", timeout=60)
        node.sql("SELECT kafka_sync.pause_node()")
        node.sql("SELECT kafka_sync.resume_node()")
        node.wait_state("streaming", timeout=60)
        calls = node.sql("SELECT who FROM public.trap_calls")
        assert calls == [], f"the producer worker ran the database owner's function as {calls}"
    finally:
        if node.sql("SELECT count(*) FROM kafka_sync.node")[0][0]:
            node.drop()
        node.sql(f'ALTER DATABASE "{db}" RESET search_path')
        node.sql(f'ALTER DATABASE "{db}" OWNER TO CURRENT_USER')
        node.sql("DROP FUNCTION IF EXISTS public.jsonb_each_text(jsonb)")
        node.sql("DROP ROLE ks_db_owner")


def ghost_record(i, lsn, key, end=None, origin="ghost"):
    """A record of a synthetic peer's transaction at lsn: a row of user_table."""
    value = json.dumps({"op": "c", "before": None,
                        "after": {"user_id": key, "user_name": "x", "user_status": "online"},
                        "source": {"schema": "public", "table": "user_table", "origin": origin}}).encode()
    headers = [("kafka_sync.origin", origin.encode()), ("kafka_sync.lsn", lsn.encode()),
               ("kafka_sync.seq", str(i).encode()), ("kafka_sync.commit_ts", b"1700000000000")]
    if end is not None:
        headers.append(("kafka_sync.txn_end", str(end).encode()))
    return value, headers


def test_a_peer_transaction_that_never_ends_holds_no_locks_and_applies_whole_once_its_end_arrives(kafka):
    """A peer (or whoever can write to its topic) starts a transaction and
    never ends it: first it stops sending, then it sends one record every
    0.4 s for ever. Applied in part, it would hold its local transaction,
    its row locks and the database's apply lock, so no other peer could
    apply. With kafka_sync.partial_transaction_wait (no record for that
    long) and kafka_sync.partial_transaction_hold (applied in part for that
    long) the part is rolled back, the subscription shows
    waiting_for_transaction_end, another peer's changes apply meanwhile, and
    once the last record is in Kafka the transaction applies whole, in one
    local transaction."""
    from confluent_kafka import Producer
    from apply_env import Master
    users = "CREATE TABLE user_table (user_id text PRIMARY KEY, user_name text, user_status text)"
    prefix = "ks_never_" + uuid.uuid4().hex[:8]
    base = os.path.join(os.environ.get("KAFKA_SYNC_APPLY_DIR", "/tmp/kafka_sync_pytest_apply"), uuid.uuid4().hex[:6])
    chat1 = Master("chat1", kafka, prefix, base)
    try:
        chat1.sql("CREATE EXTENSION kafka_sync")
        chat1.sql(users)
        chat1.sql("ALTER SYSTEM SET kafka_sync.partial_transaction_wait = '2s'")
        chat1.sql("ALTER SYSTEM SET kafka_sync.partial_transaction_hold = '3s'")
        chat1.sql("SELECT pg_reload_conf()")
        for peer in ("ghost", "other"):
            kafka.create_topic(f"{prefix}.{peer}")
            chat1.sql("SELECT kafka_sync.create_subscription(%s, %s, %s, topic_prefix => %s, "
                      "tables => ARRAY['user_table']::regclass[])",
                      (f"from_{peer}", peer, kafka.bootstrap, prefix))
        chat1.sidecar.start()
        p = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5})

        def send(topic, records):
            for value, headers in records:
                p.produce(f"{prefix}.{topic}", value=value, headers=headers, partition=0)
            assert p.flush(30) == 0

        def state(peer):
            return chat1.sql("SELECT state, last_error FROM kafka_sync.subscription_status WHERE peer = %s",
                             (peer,))[0]

        def other_applies(tag, lsn):
            send("other", [ghost_record(1, lsn, tag, end=1, origin="other")])
            wait_until(lambda: chat1.sql("SELECT count(*) FROM user_table WHERE user_id = %s", (tag,))[0][0] == 1,
                       30, f"the other peer's change {tag} applied", diagnostics=chat1.diagnostics)

        def ghost_rows():
            return chat1.sql("SELECT count(*) FROM user_table WHERE user_id LIKE 'g%'")[0][0]

        # 1. 3,000 records (streamed in chunks of 1,000), then silence
        send("ghost", [ghost_record(i, "0/5000000", f"g1_{i}") for i in range(1, 3001)])
        wait_until(lambda: state("ghost")[0] == "waiting_for_transaction_end", 60,
                   "the stalled transaction rolled back", diagnostics=chat1.diagnostics)
        assert "waiting for the last record of transaction 0/5000000" in state("ghost")[1]
        assert ghost_rows() == 0
        other_applies("o1", "0/100")
        assert "no record for 2 s inside transaction 0/5000000" in chat1.sidecar.log_text()
        # its end arrives: applied whole
        send("ghost", [ghost_record(3001, "0/5000000", "g1_3001", end=3001)])
        wait_until(lambda: ghost_rows() == 3001, 60, "the transaction applied", diagnostics=chat1.diagnostics)
        assert chat1.sql("SELECT count(DISTINCT xmin::text) FROM user_table WHERE user_id LIKE 'g1_%'")[0][0] == 1
        wait_until(lambda: state("ghost")[0] == "running", 30, "ghost running again")

        # 2. a transaction that goes on and on: one record every 0.4 s after the first 3,000
        send("ghost", [ghost_record(i, "0/6000000", f"g2_{i}") for i in range(1, 3001)])
        deadline = time.monotonic() + 12
        i = 3000
        seen_waiting = False
        while time.monotonic() < deadline:
            i += 1
            send("ghost", [ghost_record(i, "0/6000000", f"g2_{i}")])
            seen_waiting = seen_waiting or state("ghost")[0] == "waiting_for_transaction_end"
            time.sleep(0.4)
        assert seen_waiting, chat1.diagnostics()
        log = chat1.sidecar.log_text()
        assert "transaction 0/6000000 (from offset 3001) was applied in part for 3 s" in log, log[-3000:]
        assert chat1.sql("SELECT count(*) FROM user_table WHERE user_id LIKE 'g2_%'")[0][0] == 0
        other_applies("o2", "0/200")
        send("ghost", [ghost_record(i + 1, "0/6000000", f"g2_{i + 1}", end=i + 1)])
        wait_until(lambda: chat1.sql("SELECT count(*) FROM user_table WHERE user_id LIKE 'g2_%'")[0][0] == i + 1,
                   60, "the long transaction applied", diagnostics=chat1.diagnostics)
        assert chat1.sql("SELECT count(DISTINCT xmin::text) FROM user_table WHERE user_id LIKE 'g2_%'")[0][0] == 1
    finally:
        chat1.destroy()
