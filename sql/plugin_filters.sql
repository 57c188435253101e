\set SHOW_CONTEXT never
-- Which changes are published: the tables (and columns) of the node's
-- publication, its publish actions, never kafka_sync's own tables, and never
-- a change that carries a replication origin (applied from a peer).
CREATE TABLE pub_a (id int PRIMARY KEY, v text);
CREATE TABLE pub_b (id int PRIMARY KEY, v text, secret text);
CREATE TABLE not_published (id int PRIMARY KEY);
CREATE TABLE no_key (v text);
CREATE PUBLICATION kafka_sync FOR TABLE pub_a, pub_b (id, v), no_key;
SELECT 'init' FROM pg_create_logical_replication_slot('plugin_filters', 'kafka_sync');
CREATE VIEW changes AS
SELECT data::jsonb->'value'->'source'->>'table' AS tbl,
       data::jsonb->'value'->>'op' AS op,
       data::jsonb->'key' AS key,
       data::jsonb->'value'->'after' AS after
FROM pg_logical_slot_get_changes('plugin_filters', NULL, NULL,
    'node_name', 'chat1', 'include_schema', 'false', 'include_xids', 'false',
    'include_lsn', 'false', 'include_timestamps', 'false');

-- only published tables; the column list of pub_b leaves "secret" out
INSERT INTO pub_a VALUES (1, 'a');
INSERT INTO pub_b VALUES (1, 'b', 'do not publish');
INSERT INTO not_published VALUES (1);
SELECT * FROM changes;

-- a table without primary key or replica identity: INSERTs are published
-- without a Kafka key; PostgreSQL itself refuses UPDATE and DELETE while the
-- publication publishes them
INSERT INTO no_key VALUES ('k');
SELECT * FROM changes;
UPDATE no_key SET v = 'changed';
DELETE FROM no_key;

-- changes made under a replication origin (what the apply side does) are
-- never published: this is what keeps two-way sync free of loops
SELECT 'origin' FROM pg_replication_origin_create('kafka_sync_chat2');
SELECT pg_replication_origin_session_setup('kafka_sync_chat2');
INSERT INTO pub_a VALUES (100, 'applied from chat2');
SELECT pg_replication_origin_session_reset();
INSERT INTO pub_a VALUES (101, 'local');
SELECT * FROM changes;
SELECT pg_replication_origin_drop('kafka_sync_chat2');

-- publish actions of the publication are honoured
ALTER PUBLICATION kafka_sync SET (publish = 'insert');
INSERT INTO pub_a VALUES (2, 'x');
UPDATE pub_a SET v = 'y' WHERE id = 2;
DELETE FROM pub_a WHERE id = 2;
SELECT * FROM changes;
ALTER PUBLICATION kafka_sync SET (publish = 'insert, update, delete, truncate');

-- FOR ALL TABLES never includes kafka_sync's own schema
CREATE PUBLICATION all_tables FOR ALL TABLES;
CREATE TABLE kafka_sync.probe (id int PRIMARY KEY);
CREATE TABLE public.probe (id int PRIMARY KEY);
INSERT INTO kafka_sync.probe VALUES (1);
INSERT INTO public.probe VALUES (1);
SELECT data::jsonb->'value'->'source'->>'schema' AS published_schema
FROM pg_logical_slot_get_changes('plugin_filters', NULL, NULL,
    'node_name', 'chat1', 'publication', 'all_tables');
DROP TABLE kafka_sync.probe, public.probe;

-- partitions of a published partitioned table are published as themselves
CREATE TABLE events (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
ALTER PUBLICATION kafka_sync ADD TABLE events;
INSERT INTO events VALUES (1, 'eu');
SELECT * FROM changes;

-- row filters are refused with a clear error rather than ignored
CREATE TABLE filtered (id int PRIMARY KEY);
CREATE PUBLICATION with_filter FOR TABLE filtered WHERE (id > 10);
SELECT 'init' FROM pg_create_logical_replication_slot('plugin_filters_rf', 'kafka_sync');
INSERT INTO filtered VALUES (11);
SELECT count(*) FROM pg_logical_slot_get_changes('plugin_filters_rf', NULL, NULL,
    'node_name', 'chat1', 'publication', 'with_filter');
SELECT pg_drop_replication_slot('plugin_filters_rf');

SELECT pg_drop_replication_slot('plugin_filters');
DROP VIEW changes;
DROP TABLE pub_a, pub_b, not_published, no_key, events, filtered;
DROP PUBLICATION kafka_sync, all_tables, with_filter;
