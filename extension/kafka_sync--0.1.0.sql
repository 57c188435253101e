-- kafka_sync 0.1.0: nodes (the source path), subscriptions and the apply functions (the apply path).
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
CREATE FUNCTION kafka_sync._create_node_slot(slot_name name) RETURNS pg_lsn
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'kafka_sync_create_node_slot';
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

-- Argument checks shared by create_node and create_subscription.
CREATE FUNCTION kafka_sync._check_node_name(node_name text, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF node_name IS NULL OR node_name !~ '^[a-z0-9_]{1,40}$' THEN
        RAISE EXCEPTION 'invalid % "%"', what, node_name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A node name has 1 to 40 characters: lower-case letters, digits and underscores.';
    END IF;
END $$;

CREATE FUNCTION kafka_sync._check_kafka_target(brokers text, topic_prefix text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
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
END $$;

-- The node row of this database, or a clear error.
CREATE FUNCTION kafka_sync._this_node() RETURNS kafka_sync.node
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n kafka_sync.node;
BEGIN
    SELECT * INTO n FROM kafka_sync.node FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'this database is not a kafka_sync node'
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create one with kafka_sync.create_node(node_name, brokers).';
    END IF;
    RETURN n;
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
    PERFORM kafka_sync._check_node_name(node_name, 'node name');
    PERFORM kafka_sync._check_kafka_target(brokers, topic_prefix);
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
    -- the slot first, consistent before this returns (and dropped again if this transaction aborts)
    PERFORM kafka_sync._create_node_slot(slot);
    INSERT INTO kafka_sync.node (node_name, brokers, publication, topic_prefix, kafka_config, snapshot, slot_name)
    VALUES (node_name, brokers, publication, topic_prefix, kafka_config, snapshot, slot);
    -- the initial snapshot: a resnapshot, which the worker publishes before anything it decodes
    IF snapshot THEN
        INSERT INTO kafka_sync.resnapshot_request (node_name, requested_at) VALUES (node_name, clock_timestamp());
    END IF;
    PERFORM kafka_sync._track_deletes();
    PERFORM kafka_sync._node_created();
    RETURN topic_prefix || '.' || node_name;
END $$;

CREATE FUNCTION kafka_sync.drop_node() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n kafka_sync.node := kafka_sync._this_node();
    rel regclass;
BEGIN
    PERFORM kafka_sync._stop_node_worker(true);
    DELETE FROM kafka_sync.node;
    -- no node, no conflict resolution: the delete-tracking triggers go too
    FOR rel IN SELECT g.tgrelid::regclass FROM pg_trigger g WHERE g.tgname = 'kafka_sync_tombstone' LOOP
        EXECUTE format('DROP TRIGGER kafka_sync_tombstone ON %s', rel);
    END LOOP;
    DELETE FROM kafka_sync.tombstones;
    -- the worker is gone; the slot is released by its very last exit step
    FOR i IN 1 .. 200 LOOP
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = n.slot_name AND s.active);
        PERFORM pg_sleep(0.05);
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_name = n.slot_name) THEN
        PERFORM pg_drop_replication_slot(n.slot_name);
    END IF;
END $$;

-- New kafka_config for the node (replacing the old one): its worker
-- restarts with it when this commits; nothing is lost (what Kafka had not
-- acknowledged is sent again). The way out of "a record ... is larger than
-- message.max.bytes", and how to rotate credentials given by value.
CREATE FUNCTION kafka_sync.alter_node(kafka_config jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n kafka_sync.node := kafka_sync._this_node();
BEGIN
    PERFORM kafka_sync._check_kafka_config(kafka_config);
    UPDATE kafka_sync.node SET kafka_config = alter_node.kafka_config;
    IF n.enabled THEN
        PERFORM kafka_sync._stop_node_worker(false);
        PERFORM kafka_sync._node_created();
    END IF;
END $$;
REVOKE ALL ON FUNCTION kafka_sync.alter_node(jsonb) FROM PUBLIC;

-- Pausing stops publishing; WAL is retained (see retained_wal_bytes) and
-- everything committed meanwhile is published after resume_node().
CREATE FUNCTION kafka_sync.pause_node() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM kafka_sync._this_node();
    UPDATE kafka_sync.node SET enabled = false;
    PERFORM kafka_sync._stop_node_worker(false);
END $$;

CREATE FUNCTION kafka_sync.resume_node() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM kafka_sync._this_node();
    UPDATE kafka_sync.node SET enabled = true;
    PERFORM kafka_sync._node_created();
END $$;

REVOKE ALL ON FUNCTION kafka_sync.create_node(text, text, name, text, jsonb, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.pause_node() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.resume_node() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.drop_node() FROM PUBLIC;

-- kafka_sync.resnapshot(): the node's producer worker publishes every row
-- again. The request is durable: until Kafka acknowledged every record of
-- the snapshot (completed_at), a worker that stops publishes it again when
-- it runs next. One row per node; a new request replaces a fulfilled one.
CREATE TABLE kafka_sync.resnapshot_request (
    node_name    text PRIMARY KEY REFERENCES kafka_sync.node ON DELETE CASCADE,
    requested_at timestamptz NOT NULL,
    started_at   timestamptz,   -- a worker began publishing it
    completed_at timestamptz,   -- NULL: pending
    snapshot_lsn pg_lsn,        -- kafka_sync.lsn header of the last completed snapshot
    records      bigint         -- its number of records
);
REVOKE ALL ON kafka_sync.resnapshot_request FROM PUBLIC;

CREATE FUNCTION kafka_sync._wake_producer() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'kafka_sync_wake_producer';

CREATE FUNCTION kafka_sync.resnapshot() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n kafka_sync.node := kafka_sync._this_node();
    w record;
    earlier timestamptz;
BEGIN
    SELECT r.requested_at INTO earlier FROM kafka_sync.resnapshot_request r WHERE r.completed_at IS NULL;
    INSERT INTO kafka_sync.resnapshot_request AS r (node_name, requested_at)
    VALUES (n.node_name, clock_timestamp())
    ON CONFLICT (node_name) DO UPDATE SET requested_at = excluded.requested_at, completed_at = NULL,
        -- an initial snapshot a worker has begun is never served ahead of the stream again
        started_at = CASE WHEN n.snapshot_done OR NOT n.snapshot THEN NULL ELSE r.started_at END;
    PERFORM kafka_sync._wake_producer();
    IF earlier IS NOT NULL THEN
        RAISE NOTICE 'a snapshot requested at % is not fully published yet', earlier
            USING DETAIL = 'This request replaces it; if the worker is already publishing it, it publishes the rows once more afterwards.';
    END IF;
    SELECT * INTO w FROM kafka_sync._worker_status();
    IF NOT n.enabled THEN
        RAISE NOTICE 'node "%" is paused: the snapshot is published after kafka_sync.resume_node()', n.node_name;
    ELSIF w.worker_pid IS NULL THEN
        RAISE NOTICE 'the producer worker of node "%" is not running (state %): the snapshot is published when it runs',
                     n.node_name, w.state
            USING HINT = 'See kafka_sync.node_status.last_error.';
    END IF;
END $$;

REVOKE ALL ON FUNCTION kafka_sync._wake_producer() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.resnapshot() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._check_requirements() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._check_node_name(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._check_kafka_target(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._this_node() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._validate_kafka_config(text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._check_kafka_config(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._check_publication(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._node_created() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._stop_node_worker(boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._create_node_slot(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._worker_status() FROM PUBLIC;

-- Status of this database's node. Never shows kafka_config.
CREATE VIEW kafka_sync.node_status AS
SELECT n.node_name,
       n.topic_prefix || '.' || n.node_name AS topic,
       -- an enabled node whose worker is not running yet: the launcher starts it
       CASE WHEN NOT n.enabled THEN 'paused'
            WHEN w.state = 'stopped' THEN 'starting'
            -- streaming, but its slot keeps more WAL than kafka_sync.retained_wal_warning
            WHEN w.state = 'streaming'
                 AND pg_size_bytes(coalesce(current_setting('kafka_sync.retained_wal_warning', true), '0')) > 0
                 AND pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)
                     >= pg_size_bytes(current_setting('kafka_sync.retained_wal_warning', true)) THEN 'retaining_wal'
            ELSE w.state END AS state,
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

-- ---------------------------------------------------------------------------
-- Subscriptions: this database applies a peer node's topic.
-- ---------------------------------------------------------------------------

-- One row per subscription. next_offset (the Kafka offset of partition 0 to
-- apply next) changes in the same transaction as the applied rows; so does
-- the replication origin's progress. kafka_config may hold secrets.
CREATE TABLE kafka_sync.subscription (
    sub_name           text PRIMARY KEY,
    peer_node          text NOT NULL UNIQUE,
    brokers            text NOT NULL,
    topic_prefix       text NOT NULL,
    start              text NOT NULL,
    on_error           text NOT NULL CHECK (on_error IN ('pause', 'skip')),
    conflict_resolution text NOT NULL DEFAULT 'last_update_wins'
                       CHECK (conflict_resolution IN ('last_update_wins', 'first_update_wins', 'apply_remote',
                                                      'keep_local', 'error')),
    kafka_config       jsonb NOT NULL DEFAULT '{}',
    enabled            boolean NOT NULL DEFAULT true,
    paused_by_error    boolean NOT NULL DEFAULT false,
    origin_name        text NOT NULL,
    next_offset        bigint,
    skip_offset        bigint,      -- a failed record resume_subscription(skip_failed) passes over
    last_applied_lsn   pg_lsn,
    last_source_commit timestamptz,
    last_applied_at    timestamptz,
    rows_applied       bigint NOT NULL DEFAULT 0,
    conflicts          bigint NOT NULL DEFAULT 0,
    last_error         text,
    last_error_at      timestamptz,
    high_water         bigint,
    consumer_error     text,
    last_contact       timestamptz,
    -- the tables the peer's records may write (NULL: those of this node's
    -- publication), and whether its TRUNCATEs apply
    tables             regclass[],
    allow_truncate     boolean NOT NULL DEFAULT true,
    -- after a gap in the peer's topic: resynchronising from the peer's snapshot
    -- whose kafka_sync.lsn header is resync_lsn, first record at resync_from
    resync_lsn         pg_lsn,
    resync_from        bigint,
    resync_note        text,        -- what was lost, for subscription_status
    resync_incomplete  boolean NOT NULL DEFAULT false, -- a record of it was not applied: delete nothing
    -- the peer's kafka_sync.incarnation last seen: LSNs compare only within one
    peer_incarnation   text,
    last_resync_at     timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON kafka_sync.subscription FROM PUBLIC;

-- The keys of the rows in the snapshot a subscription resynchronises from
-- (encoded as kafka_sync.tombstones keys): at the snapshot's end, rows the
-- peer wrote last whose key is not here are deleted, then these go.
CREATE TABLE kafka_sync.resync_keys (
    sub_name text NOT NULL REFERENCES kafka_sync.subscription ON DELETE CASCADE,
    relid    oid NOT NULL,
    key      bytea NOT NULL,
    PRIMARY KEY (sub_name, relid, key)
);
REVOKE ALL ON kafka_sync.resync_keys FROM PUBLIC;

-- Records that could not be applied, kept as they arrived.
CREATE TABLE kafka_sync.dead_letters (
    id              bigserial PRIMARY KEY,
    sub_name        text NOT NULL,
    topic           text NOT NULL,
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    key             bytea,
    value           bytea,
    headers         jsonb NOT NULL DEFAULT '{}',
    error           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- the record's value size; value is NULL when that exceeds kafka_sync.max_logged_value_size
    value_bytes     integer
);
CREATE INDEX ON kafka_sync.dead_letters (sub_name, kafka_offset);
REVOKE ALL ON kafka_sync.dead_letters FROM PUBLIC;

-- Every conflict the apply side resolved (see README, "Conflicts"). Kept to
-- the newest kafka_sync.conflict_log_max_rows rows.
CREATE TABLE kafka_sync.conflicts (
    id               bigserial PRIMARY KEY,
    detected_at      timestamptz NOT NULL DEFAULT now(),
    sub_name         text NOT NULL,
    peer_node        text NOT NULL,
    table_name       text NOT NULL,
    key              jsonb,
    -- extension/apply/conflict_policy.hpp, ConflictKind
    kind             text NOT NULL CHECK (kind IN ('insert_exists', 'insert_deleted', 'update_update', 'update_missing',
                                                   'update_deleted', 'delete_updated', 'delete_missing', 'constraint')),
    local_row        jsonb,
    local_commit_ts  timestamptz,
    local_origin     text,
    remote_row       jsonb,
    remote_commit_ts timestamptz,
    remote_origin    text,
    resolution       text NOT NULL
);
CREATE INDEX ON kafka_sync.conflicts (detected_at);
REVOKE ALL ON kafka_sync.conflicts FROM PUBLIC;

-- kafka_sync.conflicts for monitoring: the row images and the key only to
-- whoever may read the table they come from (pg_monitor alone would see
-- columns it cannot SELECT).
CREATE VIEW kafka_sync.conflict_log WITH (security_barrier) AS
SELECT c.id, c.detected_at, c.sub_name, c.peer_node, c.table_name, c.kind, c.resolution,
       c.local_commit_ts, c.local_origin, c.remote_commit_ts, c.remote_origin,
       CASE WHEN r.readable THEN c.key END AS key,
       CASE WHEN r.readable THEN c.local_row END AS local_row,
       CASE WHEN r.readable THEN c.remote_row END AS remote_row
  FROM kafka_sync.conflicts c
  CROSS JOIN LATERAL (
      SELECT coalesce(pg_catalog.has_table_privilege(pg_catalog.to_regclass(c.table_name), 'SELECT'), false)
             AS readable) r;
REVOKE ALL ON kafka_sync.conflict_log FROM PUBLIC;
GRANT SELECT ON kafka_sync.conflict_log TO pg_monitor;

-- Keys deleted here (locally or by apply): the version of a delete is the
-- commit time and origin of the transaction that last wrote its row here
-- (its xmin), so that an older change arriving later does not bring the row
-- back. Rows older than kafka_sync.tombstone_retention are pruned.
CREATE TABLE kafka_sync.tombstones (
    relid      oid NOT NULL,
    key        bytea NOT NULL,         -- the key columns' binary send form
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relid, key)
);
CREATE INDEX ON kafka_sync.tombstones (deleted_at);
REVOKE ALL ON kafka_sync.tombstones FROM PUBLIC;

-- AFTER DELETE row trigger on every published table of the node.
CREATE FUNCTION kafka_sync._record_tombstone() RETURNS trigger
    LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'kafka_sync_record_tombstone';
REVOKE ALL ON FUNCTION kafka_sync._record_tombstone() FROM PUBLIC;

-- Puts the tombstone trigger on every table the node publishes that has a
-- key and lacks it. Run by create_node and after DDL (event trigger below).
CREATE FUNCTION kafka_sync._track_deletes() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pub name;
    rel regclass;
    added integer := 0;
BEGIN
    SELECT n.publication INTO pub FROM kafka_sync.node n;
    IF pub IS NULL THEN
        RETURN 0;
    END IF;
    FOR rel IN
        SELECT format('%I.%I', t.schemaname, t.tablename)::regclass
          FROM pg_publication_tables t
         WHERE t.pubname = pub AND t.schemaname <> 'kafka_sync'
    LOOP
        IF EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = rel AND (i.indisprimary OR i.indisreplident))
           AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = rel AND g.tgname = 'kafka_sync_tombstone')
           AND (SELECT c.relkind FROM pg_class c WHERE c.oid = rel) = 'r' THEN
            EXECUTE format('CREATE TRIGGER kafka_sync_tombstone AFTER DELETE ON %s '
                           'FOR EACH ROW EXECUTE FUNCTION kafka_sync._record_tombstone()', rel);
            added := added + 1;
        END IF;
    END LOOP;
    RETURN added;
END $$;
REVOKE ALL ON FUNCTION kafka_sync._track_deletes() FROM PUBLIC;

CREATE FUNCTION kafka_sync._track_deletes_after_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM kafka_sync.node) THEN
        PERFORM kafka_sync._track_deletes();
    END IF;
END $$;
REVOKE ALL ON FUNCTION kafka_sync._track_deletes_after_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER kafka_sync_track_deletes ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE', 'CREATE PUBLICATION',
                 'ALTER PUBLICATION', 'CREATE INDEX')
    EXECUTE FUNCTION kafka_sync._track_deletes_after_ddl();

-- Whether a row version (its xmin) was written by this transaction or under
-- node's replication origin: the apply side's update of a row its peer wrote last.
CREATE FUNCTION kafka_sync._last_written_by(row_xmin xid, node text) RETURNS boolean
    LANGUAGE c STRICT VOLATILE AS 'MODULE_PATHNAME', 'kafka_sync_last_written_by';
-- in statements that run as the owner of the table they write (any role)
GRANT EXECUTE ON FUNCTION kafka_sync._last_written_by(xid, text) TO PUBLIC;

CREATE FUNCTION kafka_sync._check_on_error(on_error text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF on_error IS NULL OR on_error NOT IN ('pause', 'skip') THEN
        RAISE EXCEPTION 'invalid on_error "%"', on_error
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''pause'' (stop at a bad record until resumed) or ''skip'' (keep it in kafka_sync.dead_letters and go on).';
    END IF;
END $$;

CREATE FUNCTION kafka_sync._check_conflict_resolution(conflict_resolution text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF conflict_resolution IS NULL OR conflict_resolution NOT IN
       ('last_update_wins', 'first_update_wins', 'apply_remote', 'keep_local', 'error') THEN
        RAISE EXCEPTION 'invalid conflict_resolution "%"', conflict_resolution
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use last_update_wins, first_update_wins, apply_remote, keep_local or error '
                         '(see README, "Conflicts").';
    END IF;
END $$;

CREATE FUNCTION kafka_sync._notify_sidecar(sub_name text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_notify('kafka_sync_subscriptions', sub_name) $$;

-- The replication origin this database applies a peer's records under.
-- Origins are server-wide and subscriptions per database, so the database's
-- OID is part of the name (extension/common/origin_names.hpp builds the same).
CREATE FUNCTION kafka_sync._origin_name(peer_node text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'kafka_sync_' || d.oid::text || '_' || peer_node
      FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
$$;

-- The tables a subscription may write: named ones must be tables, not of
-- kafka_sync; no list means this node's publication, so a database that is
-- no node must name them.
CREATE FUNCTION kafka_sync._check_sub_tables(tables regclass[], is_node boolean, allow_truncate boolean)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad regclass;
BEGIN
    IF (tables IS NULL OR cardinality(tables) = 0) AND NOT is_node THEN
        RAISE EXCEPTION 'this database is not a kafka_sync node: name the tables the subscription may write'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A subscription writes the tables of this node''s publication, or those it names.',
                  HINT = 'For example tables => ARRAY[''public.user_table'']::regclass[].';
    END IF;
    SELECT t INTO bad FROM unnest(tables) t JOIN pg_class c ON c.oid = t
     WHERE c.relkind NOT IN ('r', 'p') OR c.relnamespace IN ('kafka_sync'::regnamespace, 'pg_catalog'::regnamespace)
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION '% cannot be written by a subscription', bad
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Only tables outside pg_catalog and kafka_sync can be.';
    END IF;
    -- a role the management functions were granted to names only tables it may write itself
    SELECT t INTO bad FROM unnest(tables) t
     WHERE NOT (pg_catalog.has_table_privilege(session_user, t, 'INSERT')
                AND pg_catalog.has_table_privilege(session_user, t, 'UPDATE')
                AND pg_catalog.has_table_privilege(session_user, t, 'DELETE')
                AND (NOT allow_truncate OR pg_catalog.has_table_privilege(session_user, t, 'TRUNCATE')))
        OR (EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = t
                                                AND d.deptype = 'e')
            AND NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user))
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'role "%" may not name % for a subscription', session_user, bad
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A subscription may write only tables its creator may insert into, update and delete from (and truncate, with allow_truncate; an extension''s tables: only a superuser).';
    END IF;
END $$;
REVOKE ALL ON FUNCTION kafka_sync._check_sub_tables(regclass[], boolean, boolean) FROM PUBLIC;

CREATE FUNCTION kafka_sync.create_subscription(
    sub_name     text,
    peer_node    text,
    brokers      text,
    topic_prefix text  DEFAULT 'kafka_sync',
    start        text  DEFAULT 'earliest',
    on_error     text  DEFAULT 'pause',
    kafka_config jsonb DEFAULT '{}',
    conflict_resolution text DEFAULT 'last_update_wins',
    tables       regclass[] DEFAULT NULL,
    allow_truncate boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    local_node text;
    other text;
    origin text := kafka_sync._origin_name(peer_node);
    stale text;
BEGIN
    PERFORM kafka_sync._check_requirements();
    IF sub_name IS NULL OR sub_name !~ '^[a-z0-9_]{1,63}$' THEN
        RAISE EXCEPTION 'invalid subscription name "%"', sub_name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A subscription name has 1 to 63 characters: lower-case letters, digits and underscores.';
    END IF;
    PERFORM kafka_sync._check_node_name(peer_node, 'peer node name');
    SELECT n.node_name INTO local_node FROM kafka_sync.node n;
    IF peer_node = local_node THEN
        RAISE EXCEPTION 'a node cannot subscribe to itself ("%")', peer_node
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Subscribe to the other nodes of the mesh.';
    END IF;
    PERFORM kafka_sync._check_kafka_target(brokers, topic_prefix);
    IF start IS NULL OR start !~ '^(earliest|latest|[0-9]{1,18})$' THEN
        RAISE EXCEPTION 'invalid start "%"', start
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''earliest'' (the whole topic), ''latest'' (only new records) or a Kafka offset.';
    END IF;
    PERFORM kafka_sync._check_on_error(on_error);
    IF EXISTS (SELECT 1 FROM kafka_sync.subscription s WHERE s.sub_name = create_subscription.sub_name) THEN
        RAISE EXCEPTION 'subscription "%" already exists', sub_name USING ERRCODE = 'duplicate_object';
    END IF;
    SELECT s.sub_name INTO other FROM kafka_sync.subscription s WHERE s.peer_node = create_subscription.peer_node;
    IF other IS NOT NULL THEN
        RAISE EXCEPTION 'this database already subscribes to node "%" (subscription "%")', peer_node, other
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'Each peer is applied under its own replication origin, by one subscription.';
    END IF;
    PERFORM kafka_sync._check_conflict_resolution(conflict_resolution);
    PERFORM kafka_sync._check_kafka_config(kafka_config);
    PERFORM kafka_sync._check_sub_tables(tables, local_node IS NOT NULL, coalesce(allow_truncate, true));
    IF allow_truncate IS NULL THEN
        RAISE EXCEPTION 'allow_truncate must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Origins of databases dropped since (DROP DATABASE cannot drop them): each
    -- would hold one of the server's max_replication_slots replication states.
    FOR stale IN SELECT o.roname FROM pg_replication_origin o
                  WHERE o.roname ~ '^kafka_sync_[0-9]+_'
                    AND substring(o.roname from '^kafka_sync_([0-9]+)_')::oid NOT IN (SELECT d.oid FROM pg_database d)
    LOOP
        BEGIN
            PERFORM pg_replication_origin_drop(stale);
        EXCEPTION WHEN undefined_object OR object_in_use THEN
            NULL;  -- another create_subscription dropped it first
        END;
    END LOOP;
    -- A left-over origin of a dropped subscription starts over from nothing.
    IF EXISTS (SELECT 1 FROM pg_replication_origin o WHERE o.roname = origin) THEN
        BEGIN
            PERFORM pg_replication_origin_advance(origin, '0/0');
        EXCEPTION WHEN object_in_use THEN
            RAISE EXCEPTION 'replication origin "%" of a dropped subscription to "%" is still in use', origin, peer_node
                USING ERRCODE = 'object_in_use',
                      HINT = 'The sidecar releases it within a second of drop_subscription(); try again.';
        END;
    ELSE
        PERFORM pg_replication_origin_create(origin);
    END IF;
    INSERT INTO kafka_sync.subscription (sub_name, peer_node, brokers, topic_prefix, start, on_error,
                                         conflict_resolution, kafka_config, origin_name, tables, allow_truncate)
    VALUES (sub_name, peer_node, brokers, topic_prefix, start, on_error, conflict_resolution, kafka_config, origin,
            nullif(tables, '{}'), allow_truncate);
    PERFORM kafka_sync._notify_sidecar(sub_name);
    RETURN topic_prefix || '.' || peer_node;
END $$;

CREATE FUNCTION kafka_sync._subscription_exists(sub_name text) RETURNS kafka_sync.subscription
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s kafka_sync.subscription;
BEGIN
    SELECT * INTO s FROM kafka_sync.subscription x WHERE x.sub_name = _subscription_exists.sub_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription "%" does not exist', sub_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'See SELECT name FROM kafka_sync.subscription_status.';
    END IF;
    RETURN s;
END $$;

CREATE FUNCTION kafka_sync._release_origin(origin_name text) RETURNS void
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'kafka_sync_release_origin';
REVOKE ALL ON FUNCTION kafka_sync._release_origin(text) FROM PUBLIC;

-- Like DROP SUBSCRIPTION with its apply worker: the subscription's apply
-- session is stopped and its replication origin dropped, so a subscription
-- to the same peer can be created right away.
CREATE FUNCTION kafka_sync.drop_subscription(sub_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s kafka_sync.subscription := kafka_sync._subscription_exists(sub_name);
    dropped boolean := false;
BEGIN
    -- Waits for an apply transaction in progress; a later one waits for this
    -- transaction (it reads the row FOR SHARE) and then finds no subscription.
    DELETE FROM kafka_sync.subscription x WHERE x.sub_name = s.sub_name;
    DELETE FROM kafka_sync.dead_letters d WHERE d.sub_name = s.sub_name;
    PERFORM kafka_sync._notify_sidecar(s.sub_name);
    PERFORM kafka_sync._release_origin(s.origin_name);   -- this session applied it (tests, by hand)
    IF NOT EXISTS (SELECT 1 FROM pg_replication_origin o WHERE o.roname = s.origin_name) THEN
        RETURN;
    END IF;
    -- The sidecar's session for this subscription keeps the origin between
    -- apply calls: end that session (the sidecar reconnects and stops the
    -- subscription's runner), for at most 10 seconds.
    FOR i IN 1 .. 100 LOOP
        BEGIN
            PERFORM pg_replication_origin_drop(s.origin_name);
            dropped := true;
        EXCEPTION WHEN object_in_use THEN
            PERFORM pg_terminate_backend(a.pid)
               FROM pg_stat_activity a
              WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                AND a.application_name = left('kafka_sync_sidecar ' || s.sub_name, 63);
            PERFORM pg_sleep(0.1);
        END;
        EXIT WHEN dropped;
    END LOOP;
    IF NOT dropped THEN
        RAISE EXCEPTION 'could not drop the replication origin "%" of subscription "%": it is in use', s.origin_name,
                        s.sub_name
            USING ERRCODE = 'object_in_use',
                  DETAIL = 'Another session applies this subscription (a sidecar whose connection string sets its own application_name, or a session of your own).',
                  HINT = 'Stop the sidecar of this database (or end that session) and call drop_subscription() again.';
    END IF;
END $$;

CREATE FUNCTION kafka_sync.pause_subscription(sub_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s kafka_sync.subscription := kafka_sync._subscription_exists(sub_name);
BEGIN
    UPDATE kafka_sync.subscription x SET enabled = false, paused_by_error = false WHERE x.sub_name = s.sub_name;
    PERFORM kafka_sync._notify_sidecar(s.sub_name);
END $$;

-- skip_failed: continue after the record that paused the subscription (it
-- stays in kafka_sync.dead_letters); otherwise that record is tried again.
CREATE FUNCTION kafka_sync.resume_subscription(sub_name text, skip_failed boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s kafka_sync.subscription := kafka_sync._subscription_exists(sub_name);
    failed_offset bigint;
BEGIN
    IF skip_failed THEN
        SELECT max(d.kafka_offset) INTO failed_offset FROM kafka_sync.dead_letters d
         WHERE d.sub_name = s.sub_name AND d.kafka_offset >= coalesce(s.next_offset, 0);
        IF failed_offset IS NULL THEN
            RAISE EXCEPTION 'subscription "%" has no failed record to skip', sub_name
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        -- The rest of that record's source transaction is still applied, as one transaction.
        UPDATE kafka_sync.subscription x SET skip_offset = failed_offset WHERE x.sub_name = s.sub_name;
    END IF;
    UPDATE kafka_sync.subscription x SET enabled = true, paused_by_error = false, last_error = NULL
     WHERE x.sub_name = s.sub_name;
    PERFORM kafka_sync._notify_sidecar(s.sub_name);
END $$;

-- Changes how a subscription resolves conflicts or handles records it cannot
-- apply; NULL leaves a setting as it is. Takes effect with the next record.
CREATE FUNCTION kafka_sync.alter_subscription(
    sub_name            text,
    conflict_resolution text DEFAULT NULL,
    on_error            text DEFAULT NULL,
    tables              regclass[] DEFAULT NULL,  -- '{}': back to this node's publication
    allow_truncate      boolean DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s kafka_sync.subscription := kafka_sync._subscription_exists(sub_name);
BEGIN
    IF conflict_resolution IS NOT NULL THEN
        PERFORM kafka_sync._check_conflict_resolution(conflict_resolution);
    END IF;
    IF on_error IS NOT NULL THEN
        PERFORM kafka_sync._check_on_error(on_error);
    END IF;
    IF tables IS NOT NULL OR allow_truncate THEN
        PERFORM kafka_sync._check_sub_tables(coalesce(tables, s.tables), EXISTS (SELECT 1 FROM kafka_sync.node),
                                             coalesce(allow_truncate, s.allow_truncate));
    END IF;
    UPDATE kafka_sync.subscription x
       SET conflict_resolution = coalesce(alter_subscription.conflict_resolution, x.conflict_resolution),
           on_error = coalesce(alter_subscription.on_error, x.on_error),
           tables = CASE WHEN alter_subscription.tables IS NULL THEN x.tables
                         ELSE nullif(alter_subscription.tables, '{}') END,
           allow_truncate = coalesce(alter_subscription.allow_truncate, x.allow_truncate)
     WHERE x.sub_name = s.sub_name;
    PERFORM kafka_sync._notify_sidecar(s.sub_name);
END $$;

-- One node's half of a full mesh: a subscription "from_<peer>" to each peer.
CREATE FUNCTION kafka_sync.create_mesh_subscriptions(
    peers        text[],
    brokers      text,
    topic_prefix text  DEFAULT 'kafka_sync',
    start        text  DEFAULT 'earliest',
    on_error     text  DEFAULT 'pause',
    kafka_config jsonb DEFAULT '{}',
    conflict_resolution text DEFAULT 'last_update_wins')
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    peer text;
    local_node text;
BEGIN
    IF peers IS NULL OR cardinality(peers) = 0 THEN
        RAISE EXCEPTION 'peers must name at least one other node' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT n.node_name INTO local_node FROM kafka_sync.node n;
    IF local_node IS NULL THEN
        RAISE EXCEPTION 'this database is not a kafka_sync node'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A mesh member publishes its own changes: run kafka_sync.create_node() first.';
    END IF;
    FOREACH peer IN ARRAY peers LOOP
        CONTINUE WHEN peer = local_node;
        PERFORM kafka_sync.create_subscription('from_' || peer, peer, brokers, topic_prefix, start, on_error,
                                               kafka_config, conflict_resolution);
        RETURN NEXT 'from_' || peer;
    END LOOP;
END $$;

-- For the sidecar: what to run, and from where.
CREATE FUNCTION kafka_sync.sidecar_subscriptions(
    OUT sub_name text, OUT peer_node text, OUT brokers text, OUT topic text, OUT start text,
    OUT on_error text, OUT kafka_config jsonb, OUT next_offset bigint, OUT allowed_kafka_properties text,
    OUT partial_transaction_wait_ms bigint, OUT partial_transaction_hold_ms bigint, OUT last_applied_lsn pg_lsn,
    OUT streamed_transaction_memory_kb bigint)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.sub_name, s.peer_node, s.brokers, s.topic_prefix || '.' || s.peer_node, s.start, s.on_error,
           s.kafka_config, s.next_offset, current_setting('kafka_sync.allowed_kafka_properties', true),
           -- NULL where the library is not loaded: the sidecar's defaults are the same
           (extract(epoch FROM current_setting('kafka_sync.partial_transaction_wait', true)::interval) * 1000)::bigint,
           (extract(epoch FROM current_setting('kafka_sync.partial_transaction_hold', true)::interval) * 1000)::bigint,
           s.last_applied_lsn,
           pg_size_bytes(current_setting('kafka_sync.streamed_transaction_memory', true)) / 1024
      FROM kafka_sync.subscription s WHERE s.enabled ORDER BY s.sub_name
$$;

-- Called by the sidecar: the records of the peer's topic from gap_offset on
-- are gone, and the peer's snapshot at snapshot_offset (lsn header
-- snapshot_lsn, the first complete one after the gap) brings this database
-- back to the peer's rows. Applying resumes there; at the snapshot's end the
-- rows the peer wrote last that are not in it are deleted.
CREATE FUNCTION kafka_sync._begin_resync(sub_name text, gap_offset bigint, snapshot_offset bigint,
                                         snapshot_lsn pg_lsn) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s kafka_sync.subscription;
    progress pg_lsn;
BEGIN
    SELECT * INTO s FROM kafka_sync.subscription x WHERE x.sub_name = _begin_resync.sub_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription "%" does not exist', sub_name USING ERRCODE = 'undefined_object';
    END IF;
    progress := pg_replication_origin_progress(s.origin_name, true);
    IF progress IS NOT NULL AND snapshot_lsn <= progress THEN
        RAISE EXCEPTION 'the snapshot of node "%" at offset % (lsn %) is not newer than what this database applied (%)',
                        s.peer_node, snapshot_offset, snapshot_lsn, progress
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Run SELECT kafka_sync.resnapshot() on node %s for a new one.', s.peer_node);
    END IF;
    DELETE FROM kafka_sync.resync_keys k WHERE k.sub_name = s.sub_name;
    UPDATE kafka_sync.subscription x
       SET resync_lsn = snapshot_lsn, resync_from = snapshot_offset, next_offset = snapshot_offset,
           consumer_error = NULL, resync_incomplete = false,
           resync_note = format('records of topic %s from offset %s to %s are no longer in Kafka; '
                                'resynchronising from the snapshot of node %s at offset %s',
                                s.topic_prefix || '.' || s.peer_node, gap_offset, snapshot_offset - 1,
                                s.peer_node, snapshot_offset)
     WHERE x.sub_name = s.sub_name;
    RAISE LOG 'kafka_sync subscription %: records from offset % to % of topic %.% are no longer in Kafka; resynchronising from the snapshot of node % at offset % (lsn %)',
              s.sub_name, gap_offset, snapshot_offset - 1, s.topic_prefix, s.peer_node, s.peer_node,
              snapshot_offset, snapshot_lsn;
END $$;

-- The encoded key of a row of relid (as kafka_sync.tombstones keeps it); NULL without one.
CREATE FUNCTION kafka_sync._row_key(relid oid, row_value record) RETURNS bytea
    LANGUAGE c STRICT STABLE AS 'MODULE_PATHNAME', 'kafka_sync_row_key';

CREATE FUNCTION kafka_sync.apply_chunk(
    sub_name text, offsets int8[], keys bytea[], vals bytea[], headers bytea[], careful boolean,
    OUT applied bigint, OUT skipped bigint, OUT conflicts bigint, OUT dead_letters bigint,
    OUT failed_offset bigint, OUT failed_error text)
    LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'kafka_sync_apply_chunk';

-- The sidecar's session: the next_offset apply calls store for sub_name
-- stays at or below hold_offset (NULL: no hold) while a streamed
-- transaction from there on waits for its commit.
CREATE FUNCTION kafka_sync.apply_hold(sub_name text, hold_offset int8) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'kafka_sync_apply_hold';

-- The sidecar's open transaction applies a peer's transaction still in
-- progress (apply_chunk takes its records while they meet no conflict);
-- apply_stream_commit() gives it the commit record's LSN and time (false:
-- not to be committed here; the sidecar rolls back and applies it whole).
CREATE FUNCTION kafka_sync.apply_stream_begin(sub_name text) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'kafka_sync_apply_stream_begin';
CREATE FUNCTION kafka_sync.apply_stream_commit(sub_name text, headers bytea, next_offset int8) RETURNS boolean
    LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'kafka_sync_apply_stream_commit';

-- Complete source transactions, each committed with its own commit time and
-- origin (those of one millisecond in one local transaction). CALL it outside
-- a transaction block. Procedures with transaction control cannot pin
-- search_path: the SQL it builds qualifies every name, and the sidecar pins
-- its session's.
CREATE PROCEDURE kafka_sync.apply_transactions(
    sub_name text, offsets int8[], keys bytea[], vals bytea[], headers bytea[],
    INOUT applied bigint DEFAULT NULL, INOUT skipped bigint DEFAULT NULL, INOUT conflicts bigint DEFAULT NULL)
    LANGUAGE c AS 'MODULE_PATHNAME', 'kafka_sync_apply_transactions';

CREATE FUNCTION kafka_sync.record_failure(
    sub_name text, kafka_offset int8, key bytea, value bytea, headers bytea, error text) RETURNS void
    LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'kafka_sync_record_failure';

CREATE FUNCTION kafka_sync.report_progress(sub_name text, high_water bigint, consumer_error text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE kafka_sync.subscription s
       SET high_water = report_progress.high_water, consumer_error = report_progress.consumer_error,
           last_contact = now(),
           -- start => 'latest' means the end of the topic when the sidecar first saw it,
           -- not wherever it is at each restart until something gets applied
           next_offset = CASE WHEN s.next_offset IS NULL AND s.start = 'latest' AND report_progress.high_water >= 0
                              THEN report_progress.high_water ELSE s.next_offset END
     WHERE s.sub_name = report_progress.sub_name
$$;

REVOKE ALL ON FUNCTION kafka_sync.create_subscription(text, text, text, text, text, text, jsonb, text, regclass[], boolean)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.alter_subscription(text, text, text, regclass[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.create_mesh_subscriptions(text[], text, text, text, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE kafka_sync.apply_transactions(text, int8[], bytea[], bytea[], bytea[], bigint, bigint, bigint)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.drop_subscription(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.pause_subscription(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.resume_subscription(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._subscription_exists(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._notify_sidecar(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.sidecar_subscriptions() FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.apply_chunk(text, int8[], bytea[], bytea[], bytea[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.apply_hold(text, int8) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.apply_stream_begin(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.apply_stream_commit(text, bytea, int8) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.record_failure(text, int8, bytea, bytea, bytea, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.report_progress(text, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._begin_resync(text, bigint, bigint, pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync._row_key(oid, record) FROM PUBLIC;

-- What a sidecar calls. Each runs as its owner (SECURITY DEFINER, or as
-- apply_transactions does it), so a role granted EXECUTE on them needs no
-- rights on kafka_sync's tables; a peer's change runs as the owner of the
-- table it writes, which that role must be able to become.
CREATE FUNCTION kafka_sync._sidecar_routines() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['FUNCTION kafka_sync.sidecar_subscriptions()',
                 'FUNCTION kafka_sync.apply_chunk(text, int8[], bytea[], bytea[], bytea[], boolean)',
                 'FUNCTION kafka_sync.apply_hold(text, int8)',
                 'FUNCTION kafka_sync.apply_stream_begin(text)',
                 'FUNCTION kafka_sync.apply_stream_commit(text, bytea, int8)',
                 'PROCEDURE kafka_sync.apply_transactions(text, int8[], bytea[], bytea[], bytea[], bigint, bigint, bigint)',
                 'FUNCTION kafka_sync.record_failure(text, int8, bytea, bytea, bytea, text)',
                 'FUNCTION kafka_sync.report_progress(text, bigint, text)',
                 'FUNCTION kafka_sync._begin_resync(text, bigint, bigint, pg_lsn)',
                 'FUNCTION kafka_sync._worker_status()']
$$;

-- Lets role run kafka_sync_sidecar for this database without being a
-- superuser: EXECUTE on the routines above and SELECT on the status views
-- (kafka_sync_sidecar --check). It then reads every subscription's
-- kafka_config (the consumer needs its broker credentials). It applies a
-- change only to a table whose owner it may become: GRANT owner TO role.
CREATE FUNCTION kafka_sync._sidecar_privileges(role regrole, allow boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r text;
    verb text := CASE WHEN allow THEN 'GRANT %s ON %s TO %s' ELSE 'REVOKE %s ON %s FROM %s' END;
BEGIN
    FOREACH r IN ARRAY kafka_sync._sidecar_routines() LOOP
        EXECUTE format(verb, 'EXECUTE', r, role);
    END LOOP;
    EXECUTE format(verb, 'SELECT', 'kafka_sync.node_status, kafka_sync.subscription_status', role);
END
$$;
REVOKE ALL ON FUNCTION kafka_sync._sidecar_privileges(regrole, boolean) FROM PUBLIC;

CREATE FUNCTION kafka_sync.grant_sidecar_role(role regrole) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$ SELECT kafka_sync._sidecar_privileges(role, true) $$;
CREATE FUNCTION kafka_sync.revoke_sidecar_role(role regrole) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$ SELECT kafka_sync._sidecar_privileges(role, false) $$;
REVOKE ALL ON FUNCTION kafka_sync.grant_sidecar_role(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION kafka_sync.revoke_sidecar_role(regrole) FROM PUBLIC;

-- Status of the subscriptions, as last reported by the sidecar. Never shows kafka_config.
CREATE VIEW kafka_sync.subscription_status AS
SELECT s.sub_name AS name,
       s.peer_node AS peer,
       s.topic_prefix || '.' || s.peer_node AS topic,
       -- consumer_error is what the sidecar last reported (sidecar/kafka_consumer.cpp
       -- and subscription_runner.cpp word it); the sidecar's session applying
       -- this subscription is known by its application_name.
       CASE WHEN s.paused_by_error THEN 'error'
            WHEN NOT s.enabled THEN 'paused'
            WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                              WHERE a.datname = pg_catalog.current_database()
                                -- as PostgreSQL keeps it: at most 63 bytes
                                AND a.application_name = left('kafka_sync_sidecar ' || s.sub_name, 63)) THEN 'no_sidecar'
            WHEN s.resync_lsn IS NOT NULL AND s.consumer_error IS NULL THEN 'resyncing'
            WHEN s.consumer_error LIKE 'topic % does not exist%' THEN 'waiting_for_topic'
            WHEN s.consumer_error LIKE 'waiting for the last record of transaction %' THEN 'waiting_for_transaction_end'
            WHEN s.consumer_error LIKE 'Kafka is unreachable%'
              OR s.consumer_error LIKE 'no connection to the leader%' THEN 'kafka_unavailable'
            WHEN s.consumer_error IS NOT NULL THEN 'error'
            ELSE 'running' END AS state,
       coalesce(s.last_error, s.consumer_error, CASE WHEN s.resync_lsn IS NOT NULL THEN s.resync_note END) AS last_error,
       s.next_offset - 1 AS applied_offset,
       s.high_water,
       greatest(s.high_water - coalesce(s.next_offset, 0), 0) AS lag,
       -- records wait: how far the last applied source commit is behind now
       CASE WHEN s.high_water > coalesce(s.next_offset, 0) THEN now() - s.last_source_commit
            ELSE interval '0' END AS lag_time,
       s.last_applied_lsn,
       s.last_source_commit,
       s.last_applied_at - s.last_source_commit AS apply_latency,
       s.rows_applied,
       s.conflicts,
       s.conflict_resolution,
       s.on_error,
       (SELECT count(*) FROM kafka_sync.dead_letters d WHERE d.sub_name = s.sub_name) AS dead_letters,
       s.last_contact,
       s.last_resync_at
  FROM kafka_sync.subscription s;
REVOKE ALL ON kafka_sync.subscription_status FROM PUBLIC;
GRANT SELECT ON kafka_sync.subscription_status TO pg_monitor;
