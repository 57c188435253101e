"""Security (issue 15): what a database owner, a table owner or a peer topic
must not be able to make kafka_sync's superuser processes do. Each test
names the promise it checks."""

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
