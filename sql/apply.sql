\set SHOW_CONTEXT never
-- The apply function, called as the sidecar calls it: inside a transaction,
-- under the peer's replication origin, exactly once per source transaction
-- (by LSN), with bad records kept in kafka_sync.dead_letters.
CREATE TABLE user_table (user_id text PRIMARY KEY, user_name text, user_status text);
CREATE TABLE balances (account int PRIMARY KEY, amount numeric NOT NULL CHECK (amount >= 0));
CREATE TABLE ledger (id int PRIMARY KEY, account int REFERENCES balances, amount numeric);
CREATE PUBLICATION kafka_sync FOR ALL TABLES;
SELECT kafka_sync.create_node('chat1', 'localhost:1', snapshot => false);
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1');
-- a slot to show that applied changes are never published again
SELECT 'init' FROM pg_create_logical_replication_slot('apply_echo', 'kafka_sync');

-- Kafka headers as the sidecar passes them (length-prefixed name/value pairs)
CREATE FUNCTION hdrs(lsn text, txn_end int DEFAULT NULL, origin text DEFAULT 'chat2') RETURNS bytea
LANGUAGE sql AS $$
    SELECT int4send(14) || 'kafka_sync.lsn'::bytea || int4send(octet_length(lsn)) || convert_to(lsn, 'UTF8')
        || int4send(17) || 'kafka_sync.origin'::bytea || int4send(octet_length(origin)) || convert_to(origin, 'UTF8')
        || int4send(20) || 'kafka_sync.commit_ts'::bytea || int4send(13) || '1700000000000'::bytea
        || CASE WHEN txn_end IS NULL THEN ''::bytea
           ELSE int4send(18) || 'kafka_sync.txn_end'::bytea || int4send(octet_length(txn_end::text)) || convert_to(txn_end::text, 'UTF8') END
$$;
CREATE FUNCTION ev(op text, tbl text, before jsonb, after jsonb, origin text DEFAULT 'chat2',
                   sch text DEFAULT 'public') RETURNS bytea
LANGUAGE sql AS $$
    SELECT convert_to(jsonb_build_object('op', op, 'before', before, 'after', after,
        'source', jsonb_build_object('connector', 'kafka_sync', 'name', origin, 'origin', origin,
                                     'schema', sch, 'table', tbl))::text, 'UTF8')
$$;
CREATE VIEW progress AS
SELECT applied_offset, last_applied_lsn, rows_applied, conflicts, dead_letters,
       (SELECT remote_lsn FROM pg_replication_origin_status WHERE external_id = kafka_sync._origin_name('chat2')) AS origin_lsn
FROM kafka_sync.subscription_status;

-- must run inside a transaction block
SELECT * FROM kafka_sync.apply_chunk('from_chat2', '{0}', '{NULL}', ARRAY[ev('c', 'user_table', NULL, '{"user_id": "u1"}')], ARRAY[hdrs('0/100', 1)], false);

-- one source transaction, two records (with a name full of quotes and semicolons as a value)
BEGIN;
SELECT * FROM kafka_sync.apply_chunk('from_chat2', '{0,1}', '{NULL,NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "u1", "user_name": "Ann", "user_status": "online"}'),
          ev('c', 'user_table', NULL, '{"user_id": "u2", "user_name": "Bob\"; DROP TABLE user_table; --", "user_status": null}')],
    ARRAY[hdrs('0/100'), hdrs('0/100', 2)], false);
COMMIT;
SELECT * FROM user_table ORDER BY user_id;
SELECT * FROM progress;

-- update, key change, delete
BEGIN;
SELECT applied, skipped, conflicts FROM kafka_sync.apply_chunk('from_chat2', '{2,3,4}', '{NULL,NULL,NULL}',
    ARRAY[ev('u', 'user_table', NULL, '{"user_id": "u1", "user_name": "Ann", "user_status": "away"}'),
          ev('u', 'user_table', '{"user_id": "u2"}', '{"user_id": "u2b", "user_name": "Bob", "user_status": "online"}'),
          ev('d', 'user_table', '{"user_id": "u1"}', NULL)],
    ARRAY[hdrs('0/200'), hdrs('0/200'), hdrs('0/200', 3)], false);
COMMIT;
SELECT * FROM user_table ORDER BY user_id;

-- the same transaction again (a duplicate in the topic): skipped by LSN
BEGIN;
SELECT applied, skipped FROM kafka_sync.apply_chunk('from_chat2', '{5}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "u1", "user_name": "again"}')], ARRAY[hdrs('0/200', 1)], false);
COMMIT;
SELECT * FROM user_table ORDER BY user_id;
SELECT * FROM progress;

-- a rolled-back local transaction leaves no trace: neither rows nor progress
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{6}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "u7"}')], ARRAY[hdrs('0/300', 1)], false);
ROLLBACK;
SELECT count(*) AS u7_rows FROM user_table WHERE user_id = 'u7';
SELECT * FROM progress;

-- existing row of the same peer on insert: an update; missing row on update/delete: conflicts
BEGIN;
SELECT applied, conflicts FROM kafka_sync.apply_chunk('from_chat2', '{6,7,8}', '{NULL,NULL,NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "u2b", "user_name": "Bobby"}'),
          ev('u', 'user_table', NULL, '{"user_id": "u8", "user_name": "Newcomer"}'),
          ev('d', 'user_table', '{"user_id": "nobody"}', NULL)],
    ARRAY[hdrs('0/300'), hdrs('0/300'), hdrs('0/300', 3)], false);
COMMIT;
SELECT * FROM user_table ORDER BY user_id;

-- tombstones are skipped
BEGIN;
SELECT applied, skipped FROM kafka_sync.apply_chunk('from_chat2', '{9}', '{NULL}', '{NULL}', ARRAY[hdrs('0/400', 1)], false);
COMMIT;

-- a whole source transaction over two tables, and truncate
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{10,11}', '{NULL,NULL}',
    ARRAY[ev('c', 'balances', NULL, '{"account": "1", "amount": "100"}'),
          ev('c', 'ledger', NULL, '{"id": "1", "account": "1", "amount": "100"}')],
    ARRAY[hdrs('0/500'), hdrs('0/500', 2)], false);
COMMIT;
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{12,13}', '{NULL,NULL}',
    ARRAY[ev('t', 'ledger', NULL, NULL), ev('t', 'balances', NULL, NULL)],
    ARRAY[hdrs('0/600'), hdrs('0/600', 2)], false);
COMMIT;
SELECT (SELECT count(*) FROM balances) AS balances, (SELECT count(*) FROM ledger) AS ledger;

-- bad records: in normal mode the chunk fails (the sidecar then retries carefully)
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{14}', '{NULL}', ARRAY['\x00ff6761726261676500'::bytea], '{NULL}', false);
ROLLBACK;
-- careful mode, on_error = pause: nothing is applied, the failure is returned
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{14,15}', '{NULL,NULL}',
    ARRAY['\x00ff6761726261676500'::bytea, ev('c', 'user_table', NULL, '{"user_id": "u15"}')],
    ARRAY[NULL, hdrs('0/700', 1)], true);
ROLLBACK;
-- careful mode, on_error = skip: each bad record lands in dead_letters, good ones apply
UPDATE kafka_sync.subscription SET on_error = 'skip';
BEGIN;
SELECT applied, dead_letters, failed_offset FROM kafka_sync.apply_chunk('from_chat2',
    '{14,15,16,17,18,19,20,21}', '{NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL}',
    ARRAY['\x00ff6761726261676500'::bytea,                                                  -- garbage
          convert_to('{"op": "c"}', 'UTF8'),                                                -- not a change event
          ev('c', 'no_such_table', NULL, '{"id": "1"}'),                                    -- unknown table
          ev('c', 'user_table', NULL, '{"user_id": "x", "na\"me; DROP TABLE ledger": "1"}'), -- unknown column
          ev('c', 'balances', NULL, '{"account": "not a number", "amount": "1"}'),          -- type input error
          ev('c', 'balances', NULL, '{"account": "2", "amount": "-5"}'),                    -- constraint violation
          ev('c', 'subscription', NULL, '{"sub_name": "evil"}', sch => 'kafka_sync'),       -- our own tables: never
          ev('c', 'user_table', NULL, '{"user_id": "u21"}')],
    ARRAY[NULL, hdrs('0/800'), hdrs('0/800'), hdrs('0/800'), hdrs('0/800'), hdrs('0/800'), hdrs('0/800'), hdrs('0/800', 8)], true);
COMMIT;
SELECT kafka_offset, error FROM kafka_sync.dead_letters ORDER BY kafka_offset;
SELECT * FROM user_table WHERE user_id IN ('x', 'u21');
SELECT * FROM progress;
-- dead letters are bounded (kafka_sync.dead_letter_max_rows): the newest stay
SET kafka_sync.dead_letter_max_rows = 3;
BEGIN;
SELECT dead_letters FROM kafka_sync.apply_chunk('from_chat2', '{22,23}', '{NULL,NULL}',
    ARRAY['\x00'::bytea, '\x01'::bytea], ARRAY[NULL, NULL]::bytea[], true);
SELECT count(*) AS kept, min(kafka_offset) AS oldest_kept FROM kafka_sync.dead_letters;
ROLLBACK;
RESET kafka_sync.dead_letter_max_rows;
-- and so is what one keeps (kafka_sync.max_logged_value_size): a larger value is not kept, its size is,
-- and an error message quoting a peer's value is cut
SET kafka_sync.max_logged_value_size = 1000;
BEGIN;
SELECT dead_letters FROM kafka_sync.apply_chunk('from_chat2', '{24,25}', '{NULL,NULL}',
    ARRAY[convert_to('{"op": "c", "pad": "' || repeat('x', 2000) || '"}', 'UTF8'),
          ev('c', 'balances', NULL, ('{"account": "' || repeat('9', 3000) || 'x", "amount": "1"}')::jsonb)],
    ARRAY[NULL, hdrs('0/880', 1)], true);
SELECT kafka_offset, value IS NULL AS value_omitted, value_bytes, length(error) < 1400 AS error_bounded,
       substring(error from '\(\d+ bytes of the message omitted\)') AS error_cut, right(error, 60) AS error_ends
  FROM kafka_sync.dead_letters WHERE kafka_offset IN (24, 25) ORDER BY kafka_offset;
ROLLBACK;
RESET kafka_sync.max_logged_value_size;

-- the apply side refuses a record that originated at this node
UPDATE kafka_sync.subscription SET on_error = 'pause';
BEGIN;
SELECT failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{22}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "loop"}', origin => 'chat1')], ARRAY[hdrs('0/900', 1, origin => 'chat1')], true);
ROLLBACK;

-- record_failure keeps the record and pauses the subscription
SELECT kafka_sync.record_failure('from_chat2', 22, NULL, ev('c', 'user_table', NULL, '{"user_id": "loop"}', origin => 'chat1'),
    hdrs('0/900', 1, origin => 'chat1'), 'the record originated at this node (chat1)');
SELECT name, state, last_error, dead_letters FROM kafka_sync.subscription_status;
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{23}', '{NULL}', ARRAY[ev('c', 'user_table', NULL, '{"user_id": "u23"}')], ARRAY[hdrs('0/a00', 1)], false);
ROLLBACK;
SELECT kafka_sync.resume_subscription('from_chat2', skip_failed => true);
SELECT name, state, applied_offset FROM kafka_sync.subscription_status;

-- a bad record in the middle of a source transaction: after resuming past
-- it, the rest of that transaction is applied, together, from its first record
BEGIN;
SELECT failed_offset FROM kafka_sync.apply_chunk('from_chat2', '{22,23,24}', '{NULL,NULL,NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "t1"}'), ev('c', 'no_such_table', NULL, '{"id": "1"}'),
          ev('c', 'user_table', NULL, '{"user_id": "t3"}')],
    ARRAY[hdrs('0/b00'), hdrs('0/b00'), hdrs('0/b00', 3)], true);
ROLLBACK;
SELECT kafka_sync.record_failure('from_chat2', 23, NULL, ev('c', 'no_such_table', NULL, '{"id": "1"}'), hdrs('0/b00'),
    'table "public"."no_such_table" of the record does not exist here');
SELECT kafka_sync.resume_subscription('from_chat2', skip_failed => true);
BEGIN;
SELECT applied, skipped FROM kafka_sync.apply_chunk('from_chat2', '{22,23,24}', '{NULL,NULL,NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "t1"}'), ev('c', 'no_such_table', NULL, '{"id": "1"}'),
          ev('c', 'user_table', NULL, '{"user_id": "t3"}')],
    ARRAY[hdrs('0/b00'), hdrs('0/b00'), hdrs('0/b00', 3)], false);
COMMIT;
SELECT user_id FROM user_table WHERE user_id IN ('t1', 't3') ORDER BY 1;
SELECT name, state, applied_offset FROM kafka_sync.subscription_status;

-- a rolled-back apply leaves no origin position behind for the session's next commit
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{25}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "t25"}')], ARRAY[hdrs('0/c00', 1)], false);
ROLLBACK;
SELECT kafka_sync.record_failure('from_chat2', 25, NULL, '\x00'::bytea, NULL, 'a failure after a rollback');
SELECT origin_lsn, last_applied_lsn FROM progress;
SELECT kafka_sync.resume_subscription('from_chat2');

-- user triggers on a synced table fire once per applied row, SECURITY DEFINER
-- ones too, also when one transaction writes many rows of the table (its
-- executor state is kept from row to row); a table with a statement trigger
-- is written through SQL statements, which fire it
CREATE TABLE trig_t (id int PRIMARY KEY, v text);
CREATE TABLE trig_log (seq serial, what text, id int);
CREATE FUNCTION trig_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    INSERT INTO trig_log (what, id) VALUES (TG_WHEN || ' ' || TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE FUNCTION trig_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.trig_log (what) VALUES ('statement ' || TG_OP); RETURN NULL; END $$;
CREATE TRIGGER b BEFORE INSERT OR UPDATE OR DELETE ON trig_t FOR EACH ROW EXECUTE FUNCTION trig_row();
CREATE TRIGGER a AFTER INSERT OR UPDATE OR DELETE ON trig_t FOR EACH ROW EXECUTE FUNCTION trig_row();
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{26,27,28,29,30}', '{NULL,NULL,NULL,NULL,NULL}',
    ARRAY[ev('c', 'trig_t', NULL, '{"id": 1, "v": "a"}'), ev('c', 'trig_t', NULL, '{"id": 2, "v": "b"}'),
          ev('u', 'trig_t', NULL, '{"id": 1, "v": "a2"}'), ev('d', 'trig_t', '{"id": 2, "v": "b"}', NULL),
          ev('c', 'trig_t', NULL, '{"id": 3, "v": "c"}')],
    ARRAY[hdrs('0/d00'), hdrs('0/d00'), hdrs('0/d00'), hdrs('0/d00'), hdrs('0/d00', 5)], false);
COMMIT;
CREATE TRIGGER s AFTER INSERT ON trig_t FOR EACH STATEMENT EXECUTE FUNCTION trig_stmt();
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{31}', '{NULL}',
    ARRAY[ev('c', 'trig_t', NULL, '{"id": 4, "v": "d"}')], ARRAY[hdrs('0/e00', 1)], false);
COMMIT;
SELECT * FROM trig_t ORDER BY id;
SELECT what, id FROM trig_log ORDER BY seq;
SELECT count(*) AS tombstones FROM kafka_sync.tombstones WHERE relid = 'trig_t'::regclass;

-- what the executor path does not write goes through SQL statements: a
-- partitioned table (rows routed to their partitions), a record lacking a
-- column this node has (its default fills it)
CREATE TABLE part_t (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE part_t_1 PARTITION OF part_t FOR VALUES FROM (0) TO (100);
CREATE TABLE part_t_2 PARTITION OF part_t FOR VALUES FROM (100) TO (200);
ALTER TABLE user_table ADD COLUMN joined text DEFAULT 'here';
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{32,33,34,35,36}', '{NULL,NULL,NULL,NULL,NULL}',
    ARRAY[ev('c', 'part_t', NULL, '{"id": 1, "v": "a"}'), ev('c', 'part_t', NULL, '{"id": 150, "v": "b"}'),
          ev('u', 'part_t', NULL, '{"id": 150, "v": "b2"}'), ev('d', 'part_t', '{"id": 1, "v": "a"}', NULL),
          ev('c', 'user_table', NULL, '{"user_id": "p5", "user_name": "Pat"}')],
    ARRAY[hdrs('0/f00'), hdrs('0/f00'), hdrs('0/f00'), hdrs('0/f00'), hdrs('0/f00', 5)], false);
COMMIT;
SELECT tableoid::regclass AS part, * FROM part_t ORDER BY id;
SELECT * FROM user_table WHERE user_id = 'p5';
ALTER TABLE user_table DROP COLUMN joined;

-- a subscription writes only its tables: by default those of this node's
-- publication (FOR ALL TABLES here), or those it names; TRUNCATE only when allowed
SELECT kafka_sync.alter_subscription('from_chat2', tables => ARRAY['user_table']::regclass[], allow_truncate => false);
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{40}', '{NULL}',
    ARRAY[ev('c', 'balances', NULL, '{"account": 99, "amount": 1}')], ARRAY[hdrs('0/1100', 1)], true);
ROLLBACK;
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{40}', '{NULL}',
    ARRAY[ev('t', 'user_table', NULL, NULL)], ARRAY[hdrs('0/1100', 1)], true);
ROLLBACK;
BEGIN;
SELECT applied, failed_offset FROM kafka_sync.apply_chunk('from_chat2', '{40}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "named"}')], ARRAY[hdrs('0/1100', 1)], true);
COMMIT;
SELECT kafka_sync.alter_subscription('from_chat2', tables => ARRAY['kafka_sync.node']::regclass[]);
SELECT kafka_sync.alter_subscription('from_chat2', tables => '{}', allow_truncate => true);
SELECT tables, allow_truncate FROM kafka_sync.subscription;
CREATE TABLE not_published (id int PRIMARY KEY);
ALTER PUBLICATION kafka_sync RENAME TO kafka_sync_all;
CREATE PUBLICATION kafka_sync FOR TABLE user_table;
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{41}', '{NULL}',
    ARRAY[ev('c', 'not_published', NULL, '{"id": 1}')], ARRAY[hdrs('0/1200', 1)], true);
ROLLBACK;
DROP PUBLICATION kafka_sync;
ALTER PUBLICATION kafka_sync_all RENAME TO kafka_sync;
DROP TABLE not_published;

-- a peer topic's metadata is checked like its data: the origin must be the
-- peer, times plausible, and the LSN may not leap past everything to come
CREATE FUNCTION hdrs_at(lsn text, commit_ms text) RETURNS bytea LANGUAGE sql AS $$
    SELECT int4send(14) || 'kafka_sync.lsn'::bytea || int4send(octet_length(lsn)) || convert_to(lsn, 'UTF8')
        || int4send(17) || 'kafka_sync.origin'::bytea || int4send(5) || 'chat2'::bytea
        || int4send(20) || 'kafka_sync.commit_ts'::bytea || int4send(octet_length(commit_ms)) || convert_to(commit_ms, 'UTF8')
        || int4send(18) || 'kafka_sync.txn_end'::bytea || int4send(1) || '1'::bytea
$$;
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{42}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "forged"}')], ARRAY[hdrs('0/1300', 1, 'chat3')], true);
ROLLBACK;
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{42}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "forged"}', 'chat3')], ARRAY[hdrs('0/1300', 1)], true);
ROLLBACK;
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{42}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "forged"}')], ARRAY[hdrs_at('0/1300', '4102444800000')], true);
ROLLBACK;
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{42}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "forged"}')], ARRAY[hdrs_at('0/1300', '-922337203685477')], true);
ROLLBACK;
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{42}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "forged"}')], ARRAY[hdrs('FFFFFFFF/FFFFFFFF', 1)], true);
ROLLBACK;
SELECT count(*) AS forged_rows FROM user_table WHERE user_id = 'forged';
-- a peer's new incarnation (restored, failed over, dropped and created again)
-- starts its LSNs over: nothing of it is skipped as applied before
CREATE FUNCTION hdrs_inc(lsn text, inc text) RETURNS bytea LANGUAGE sql AS $$
    SELECT hdrs(lsn, 1) || int4send(22) || 'kafka_sync.incarnation'::bytea || int4send(octet_length(inc))
        || convert_to(inc, 'UTF8')
$$;
BEGIN;
SELECT applied, skipped FROM kafka_sync.apply_chunk('from_chat2', '{50}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "inc1"}')], ARRAY[hdrs_inc('0/5000', '7/1/100')], false);
COMMIT;
BEGIN;
SELECT applied, skipped FROM kafka_sync.apply_chunk('from_chat2', '{51}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "inc_dup"}')], ARRAY[hdrs_inc('0/4000', '7/1/100')], false);
COMMIT;
BEGIN;
SELECT applied, skipped FROM kafka_sync.apply_chunk('from_chat2', '{52}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "inc2"}')], ARRAY[hdrs_inc('0/100', '7/2/100')], false);
COMMIT;
-- a straggler of the older incarnation (a failed-over primary) is skipped
BEGIN;
SELECT applied, skipped FROM kafka_sync.apply_chunk('from_chat2', '{53}', '{NULL}',
    ARRAY[ev('c', 'user_table', NULL, '{"user_id": "inc_old"}')], ARRAY[hdrs_inc('0/9000', '7/1/100')], false);
COMMIT;
SELECT user_id FROM user_table WHERE user_id LIKE 'inc%' ORDER BY 1;
SELECT peer_incarnation FROM kafka_sync.subscription;
DROP FUNCTION hdrs_inc;
-- a null key value is refused, whatever the record (it once reached a key's send function)
BEGIN;
SELECT applied, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{42,43}', '{NULL,NULL}',
    ARRAY[ev('d', 'user_table', '{"user_id": null}', NULL), ev('r', 'user_table', NULL, '{"user_id": null}')],
    ARRAY[hdrs('0/1300'), hdrs('0/1300', 2)], true);
ROLLBACK;
DROP FUNCTION hdrs_at;

-- a peer's change runs as the owner of the table it writes: the table's
-- triggers, defaults and domain checks get the owner's rights, never the
-- sidecar's (here a superuser), and cannot change the session's settings
CREATE ROLE owner_alice;
CREATE DOMAIN alice_text AS text CHECK (VALUE <> 'forbidden');
CREATE TABLE owned (id int PRIMARY KEY, v alice_text, made_by text DEFAULT current_user);
CREATE TABLE owned_log (op text, who text, outcome text);
GRANT INSERT ON owned_log TO owner_alice;
CREATE FUNCTION owned_trig() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        EXECUTE 'ALTER ROLE owner_alice SUPERUSER';
        INSERT INTO public.owned_log VALUES (TG_OP, current_user, 'became superuser');
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO public.owned_log VALUES (TG_OP, current_user, SQLERRM);
    END;
    PERFORM set_config('work_mem', '1MB', false);
    RETURN NEW;
END $$;
ALTER TABLE owned OWNER TO owner_alice;
ALTER FUNCTION owned_trig() OWNER TO owner_alice;
CREATE TRIGGER owned_trig BEFORE INSERT OR UPDATE ON owned FOR EACH ROW EXECUTE FUNCTION owned_trig();
ALTER TABLE owned ENABLE ALWAYS TRIGGER owned_trig;
SHOW work_mem;
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{43,44}', '{NULL,NULL}',
    ARRAY[ev('c', 'owned', NULL, '{"id": 1, "v": "x"}'), ev('u', 'owned', NULL, '{"id": 1, "v": "y"}')],
    ARRAY[hdrs('0/1400'), hdrs('0/1400', 2)], false);
COMMIT;
SELECT * FROM owned;
SELECT * FROM owned_log;
SELECT rolsuper FROM pg_roles WHERE rolname = 'owner_alice';
SHOW work_mem;
-- the table's statement triggers make it go through SQL: the same there
CREATE FUNCTION owned_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.owned_log VALUES ('statement ' || TG_OP, current_user, NULL);
    RETURN NULL;
END $$;
ALTER FUNCTION owned_stmt() OWNER TO owner_alice;
CREATE TRIGGER owned_stmt AFTER INSERT ON owned FOR EACH STATEMENT EXECUTE FUNCTION owned_stmt();
ALTER TABLE owned ENABLE ALWAYS TRIGGER owned_stmt;
BEGIN;
SELECT applied FROM kafka_sync.apply_chunk('from_chat2', '{45}', '{NULL}',
    ARRAY[ev('c', 'owned', NULL, '{"id": 2, "v": "z"}')], ARRAY[hdrs('0/1500', 1)], false);
COMMIT;
BEGIN;
SELECT applied, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{46}', '{NULL}',
    ARRAY[ev('c', 'owned', NULL, '{"id": 3, "v": "forbidden"}')], ARRAY[hdrs('0/1600', 1)], true);
ROLLBACK;
SELECT * FROM owned ORDER BY id;
SELECT * FROM owned_log;
DROP TABLE owned, owned_log;
DROP FUNCTION owned_trig, owned_stmt;
DROP DOMAIN alice_text;
DROP ROLE owner_alice;

-- a deferrable constraint trigger would fire at the commit, as the sidecar's role: such a table is refused
CREATE TABLE deferred_t (id int PRIMARY KEY);
CREATE FUNCTION deferred_trig() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER deferred_check AFTER INSERT ON deferred_t DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION deferred_trig();
BEGIN;
SELECT dead_letters, failed_offset, failed_error FROM kafka_sync.apply_chunk('from_chat2', '{1700}', '{NULL}',
    ARRAY[ev('c', 'deferred_t', NULL, '{"id": 1}')], ARRAY[hdrs('0/1700', 1)], true);
ROLLBACK;
DROP TABLE deferred_t;
DROP FUNCTION deferred_trig;

-- nothing applied above was published again: it all carried the origin
SELECT count(*) AS republished FROM pg_logical_slot_get_changes('apply_echo', NULL, NULL, 'node_name', 'chat1');

SELECT pg_drop_replication_slot('apply_echo');
SELECT kafka_sync.drop_subscription('from_chat2');
SELECT kafka_sync.drop_node();
DROP VIEW progress;
DROP FUNCTION hdrs, ev;
DROP TABLE user_table, ledger, balances, trig_t, trig_log, part_t;
DROP FUNCTION trig_row, trig_stmt;
DROP PUBLICATION kafka_sync;
