\set SHOW_CONTEXT never
-- Conflict detection and resolution: local writes against records of peer
-- chat2 with known commit times (2023-11-14 is older than any local write
-- here, :future (two minutes from now) newer), each strategy, each kind, the conflict log, the
-- tombstones of deleted keys, and apply_transactions committing each source
-- transaction with its own commit time.
SELECT (extract(epoch FROM now() + interval '2 minutes') * 1000)::bigint AS future \gset
CREATE TABLE test_future AS SELECT :future::bigint AS ms;
-- timestamps as they print, the one two minutes from now as "future"
CREATE FUNCTION ts(t timestamptz) RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN t = to_timestamp((SELECT ms FROM test_future) / 1000.0) THEN 'future' ELSE t::text END
$$;
CREATE TABLE items (id int PRIMARY KEY, label text);
CREATE PUBLICATION kafka_sync FOR ALL TABLES;
SELECT kafka_sync.create_node('chat1', 'localhost:1', snapshot => false);
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1');
-- published tables with a key get the delete-tracking trigger, now and after DDL
CREATE TABLE later (id int PRIMARY KEY);
CREATE TABLE keyless (v int);
SELECT tgrelid::regclass AS tracked FROM pg_trigger WHERE tgname = 'kafka_sync_tombstone' ORDER BY 1;

CREATE FUNCTION hdrs(lsn text, ts bigint, txn_end int DEFAULT NULL, origin text DEFAULT 'chat2') RETURNS bytea
LANGUAGE sql AS $$
    SELECT int4send(14) || 'kafka_sync.lsn'::bytea || int4send(octet_length(lsn)) || convert_to(lsn, 'UTF8')
        || int4send(17) || 'kafka_sync.origin'::bytea || int4send(octet_length(origin)) || convert_to(origin, 'UTF8')
        || int4send(20) || 'kafka_sync.commit_ts'::bytea || int4send(octet_length(ts::text)) || convert_to(ts::text, 'UTF8')
        || CASE WHEN txn_end IS NULL THEN ''::bytea
           ELSE int4send(18) || 'kafka_sync.txn_end'::bytea || int4send(octet_length(txn_end::text)) || convert_to(txn_end::text, 'UTF8') END
$$;
CREATE FUNCTION ev(op text, before jsonb, after jsonb) RETURNS bytea
LANGUAGE sql AS $$
    SELECT convert_to(jsonb_build_object('op', op, 'before', before, 'after', after,
        'source', jsonb_build_object('connector', 'kafka_sync', 'name', 'chat2', 'origin', 'chat2',
                                     'schema', 'public', 'table', 'items'))::text, 'UTF8')
$$;
-- one record as one source transaction
CREATE FUNCTION apply1(off int, lsn text, ts bigint, rec bytea, careful boolean DEFAULT false)
RETURNS TABLE (applied bigint, conflicts bigint, failed_offset bigint) LANGUAGE sql AS $$
    SELECT applied, conflicts, failed_offset FROM kafka_sync.apply_chunk('from_chat2', ARRAY[off::int8],
        '{NULL}', ARRAY[rec], ARRAY[hdrs(lsn, ts, 1)], careful)
$$;
CREATE VIEW log AS
SELECT kind, key, local_origin, local_commit_ts IS NOT NULL AS local_ts, remote_origin,
       ts(remote_commit_ts) AS remote_commit_ts, resolution, local_row, remote_row
  FROM kafka_sync.conflicts ORDER BY id;

-- (earlier suites of this database logged conflicts of their own)
TRUNCATE kafka_sync.conflicts;
INSERT INTO items VALUES (1, 'local one'), (2, 'local two'), (3, 'local three');

-- last_update_wins (the default): an older remote update loses, a newer one wins
BEGIN;
SELECT * FROM apply1(0, '0/100', 1700000000000, ev('u', NULL, '{"id": 1, "label": "remote old"}'));
SELECT * FROM apply1(1, '0/200', :future, ev('u', NULL, '{"id": 2, "label": "remote new"}'));
COMMIT;
SELECT * FROM items ORDER BY id;
SELECT kind, key, local_origin, local_ts, remote_origin, remote_commit_ts, resolution FROM log;
-- the loser's and the winner's rows are both in the log
SELECT local_row, remote_row FROM log;
-- the applied row now carries chat2's commit time and origin
SELECT ts(x.timestamp) AS timestamp, replace(roname, kafka_sync._origin_name(''), 'kafka_sync_<db>_') AS roname FROM items, pg_xact_commit_timestamp_origin(items.xmin) x
  LEFT JOIN pg_replication_origin o ON o.roident = x.roident WHERE id = 2;
-- so chat2's next change of it is no conflict
BEGIN;
SELECT * FROM apply1(2, '0/300', 1700000000000, ev('u', NULL, '{"id": 2, "label": "remote again"}'));
COMMIT;
SELECT * FROM items WHERE id = 2;
-- a row image larger than kafka_sync.max_logged_value_size is not kept: its size is
BEGIN;
SET LOCAL kafka_sync.max_logged_value_size = 1000;
SELECT * FROM apply1(3, '0/380', 1700000000000, ev('u', NULL, jsonb_build_object('id', 3, 'label', repeat('y', 2000))));
SELECT kind, resolution, local_row, remote_row FROM log WHERE key = '{"id": "3"}';
ROLLBACK;

-- insert of an existing key; delete of a row changed here; update and delete of missing rows
TRUNCATE kafka_sync.conflicts;
BEGIN;
SELECT * FROM apply1(3, '0/400', :future, ev('c', NULL, '{"id": 3, "label": "remote three"}'));
SELECT * FROM apply1(4, '0/500', 1700000000000, ev('d', '{"id": 1}', NULL));
SELECT * FROM apply1(5, '0/600', 1700000000000, ev('u', NULL, '{"id": 9, "label": "never here"}'));
SELECT * FROM apply1(6, '0/700', 1700000000000, ev('d', '{"id": 10}', NULL));
COMMIT;
SELECT * FROM items ORDER BY id;
SELECT kind, key, local_origin, remote_origin, resolution FROM log;
-- delete_missing remembered the delete
SELECT count(*) AS tombstones FROM kafka_sync.tombstones;

-- a key deleted here: an older update does not bring it back, a newer one does
-- (local writes come from a new session: an apply session stays under the peer's origin)
\c -
\set SHOW_CONTEXT never
DELETE FROM items WHERE id = 3;
SELECT count(*) AS tombstones FROM kafka_sync.tombstones;
TRUNCATE kafka_sync.conflicts;
BEGIN;
SELECT * FROM apply1(7, '0/800', 1700000000000, ev('u', NULL, '{"id": 3, "label": "stale"}'));
COMMIT;
SELECT * FROM items WHERE id = 3;
BEGIN;
SELECT * FROM apply1(8, '0/900', :future, ev('c', NULL, '{"id": 3, "label": "reborn"}'));
COMMIT;
SELECT * FROM items WHERE id = 3;
SELECT kind, key, local_origin, remote_origin, resolution FROM log;

-- first_update_wins, keep_local, apply_remote (alter_subscription takes effect at once)
\c -
\set SHOW_CONTEXT never
INSERT INTO items VALUES (20, 'local'), (21, 'local'), (22, 'local');
TRUNCATE kafka_sync.conflicts;
SELECT kafka_sync.alter_subscription('from_chat2', conflict_resolution => 'first_update_wins');
BEGIN;
SELECT * FROM apply1(9, '0/A00', :future, ev('u', NULL, '{"id": 20, "label": "remote newer"}'));
SELECT * FROM apply1(10, '0/B00', 1700000000000, ev('u', NULL, '{"id": 21, "label": "remote older"}'));
COMMIT;
SELECT kafka_sync.alter_subscription('from_chat2', conflict_resolution => 'keep_local');
BEGIN;
SELECT * FROM apply1(11, '0/C00', :future, ev('u', NULL, '{"id": 22, "label": "remote newer"}'));
SELECT * FROM apply1(12, '0/D00', :future, ev('u', NULL, '{"id": 23, "label": "missing"}'));
COMMIT;
SELECT kafka_sync.alter_subscription('from_chat2', conflict_resolution => 'apply_remote');
\c -
\set SHOW_CONTEXT never
UPDATE items SET label = 'local again' WHERE id = 22;
BEGIN;
SELECT * FROM apply1(13, '0/E00', 1700000000000, ev('u', NULL, '{"id": 22, "label": "remote older"}'));
COMMIT;
SELECT * FROM items WHERE id >= 20 ORDER BY id;
SELECT kind, key, resolution FROM log;
SELECT name, conflict_resolution, conflicts FROM kafka_sync.subscription_status;

-- error: the conflict stops the transaction; careful mode reports it for a pause even with on_error = skip
SELECT kafka_sync.alter_subscription('from_chat2', conflict_resolution => 'error', on_error => 'skip');
\c -
\set SHOW_CONTEXT never
INSERT INTO items VALUES (30, 'local');
BEGIN;
\set VERBOSITY terse
SELECT * FROM apply1(14, '0/F00', :future, ev('u', NULL, '{"id": 30, "label": "remote"}'));
\set VERBOSITY default
ROLLBACK;
BEGIN;
SELECT applied, failed_offset, split_part(failed_error, ' (', 1) AS failed_error
  FROM kafka_sync.apply_chunk('from_chat2', '{14}', '{NULL}',
       ARRAY[ev('u', NULL, '{"id": 30, "label": "remote"}')], ARRAY[hdrs('0/F00', :future, 1)], true);
ROLLBACK;
SELECT * FROM items WHERE id = 30;
-- bad arguments
SELECT kafka_sync.alter_subscription('from_chat2', conflict_resolution => 'newest');
SELECT kafka_sync.alter_subscription('nope', conflict_resolution => 'error');
SELECT kafka_sync.create_subscription('from_chat3', 'chat3', 'localhost:1', conflict_resolution => 'random');
SELECT kafka_sync.alter_subscription('from_chat2', conflict_resolution => 'last_update_wins');

-- the conflict log keeps only the newest kafka_sync.conflict_log_max_rows rows
\c -
\set SHOW_CONTEXT never
INSERT INTO items VALUES (40, 'l'), (41, 'l'), (42, 'l');
SET kafka_sync.conflict_log_max_rows = 2;
BEGIN;
SELECT * FROM apply1(15, '0/1000', :future, ev('u', NULL, '{"id": 40, "label": "r"}'));
SELECT * FROM apply1(16, '0/1100', :future, ev('u', NULL, '{"id": 41, "label": "r"}'));
SELECT * FROM apply1(17, '0/1200', :future, ev('u', NULL, '{"id": 42, "label": "r"}'));
COMMIT;
SELECT key FROM log;
RESET kafka_sync.conflict_log_max_rows;

-- apply_transactions: outside a transaction block, one local commit per source transaction,
-- each with its source's commit time
BEGIN;
CALL kafka_sync.apply_transactions('from_chat2', '{18}', '{NULL}',
     ARRAY[ev('c', NULL, '{"id": 50, "label": "x"}')], ARRAY[hdrs('0/1300', 1700000000000, 1)]);
ROLLBACK;
CALL kafka_sync.apply_transactions('from_chat2', '{18,19,20}', '{NULL,NULL,NULL}',
     ARRAY[ev('c', NULL, '{"id": 50, "label": "first"}'),
           ev('c', NULL, '{"id": 51, "label": "second a"}'),
           ev('c', NULL, '{"id": 52, "label": "second b"}')],
     ARRAY[hdrs('0/1300', 1700000000000, 1), hdrs('0/1400', 1700000001000), hdrs('0/1400', 1700000001000, 2)]);
SELECT id, label, ts(x.timestamp) AS timestamp, replace(roname, kafka_sync._origin_name(''), 'kafka_sync_<db>_') AS roname FROM items, pg_xact_commit_timestamp_origin(items.xmin) x
  LEFT JOIN pg_replication_origin o ON o.roident = x.roident WHERE id >= 50 ORDER BY id;
SELECT applied_offset, last_applied_lsn FROM kafka_sync.subscription_status;
SELECT remote_lsn FROM pg_replication_origin_status WHERE external_id = kafka_sync._origin_name('chat2');
-- again: every record is a duplicate now
CALL kafka_sync.apply_transactions('from_chat2', '{18,19,20}', '{NULL,NULL,NULL}',
     ARRAY[ev('c', NULL, '{"id": 50, "label": "first"}'),
           ev('c', NULL, '{"id": 51, "label": "second a"}'),
           ev('c', NULL, '{"id": 52, "label": "second b"}')],
     ARRAY[hdrs('0/1300', 1700000000000, 1), hdrs('0/1400', 1700000001000), hdrs('0/1400', 1700000001000, 2)]);

-- snapshot rows carry their own version; one another node wrote is stored as written by
-- that node (its origin, at its time), so that node's own copy of the change is no conflict
SELECT kafka_sync.create_subscription('from_chat3', 'chat3', 'localhost:1');
CREATE FUNCTION evr(after jsonb, row_ts bigint, row_origin text) RETURNS bytea
LANGUAGE sql AS $$
    SELECT convert_to(jsonb_build_object('op', 'r', 'before', NULL, 'after', after,
        'source', jsonb_build_object('connector', 'kafka_sync', 'name', 'chat2', 'origin', 'chat2', 'snapshot', 'true',
                                     'schema', 'public', 'table', 'items', 'row_ts_ms', row_ts,
                                     'row_origin', row_origin))::text, 'UTF8')
$$;
TRUNCATE kafka_sync.conflicts;
CALL kafka_sync.apply_transactions('from_chat2', '{21,22,23}', '{NULL,NULL,NULL}',
     ARRAY[evr('{"id": 60, "label": "by chat3"}', 1700000002000, 'chat3'),
           evr('{"id": 61, "label": "by chat2"}', 1700000003000, 'chat2'),
           evr('{"id": 62, "label": "by chat1"}', 1700000004000, 'chat1')],
     ARRAY[hdrs('0/1401', 1700000009000), hdrs('0/1401', 1700000009000), hdrs('0/1401', 1700000009000, 3)]);
SELECT id, label, ts(x.timestamp) AS timestamp, replace(roname, kafka_sync._origin_name(''), 'kafka_sync_<db>_') AS roname FROM items, pg_xact_commit_timestamp_origin(items.xmin) x
  LEFT JOIN pg_replication_origin o ON o.roident = x.roident WHERE id >= 60 ORDER BY id;
BEGIN;
SELECT applied, conflicts FROM kafka_sync.apply_chunk('from_chat3', '{0}', '{NULL}',
       ARRAY[convert_to(jsonb_build_object('op', 'c', 'after', '{"id": 60, "label": "by chat3"}'::jsonb,
             'source', jsonb_build_object('origin', 'chat3', 'schema', 'public', 'table', 'items'))::text, 'UTF8')],
       ARRAY[hdrs('0/50', 1700000002000, 1, 'chat3')], false);
COMMIT;
SELECT count(*) AS conflicts FROM kafka_sync.conflicts;
SELECT remote_lsn FROM pg_replication_origin_status WHERE external_id = kafka_sync._origin_name('chat2');
SELECT kafka_sync.drop_subscription('from_chat3');

-- source transactions of the same millisecond share one local commit (one xmin, the same
-- version as separate commits); one sent again after a later one is skipped, not re-applied
CALL kafka_sync.apply_transactions('from_chat2', '{24,25,26,27}', '{NULL,NULL,NULL,NULL}',
     ARRAY[ev('u', NULL, '{"id": 50, "label": "x"}'), ev('u', NULL, '{"id": 50, "label": "y"}'),
           ev('c', NULL, '{"id": 53, "label": "y2"}'), ev('u', NULL, '{"id": 50, "label": "x"}')],
     ARRAY[hdrs('0/1500', 1700000002000, 1), hdrs('0/1600', 1700000002000), hdrs('0/1600', 1700000002000, 2),
           hdrs('0/1500', 1700000002000, 1)]);
SELECT id, label, ts(x.timestamp) AS timestamp, (SELECT count(DISTINCT xmin::text) FROM items WHERE id IN (50, 53)) AS commits
  FROM items, pg_xact_commit_timestamp_origin(items.xmin) x WHERE id IN (50, 53) ORDER BY id;

-- a source transaction sent twice back to back (the same LSN: a restarted producer sent it
-- again) is applied once, in either call: a row trigger fires once per row
CREATE TABLE fired (id int);
CREATE FUNCTION count_fired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.fired VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER count_fired AFTER INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION count_fired();
CALL kafka_sync.apply_transactions('from_chat2', '{28,29,30,31}', '{NULL,NULL,NULL,NULL}',
     ARRAY[ev('c', NULL, '{"id": 70, "label": "once"}'), ev('c', NULL, '{"id": 71, "label": "once"}'),
           ev('c', NULL, '{"id": 70, "label": "once"}'), ev('c', NULL, '{"id": 71, "label": "once"}')],
     ARRAY[hdrs('0/1700', 1700000003000), hdrs('0/1700', 1700000003000, 2),
           hdrs('0/1700', 1700000003000), hdrs('0/1700', 1700000003000, 2)]);
BEGIN;
SELECT applied, skipped FROM kafka_sync.apply_chunk('from_chat2', '{32,33,34}', '{NULL,NULL,NULL}',
       ARRAY[ev('u', NULL, '{"id": 70, "label": "twice sent"}'), ev('u', NULL, '{"id": 70, "label": "twice sent"}'),
             ev('u', NULL, '{"id": 71, "label": "later"}')],
       ARRAY[hdrs('0/1800', 1700000004000, 1), hdrs('0/1800', 1700000004000, 1), hdrs('0/1900', 1700000005000, 1)],
       false);
COMMIT;
SELECT id, count(*) AS fired FROM fired GROUP BY id ORDER BY id;
SELECT id, label FROM items WHERE id IN (70, 71) ORDER BY id;
DROP TRIGGER count_fired ON items;
DROP TABLE fired;
DROP FUNCTION count_fired();
\c -
\set SHOW_CONTEXT never

-- plain users see nothing of it
CREATE ROLE conflict_reader;
SET ROLE conflict_reader;
SELECT count(*) FROM kafka_sync.conflicts;
SELECT count(*) FROM kafka_sync.conflict_log;
SELECT kafka_sync.alter_subscription('from_chat2', conflict_resolution => 'error');
RESET ROLE;
-- monitoring sees every conflict, and the rows only of tables it may read
CREATE TABLE secret_stuff (id int PRIMARY KEY, pin text);
INSERT INTO kafka_sync.conflicts (sub_name, peer_node, table_name, key, kind, local_row, remote_row, resolution)
VALUES ('from_chat2', 'chat2', 'public.items', '{"id": 1}', 'update_update', '{"id": 1}', '{"id": 1}', 'apply_remote'),
       ('from_chat2', 'chat2', 'public.secret_stuff', '{"id": 1}', 'update_update', '{"id": 1, "pin": "1234"}',
        '{"id": 1, "pin": "4321"}', 'apply_remote');
GRANT pg_monitor TO conflict_reader;
SET ROLE conflict_reader;
SELECT count(*) FROM kafka_sync.conflicts;
SELECT count(*) AS conflicts, count(local_row) + count(remote_row) + count(key) AS row_images_shown
  FROM kafka_sync.conflict_log;
RESET ROLE;
GRANT SELECT ON items TO conflict_reader;
SET ROLE conflict_reader;
SELECT count(*) FILTER (WHERE table_name <> 'public.items' AND (key IS NOT NULL OR local_row IS NOT NULL)) AS others_shown,
       count(key) FILTER (WHERE table_name = 'public.items') AS items_keys_shown
  FROM kafka_sync.conflict_log;
RESET ROLE;
REVOKE SELECT ON items FROM conflict_reader;
DROP ROLE conflict_reader;
DROP TABLE secret_stuff;

-- drop_node removes the triggers and the tombstones
SELECT kafka_sync.drop_subscription('from_chat2');
SELECT kafka_sync.drop_node();
SELECT count(*) AS triggers FROM pg_trigger WHERE tgname = 'kafka_sync_tombstone';
SELECT count(*) AS tombstones FROM kafka_sync.tombstones;
