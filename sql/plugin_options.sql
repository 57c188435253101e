\set SHOW_CONTEXT never
-- Option parsing is strict: unknown or malformed options are errors that say
-- what is wrong, never silently ignored.
CREATE PUBLICATION kafka_sync FOR ALL TABLES;
CREATE TABLE opt_t (id int PRIMARY KEY);
SELECT 'init' FROM pg_create_logical_replication_slot('plugin_options', 'kafka_sync');
INSERT INTO opt_t VALUES (1);

-- node_name is required and must be a valid node name
SELECT count(*) FROM pg_logical_slot_peek_changes('plugin_options', NULL, NULL);
SELECT count(*) FROM pg_logical_slot_peek_changes('plugin_options', NULL, NULL, 'node_name', 'Chat-1');
SELECT count(*) FROM pg_logical_slot_peek_changes('plugin_options', NULL, NULL, 'node_name', '');

-- unknown option
SELECT count(*) FROM pg_logical_slot_peek_changes('plugin_options', NULL, NULL, 'node_name', 'chat1', 'include_schemas', 'true');

-- booleans
SELECT count(*) FROM pg_logical_slot_peek_changes('plugin_options', NULL, NULL, 'node_name', 'chat1', 'include_schema', 'maybe');
SELECT count(*) FROM pg_logical_slot_peek_changes('plugin_options', NULL, NULL, 'node_name', 'chat1', 'include_schema', 'off', 'tombstones', 'on');

-- framing
SELECT count(*) FROM pg_logical_slot_peek_changes('plugin_options', NULL, NULL, 'node_name', 'chat1', 'framing', 'xml');

-- a publication that does not exist
SELECT count(*) FROM pg_logical_slot_peek_changes('plugin_options', NULL, NULL, 'node_name', 'chat1', 'publication', 'nope');

SELECT pg_drop_replication_slot('plugin_options');
DROP TABLE opt_t;
DROP PUBLICATION kafka_sync;
