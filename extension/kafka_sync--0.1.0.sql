-- kafka_sync 0.1.0: nodes (the source path). Subscriptions come with the apply path.
\echo Use "CREATE EXTENSION kafka_sync" to load this file. \quit

-- A node: this database publishing its changes to <topic_prefix>.<node_name>.
-- kafka_config may hold broker credentials: only superusers read this table.
CREATE TABLE kafka_sync.node (
    node_name     text PRIMARY KEY,
    one_per_db    boolean NOT NULL DEFAULT true UNIQUE CHECK (one_per_db),
    brokers       text NOT NULL,
    publication   name NOT NULL,
    topic_prefix  text NOT NULL,
    kafka_config  jsonb NOT NULL DEFAULT '{}',
    snapshot      boolean NOT NULL,
    snapshot_done boolean NOT NULL DEFAULT false,
    enabled       boolean NOT NULL DEFAULT true,
    slot_name     name NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON kafka_sync.node FROM PUBLIC;

CREATE FUNCTION kafka_sync._check_requirements() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'kafka_sync_check_requirements';
CREATE FUNCTION kafka_sync._validate_kafka_config(keys text[], vals text[]) RETURNS void
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'kafka_sync_validate_kafka_config';
CREATE FUNCTION kafka_sync._check_publication(publication name) RETURNS void
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'kafka_sync_check_publication';
CREATE FUNCTION kafka_sync._node_created() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'kafka_sync_node_created';
CREATE FUNCTION kafka_sync._stop_node_worker(for_drop boolean) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'kafka_sync_stop_node_worker';
CREATE FUNCTION kafka_sync._worker_status(
    OUT state text, OUT last_error text, OUT records_produced bigint,
    OUT records_acknowledged bigint, OUT last_ack_time timestamptz, OUT worker_pid int)
    LANGUAGE c AS 'MODULE_PATHNAME', 'kafka_sync_worker_status';

-- Flattens and checks kafka_config: an object of scalar values.
CREATE FUNCTION kafka_sync._check_kafka_config(kafka_config jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad text;
BEGIN
    IF kafka_config IS NULL OR jsonb_typeof(kafka_config) <> 'object' THEN
        RAISE EXCEPTION 'kafka_config must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example ''{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}''.';
    END IF;
    SELECT key INTO bad FROM jsonb_each(kafka_config)
     WHERE jsonb_typeof(value) NOT IN ('string', 'number', 'boolean') LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'kafka_config property "%" must be a string, number or boolean', bad
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM kafka_sync._validate_kafka_config(
        ARRAY(SELECT key FROM jsonb_each_text(kafka_config) ORDER BY key),
        ARRAY(SELECT value FROM jsonb_each_text(kafka_config) ORDER BY key));
END $$;

CREATE FUNCTION kafka_sync.create_node(
    node_name    text,
    brokers      text,
    publication  name    DEFAULT 'kafka_sync',
    topic_prefix text    DEFAULT 'kafka_sync',
    kafka_config jsonb   DEFAULT '{}',
    snapshot     boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    existing text;
    slot name := 'kafka_sync_' || node_name;
BEGIN
    PERFORM kafka_sync._check_requirements();
    IF node_name IS NULL OR node_name !~ '^[a-z0-9_]{1,40}$' THEN
        RAISE EXCEPTION 'invalid node name "%"', node_name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A node name has 1 to 40 characters: lower-case letters, digits and underscores.';
    END IF;
    IF brokers IS NULL OR btrim(brokers) = '' THEN
        RAISE EXCEPTION 'brokers must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass the Kafka bootstrap servers, e.g. ''kafka1:9092,kafka2:9092''.';
    END IF;
    IF topic_prefix IS NULL OR topic_prefix !~ '^[A-Za-z0-9._-]{1,200}$' THEN
        RAISE EXCEPTION 'invalid topic prefix "%"', topic_prefix
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Kafka topic names use letters, digits, ".", "_" and "-".';
    END IF;
    SELECT n.node_name INTO existing FROM kafka_sync.node n;
    IF existing IS NOT NULL THEN
        RAISE EXCEPTION 'this database is already the kafka_sync node "%"', existing
            USING ERRCODE = 'duplicate_object',
                  HINT = 'A database is one node. Use kafka_sync.drop_node() first to re-create it.';
    END IF;
    IF publication IS NULL THEN
        RAISE EXCEPTION 'publication must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM kafka_sync._check_publication(publication);
    PERFORM kafka_sync._check_kafka_config(kafka_config);
    IF EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = slot) THEN
        RAISE EXCEPTION 'replication slot "%" already exists', slot
            USING ERRCODE = 'duplicate_object',
                  HINT = format('Another node of this server uses the name %s, or a dropped node left it: '
                                'SELECT pg_drop_replication_slot(%L) if it is unused.', node_name, slot);
    END IF;
    INSERT INTO kafka_sync.node (node_name, brokers, publication, topic_prefix, kafka_config, snapshot, slot_name)
    VALUES (node_name, brokers, publication, topic_prefix, kafka_config, snapshot, slot);
    PERFORM kafka_sync._node_created();
    RETURN topic_prefix || '.' || node_name;
END $$;

CREATE FUNCTION kafka_sync.drop_node() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n kafka_sync.node;
BEGIN
    SELECT * INTO n FROM kafka_sync.node;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this database is not a kafka_sync node'
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create one with kafka_sync.create_node(node_name, brokers).';
    END IF;
    PERFORM kafka_sync._stop_node_worker(true);
    DELETE FROM kafka_sync.node;
    IF EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = n.slot_name) THEN
        PERFORM pg_drop_replication_slot(n.slot_name);
    END IF;
END $$;

-- Pausing stops publishing; WAL is retained (see retained_wal_bytes) and
-- everything committed meanwhile is published after resume_node().
CREATE FUNCTION kafka_sync.pause_node() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE kafka_sync.node SET enabled = false;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this database is not a kafka_sync node'
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create one with kafka_sync.create_node(node_name, brokers).';
    END IF;
    PERFORM kafka_sync._stop_node_worker(false);
END $$;

CREATE FUNCTION kafka_sync.resume_node() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE kafka_sync.node SET enabled = true;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this database is not a kafka_sync node'
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create one with kafka_sync.create_node(node_name, brokers).';
    END IF;
    PERFORM kafka_sync._node_created();
END $$;

REVOKE ALL ON FUNCTION kafka_sync.create_node(text, text, name, text, jsonb, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.pause_node() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.resume_node() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.drop_node() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._check_requirements() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._validate_kafka_config(text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._check_kafka_config(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._check_publication(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._node_created() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._stop_node_worker(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._worker_status() FROM PUBLIC;

-- Status of this database's node. Never shows kafka_config.
CREATE VIEW kafka_sync.node_status AS
SELECT n.node_name,
       n.topic_prefix || '.' || n.node_name AS topic,
       CASE WHEN n.enabled THEN w.state ELSE 'paused' END AS state,
       w.last_error,
       s.confirmed_flush_lsn AS confirmed_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_wal_bytes,
       w.records_produced,
       w.records_acknowledged,
       w.last_ack_time,
       w.worker_pid,
       n.snapshot_done
  FROM kafka_sync.node n
  CROSS JOIN kafka_sync._worker_status() w
  LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = n.slot_name;
REVOKE ALL ON kafka_sync.node_status FROM PUBLIC;
GRANT SELECT ON kafka_sync.node_status TO pg_monitor;
GRANT EXECUTE ON FUNCTION kafka_sync._worker_status() TO pg_monitor;

-- Objects are protected one by one; the schema itself may be looked into.
GRANT USAGE ON SCHEMA kafka_sync TO PUBLIC;
