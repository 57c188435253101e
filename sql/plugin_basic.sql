\set SHOW_CONTEXT never
-- The output plugin on its own: one record per row change, in the Debezium
-- envelope, read through pg_logical_slot_get_changes. Volatile fields (xid,
-- LSN, timestamps) are switched off so the output is deterministic.
CREATE TABLE users (user_id text PRIMARY KEY, user_name text, user_status text);
CREATE TABLE ledger (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL);
CREATE PUBLICATION kafka_sync FOR ALL TABLES;
SELECT 'init' FROM pg_create_logical_replication_slot('plugin_basic', 'kafka_sync');

CREATE VIEW changes AS
SELECT data FROM pg_logical_slot_get_changes('plugin_basic', NULL, NULL,
    'node_name', 'chat1', 'include_schema', 'false', 'include_xids', 'false',
    'include_lsn', 'false', 'include_timestamps', 'false');

-- insert, update, delete
INSERT INTO users VALUES ('u1', 'Ann', 'online');
UPDATE users SET user_status = 'away' WHERE user_id = 'u1';
DELETE FROM users WHERE user_id = 'u1';
SELECT * FROM changes;

-- NULLs are JSON null; quotes and backslashes are escaped
INSERT INTO users VALUES ('u2', NULL, 'say "hi" \ bye');
SELECT * FROM changes;

-- an update that changes the key carries the old key in "before"
UPDATE users SET user_id = 'u3' WHERE user_id = 'u2';
SELECT * FROM changes;

-- a multi-table transaction: total_order counts records of the transaction,
-- data_collection_order counts them per table
BEGIN;
INSERT INTO ledger VALUES (1, 10.50);
INSERT INTO users VALUES ('u4', 'Bob', 'online');
INSERT INTO ledger VALUES (2, -10.50);
COMMIT;
SELECT * FROM changes;

-- a rolled-back transaction never appears
BEGIN;
INSERT INTO users VALUES ('never', 'x', 'y');
ROLLBACK;
SELECT count(*) AS rolled_back_records FROM changes;

-- truncate: one "t" record per table, no key
TRUNCATE users, ledger;
SELECT * FROM changes;

-- unchanged TOASTed values are absent from an update, never a placeholder
CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
INSERT INTO docs VALUES (1, 'first', repeat('x', 10000));
SELECT count(*) AS insert_records FROM changes;
UPDATE docs SET title = 'renamed' WHERE id = 1;
SELECT * FROM changes;
-- a changed TOASTed value is present in full
UPDATE docs SET body = repeat('y', 9000) WHERE id = 1;
SELECT length((data::jsonb)->'value'->'after'->>'body') AS new_body_length FROM changes;

-- replica identity full: "before" holds the whole old row
ALTER TABLE users REPLICA IDENTITY FULL;
INSERT INTO users VALUES ('u5', 'Cid', 'online');
UPDATE users SET user_name = 'Cyd' WHERE user_id = 'u5';
SELECT * FROM changes;

-- with schemas on, key and value carry Kafka Connect schemas (Debezium's
-- JsonConverter with schemas.enable=true)
DELETE FROM users WHERE user_id = 'u5';
SELECT jsonb_pretty(data::jsonb->'key') AS key,
       data::jsonb->'value'->'schema'->>'name' AS value_schema,
       (SELECT array_agg(f->>'field') FROM jsonb_array_elements(data::jsonb->'value'->'schema'->'fields') f) AS envelope_fields,
       data::jsonb->'value'->'payload'->>'op' AS op
FROM pg_logical_slot_get_changes('plugin_basic', NULL, NULL,
    'node_name', 'chat1', 'include_xids', 'false', 'include_lsn', 'false', 'include_timestamps', 'false');

-- volatile fields, when included, are the source commit's
INSERT INTO users VALUES ('u7', 'Eve', 'online');
SELECT (v->'source'->>'txId')::bigint > 0 AS has_xid,
       (v->'source'->>'lsn')::bigint > 0 AS has_lsn,
       abs((v->'source'->>'ts_ms')::bigint - extract(epoch FROM now()) * 1000) < 600000 AS commit_time_is_recent,
       v->'transaction'->>'id' LIKE (v->'source'->>'txId') || ':%' AS transaction_id
FROM (SELECT data::jsonb->'value' AS v FROM pg_logical_slot_get_changes('plugin_basic', NULL, NULL,
    'node_name', 'chat1', 'include_schema', 'false')) c;

-- tombstones: a delete is followed by a record with a null value
INSERT INTO users VALUES ('u6', 'Dee', 'online');
DELETE FROM users WHERE user_id = 'u6';
SELECT data FROM pg_logical_slot_get_changes('plugin_basic', NULL, NULL,
    'node_name', 'chat1', 'include_schema', 'false', 'include_xids', 'false',
    'include_lsn', 'false', 'include_timestamps', 'false', 'tombstones', 'true');

SELECT pg_drop_replication_slot('plugin_basic');
DROP VIEW changes;
DROP TABLE users, ledger, docs;
DROP PUBLICATION kafka_sync;
