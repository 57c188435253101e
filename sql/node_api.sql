\set SHOW_CONTEXT never
-- The node SQL API: argument checks with clear errors, one node per
-- database, secrets kept out of sight, superuser-only management.
CREATE TABLE chat_users (user_id text PRIMARY KEY, user_name text);

-- bad arguments
SELECT kafka_sync.create_node('Chat-1', 'localhost:9092');
SELECT kafka_sync.create_node('chat1', '  ');
SELECT kafka_sync.create_node('chat1', 'localhost:9092', topic_prefix => 'bad prefix');
SELECT kafka_sync.create_node('chat1', 'localhost:9092');
CREATE PUBLICATION kafka_sync FOR ALL TABLES;
SELECT kafka_sync.create_node('chat1', 'localhost:9092', kafka_config => '[1]');
SELECT kafka_sync.create_node('chat1', 'localhost:9092', kafka_config => '{"linger.mss": 5}');
SELECT kafka_sync.create_node('chat1', 'localhost:9092', kafka_config => '{"acks": "1"}');
SELECT kafka_sync.create_node('chat1', 'localhost:9092', kafka_config => '{"security.protocol": "carrier_pigeon"}');
SELECT kafka_sync.create_node('chat1', 'localhost:9092', kafka_config => '{"sasl.password": {"nested": true}}');
SELECT kafka_sync.create_node('chat1', 'localhost:9092', kafka_config => '{"kafka_sync.topic_partitions": 0}');
-- properties that load code or run commands: refused before librdkafka sees them,
-- unless the server's operator allows them by name
SELECT kafka_sync.create_node('chat1', 'localhost:9092', kafka_config => '{"plugin.library.paths": "/tmp/not_there"}');
SELECT kafka_sync.create_node('chat1', 'localhost:9092', kafka_config => '{"sasl.kerberos.kinit.cmd": "touch /tmp/ks_pwned"}');
SELECT kafka_sync._check_kafka_config('{"internal.termination.signal": "15"}');
ALTER SYSTEM SET kafka_sync.allowed_kafka_properties = 'ssl.providers, internal.termination.signal';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT kafka_sync._check_kafka_config('{"internal.termination.signal": "15"}') AS allowed_by_the_operator;
ALTER SYSTEM RESET kafka_sync.allowed_kafka_properties;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
CREATE TABLE filtered (id int PRIMARY KEY);
CREATE PUBLICATION with_filter FOR TABLE filtered WHERE (id > 10);
SELECT kafka_sync.create_node('chat1', 'localhost:9092', publication => 'with_filter');
DROP PUBLICATION with_filter;

-- the library must be an approved output plugin (Debian's PostgreSQL 15.20+)
SET output_plugin_libraries = 'pgoutput';
SELECT kafka_sync.create_node('chat1', 'localhost:1');
RESET output_plugin_libraries;

-- create_node() makes its replication slot before it returns: not after a
-- write in the same transaction, and a rollback leaves no slot behind
BEGIN;
CREATE TABLE written_first (id int);
SELECT kafka_sync.create_node('chat1', 'localhost:1', snapshot => false);
ROLLBACK;
BEGIN;
SELECT kafka_sync.create_node('chat1', 'localhost:1', snapshot => false) AS rolled_back;
SELECT slot_name, plugin FROM pg_replication_slots;
ROLLBACK;
BEGIN;
SAVEPOINT s;
SELECT kafka_sync.create_node('chat1', 'localhost:1', snapshot => false) AS rolled_back;
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS slots_after_savepoint_rollback FROM pg_replication_slots;
COMMIT;
SELECT count(*) AS slots_after_rollback FROM pg_replication_slots;

-- a node; its broker is unreachable here, which the worker reports and retries
SELECT kafka_sync.create_node('chat1', 'localhost:1',
    kafka_config => '{"sasl.password": "hunter2", "linger.ms": 1, "kafka_sync.schemas": false}',
    snapshot => false);
SELECT node_name, topic, publication, snapshot FROM kafka_sync.node_status JOIN kafka_sync.node USING (node_name);

-- pausing stops the worker (WAL is retained), resuming restarts it
SELECT kafka_sync.pause_node();
SELECT state, worker_pid FROM kafka_sync.node_status;
SELECT kafka_sync.resume_node();
SELECT state <> 'paused' AS resumed FROM kafka_sync.node_status;

-- new kafka_config: checked like create_node's, then the worker restarts with it
SELECT kafka_sync.alter_node('{"acks": "0"}');
SELECT kafka_sync.alter_node('{"plugin.library.paths": "/tmp/x"}');
SELECT kafka_sync.alter_node('{"sasl.password": "hunter3", "message.max.bytes": 10000000, "kafka_sync.schemas": false}');
SELECT kafka_config->>'message.max.bytes' AS message_max_bytes FROM kafka_sync.node;
SELECT state <> 'paused' AS running_again FROM kafka_sync.node_status;

-- one node per database
SELECT kafka_sync.create_node('chat2', 'localhost:1');

-- management is for superusers; the node table (with kafka_config) too
CREATE ROLE kafka_sync_tester;
SET ROLE kafka_sync_tester;
SELECT kafka_sync.create_node('chat3', 'localhost:1');
SELECT kafka_sync.drop_node();
SELECT kafka_sync.alter_node('{}');
SELECT * FROM kafka_sync.node;
SELECT node_name FROM kafka_sync.node_status;
RESET ROLE;

-- monitoring roles see the status, which never shows kafka_config
GRANT pg_monitor TO kafka_sync_tester;
SET ROLE kafka_sync_tester;
SELECT node_name, topic FROM kafka_sync.node_status;
SELECT count(*) AS rows_mentioning_the_password FROM kafka_sync.node_status s WHERE s::text LIKE '%hunter%';
RESET ROLE;

-- drop_node cannot be rolled back, so it refuses to run in a transaction block
BEGIN;
SELECT kafka_sync.drop_node();
ROLLBACK;
SELECT kafka_sync.drop_node();
SELECT count(*) AS slots_left FROM pg_replication_slots WHERE slot_name = 'kafka_sync_chat1';
SELECT kafka_sync.drop_node();

DROP ROLE kafka_sync_tester;
DROP PUBLICATION kafka_sync;
DROP TABLE chat_users, filtered;
