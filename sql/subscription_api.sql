\set SHOW_CONTEXT never
-- The subscription SQL API: argument checks, one subscription per peer,
-- pause/resume, superuser-only management, secrets out of the status view.
CREATE PUBLICATION kafka_sync FOR ALL TABLES;
SELECT kafka_sync.create_node('chat1', 'localhost:1', snapshot => false);

SELECT kafka_sync.create_subscription('Bad Name', 'chat2', 'localhost:1');
SELECT kafka_sync.create_subscription('from_chat2', 'Chat2', 'localhost:1');
SELECT kafka_sync.create_subscription('from_self', 'chat1', 'localhost:1');
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', '');
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1', start => 'yesterday');
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1', on_error => 'ignore');
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1', kafka_config => '{"fetch.wait.max.mss": 1}');

SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1',
    kafka_config => '{"sasl.password": "hunter2"}');
SELECT kafka_sync.create_subscription('from_chat2', 'chat3', 'localhost:1');
SELECT kafka_sync.create_subscription('again_chat2', 'chat2', 'localhost:1');
SELECT kafka_sync.create_subscription('from_chat3', 'chat3', 'localhost:1', start => 'latest', on_error => 'skip');
SELECT replace(roname, kafka_sync._origin_name(''), 'kafka_sync_<db>_') AS roname FROM pg_replication_origin ORDER BY roname;
SELECT name, peer, topic, state, applied_offset, rows_applied, dead_letters FROM kafka_sync.subscription_status ORDER BY name;

SELECT kafka_sync.pause_subscription('from_chat2');
SELECT kafka_sync.pause_subscription('nope');
SELECT name, state FROM kafka_sync.subscription_status ORDER BY name;
SELECT sub_name FROM kafka_sync.sidecar_subscriptions();
SELECT kafka_sync.resume_subscription('from_chat2', skip_failed => true);
SELECT kafka_sync.resume_subscription('from_chat2');
SELECT name, state FROM kafka_sync.subscription_status ORDER BY name;

-- a non-superuser can neither manage subscriptions nor read their settings
CREATE ROLE kafka_sync_sub_tester;
SET ROLE kafka_sync_sub_tester;
SELECT kafka_sync.create_subscription('x', 'chat9', 'localhost:1');
SELECT kafka_sync.drop_subscription('from_chat2');
SELECT * FROM kafka_sync.subscription;
SELECT * FROM kafka_sync.sidecar_subscriptions();
SELECT * FROM kafka_sync.dead_letters;
RESET ROLE;
GRANT pg_monitor TO kafka_sync_sub_tester;
SET ROLE kafka_sync_sub_tester;
SELECT count(*) AS rows_mentioning_the_password FROM kafka_sync.subscription_status s WHERE s::text LIKE '%hunter2%';
RESET ROLE;
DROP ROLE kafka_sync_sub_tester;

SELECT kafka_sync.drop_subscription('from_chat2');
SELECT kafka_sync.drop_subscription('from_chat2');
SELECT kafka_sync.drop_subscription('from_chat3');
SELECT replace(roname, kafka_sync._origin_name(''), 'kafka_sync_<db>_') AS roname FROM pg_replication_origin ORDER BY roname;
SELECT kafka_sync.drop_node();
-- a database that is no node names the tables its subscriptions write
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1');
CREATE TABLE only_this (id int PRIMARY KEY);
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1', tables => ARRAY['pg_class']::regclass[]);
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1', tables => ARRAY['only_this']::regclass[]);
SELECT sub_name, tables, allow_truncate FROM kafka_sync.subscription;
SELECT kafka_sync.drop_subscription('from_chat2');
-- a role granted create_subscription names only tables it may write itself
CREATE ROLE sub_operator;
GRANT EXECUTE ON FUNCTION kafka_sync.create_subscription(text, text, text, text, text, text, jsonb, text, regclass[], boolean)
    TO sub_operator;
SET SESSION AUTHORIZATION sub_operator;
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1', tables => ARRAY['only_this']::regclass[]);
RESET SESSION AUTHORIZATION;
GRANT INSERT, UPDATE, DELETE ON only_this TO sub_operator;
SET SESSION AUTHORIZATION sub_operator;
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1', tables => ARRAY['only_this']::regclass[]);
SELECT kafka_sync.create_subscription('from_chat2', 'chat2', 'localhost:1', tables => ARRAY['only_this']::regclass[],
                                      allow_truncate => false);
RESET SESSION AUTHORIZATION;
SELECT kafka_sync.drop_subscription('from_chat2');
REVOKE ALL ON only_this FROM sub_operator;
REVOKE ALL ON FUNCTION kafka_sync.create_subscription(text, text, text, text, text, text, jsonb, text, regclass[], boolean)
    FROM sub_operator;
DROP ROLE sub_operator;
DROP TABLE only_this;
DROP PUBLICATION kafka_sync;
