"""Security (issue 15): what a database owner, a table owner or a peer topic
must not be able to make kafka_sync's superuser processes do. Each test
names the promise it checks."""

import json
import os
import time
import uuid

import pytest

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


def header_blob(headers):
    """Headers as the sidecar passes them to the apply functions."""
    out = b""
    for name, value in headers:
        out += len(name).to_bytes(4, "big") + name.encode() + len(value).to_bytes(4, "big") + value
    return out


def test_a_sidecar_role_that_is_not_a_superuser_applies_only_as_table_owners_it_may_become(kafka):
    """The sidecar connects as ks_sidecar, no superuser: granted only what
    kafka_sync.grant_sidecar_role() grants, and membership in app_owner, the
    owner of user_table. Single-row transactions (apply_transactions), a
    streamed large one (apply_chunk), a conflict (logged), progress reports
    and a dead letter all work; a trigger of user_table runs as app_owner; a
    record for a table of another owner is refused with a message that names
    the GRANT to make. The role gains nothing: it cannot read kafka_sync's
    tables, and after an apply_transactions call fails in its second
    transaction its session is still ks_sidecar."""
    from confluent_kafka import Producer
    from apply_env import Master, Sidecar
    import psycopg2
    prefix = "ks_role_" + uuid.uuid4().hex[:8]
    base = os.path.join(os.environ.get("KAFKA_SYNC_APPLY_DIR", "/tmp/kafka_sync_pytest_apply"), uuid.uuid4().hex[:6])
    chat1 = Master("chat1", kafka, prefix, base)
    sidecar = None
    try:
        for stmt in ("CREATE EXTENSION kafka_sync",
                     "CREATE ROLE ks_sidecar LOGIN", "CREATE ROLE app_owner", "CREATE ROLE other_owner",
                     "CREATE TABLE user_table (user_id text PRIMARY KEY, user_name text, user_status text)",
                     "INSERT INTO user_table VALUES ('c1', 'local', 'online')",  # before the trigger
                     "CREATE TABLE secret_table (user_id text PRIMARY KEY, user_name text, user_status text)",
                     "CREATE TABLE trigger_log (who text)",
                     """CREATE FUNCTION log_user() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN INSERT INTO public.trigger_log VALUES (current_user); RETURN NEW; END $$""",
                     "CREATE TRIGGER who_applies BEFORE INSERT ON user_table FOR EACH ROW EXECUTE FUNCTION log_user()",
                     "ALTER TABLE user_table ENABLE ALWAYS TRIGGER who_applies",
                     "ALTER TABLE user_table OWNER TO app_owner", "ALTER TABLE trigger_log OWNER TO app_owner",
                     "ALTER FUNCTION log_user() OWNER TO app_owner",
                     "ALTER TABLE secret_table OWNER TO other_owner",
                     "GRANT app_owner TO ks_sidecar",
                     "CREATE SCHEMA trap AUTHORIZATION ks_sidecar",
                     "SELECT kafka_sync.grant_sidecar_role('ks_sidecar')"):
            chat1.sql(stmt)
        kafka.create_topic(f"{prefix}.ghost")
        chat1.sql("SELECT kafka_sync.create_subscription('from_ghost', 'ghost', %s, topic_prefix => %s, "
                  "on_error => 'skip', tables => ARRAY['user_table', 'secret_table']::regclass[])",
                  (kafka.bootstrap, prefix))
        dsn = chat1.pg.dsn("chat").replace(f"user={chat1.pg.user}", "user=ks_sidecar")
        assert "user=ks_sidecar" in dsn
        sidecar = Sidecar(dsn, chat1.pg.dir / "sidecar_role.log").start()

        p = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5})

        def send(records):
            for value, headers in records:
                p.produce(f"{prefix}.ghost", value=value, headers=headers, partition=0)
            assert p.flush(30) == 0

        def secret(i, lsn):
            value, headers = ghost_record(i, lsn, "s1", end=1)
            return value.replace(b'"user_table"', b'"secret_table"'), headers

        def diagnostics():
            return chat1.diagnostics() + "\n--- ks_sidecar's sidecar:\n" + sidecar.log_text()[-4000:]

        send([ghost_record(1, f"0/{0x100 + i:X}", f"g{i}", end=1) for i in range(10)])  # ten transactions
        send([ghost_record(1, "0/1000", "c1", end=1)])  # conflicts with the local c1 (older: kept local)
        send([ghost_record(i, "0/2000", f"big{i}", end=2500 if i == 2500 else None) for i in range(1, 2501)])
        send([secret(1, "0/3000")])
        send([ghost_record(1, "0/4000", "after", end=1)])
        wait_until(lambda: chat1.sql("SELECT count(*) FROM user_table WHERE user_id = 'after'")[0][0] == 1, 90,
                   "the records applied by ks_sidecar", diagnostics=diagnostics)
        assert chat1.sql("SELECT count(*) FROM user_table")[0][0] == 1 + 10 + 2500 + 1
        assert chat1.sql("SELECT count(DISTINCT xmin::text) FROM user_table WHERE user_id LIKE 'big%'")[0][0] == 1
        assert chat1.sql("SELECT DISTINCT who FROM trigger_log") == [("app_owner",)]
        assert chat1.sql("SELECT kind, resolution FROM kafka_sync.conflicts") == [("insert_exists", "keep_local")]
        assert chat1.sql("SELECT count(*) FROM secret_table")[0][0] == 0
        (error,), = chat1.sql("SELECT error FROM kafka_sync.dead_letters")
        assert 'role "ks_sidecar" cannot apply changes to public.secret_table as its owner "other_owner"' in error
        state, applied = chat1.sql("SELECT state, applied_offset FROM kafka_sync.subscription_status")[0]
        assert state == "running" and applied == 10 + 1 + 2500 + 1 + 1 - 1, (state, applied)

        # on_error 'pause': record_failure, as ks_sidecar
        chat1.sql("SELECT kafka_sync.alter_subscription('from_ghost', on_error => 'pause')")
        send([secret(1, "0/5000")])
        wait_until(lambda: chat1.sql("SELECT state FROM kafka_sync.subscription_status")[0][0] == "error", 60,
                   "paused at the record for secret_table", diagnostics=diagnostics)
        assert "GRANT \"other_owner\" TO \"ks_sidecar\"" in sidecar.log_text() or \
            "other_owner" in chat1.sql("SELECT last_error FROM kafka_sync.subscription_status")[0][0]
        sidecar.stop()
        chat1.sql("SELECT kafka_sync.resume_subscription('from_ghost', skip_failed => true)")

        # the role itself gains nothing
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for table in ("kafka_sync.subscription", "kafka_sync.node", "secret_table"):
                    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                        cur.execute(f"SELECT * FROM {table}")
                good = ghost_record(1, "0/6000", "direct", end=1)
                bad = secret(1, "0/7000")  # a millisecond later: its own local transaction
                bad = (bad[0], [(k, b"1700000000001" if k == "kafka_sync.commit_ts" else v) for k, v in bad[1]])
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute("CALL kafka_sync.apply_transactions('from_ghost', %s, %s, %s, %s)",
                                ([900, 901], [None, None], [psycopg2.Binary(good[0]), psycopg2.Binary(bad[0])],
                                 [psycopg2.Binary(header_blob(good[1])), psycopg2.Binary(header_blob(bad[1]))]))
                cur.execute("SELECT current_user, session_user")
                assert cur.fetchone() == ("ks_sidecar", "ks_sidecar")
                # its own operator first in its search_path: the bookkeeping (as the procedure's owner) never uses it
                cur.execute("CREATE TABLE trap.calls (who text)")
                cur.execute("GRANT INSERT ON trap.calls TO PUBLIC")
                cur.execute("""CREATE FUNCTION trap.text_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
                               BEGIN INSERT INTO trap.calls VALUES (current_user);
                                     RETURN a OPERATOR(pg_catalog.=) b; END $$""")
                cur.execute("CREATE OPERATOR trap.= (LEFTARG = text, RIGHTARG = text, FUNCTION = trap.text_eq)")
                cur.execute("SET search_path = trap, pg_catalog")
                good2 = ghost_record(1, "0/8000", "direct2", end=1)
                cur.execute("CALL kafka_sync.apply_transactions('from_ghost', %s, %s, %s, %s)",
                            ([902], [None], [psycopg2.Binary(good2[0])], [psycopg2.Binary(header_blob(good2[1]))]))
                cur.execute("RESET search_path")
                cur.execute("SELECT DISTINCT who FROM trap.calls")
                assert cur.fetchall() in ([], [("ks_sidecar",)]), "the owner's bookkeeping ran the caller's operator"
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute("SELECT * FROM kafka_sync.subscription")
        finally:
            conn.close()
        # its first transaction committed before the second failed
        assert chat1.sql("SELECT count(*) FROM user_table WHERE user_id = 'direct'")[0][0] == 1
    finally:
        if sidecar:
            sidecar.kill9()
        chat1.destroy()
