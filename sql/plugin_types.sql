\set SHOW_CONTEXT never
-- Every value is PostgreSQL's own text output of the column, so every type
-- round-trips exactly: the "after" image, fed back through each column's
-- input function, gives back the identical row.
SET TimeZone = 'UTC';
SET extra_float_digits = 0;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS int CHECK (VALUE > 0);
CREATE TYPE address AS (street text, zip int);
CREATE TABLE wide (
    id          uuid PRIMARY KEY,
    n           numeric(30,10),
    n_special   numeric,
    f8          float8,
    i8          bigint,
    b           boolean,
    raw         bytea,
    ints        int[],
    texts       text[],
    j           json,
    jb          jsonb,
    m           mood,
    p           positive_int,
    addr        address,
    ts          timestamptz,
    d           date,
    iv          interval,
    t_unicode   text,
    ch          char(5),
    vc          varchar(20),
    inet_col    inet,
    r           int4range,
    nullable    text
);
CREATE PUBLICATION kafka_sync FOR TABLE wide;
SELECT 'init' FROM pg_create_logical_replication_slot('plugin_types', 'kafka_sync');

INSERT INTO wide VALUES (
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    12345678901234567890.0123456789,
    'NaN',
    -1.5e-300,
    -9223372036854775808,
    true,
    '\x00ff10'::bytea,
    '{1,NULL,3}',
    '{"a b","c,d","e\"f",NULL}',
    '{"k": [1, 2.50, "x"]}',
    '{"k": [1, 2.50, "x"], "a": null}',
    'happy',
    42,
    ROW('Main St "7"', 12345),
    '2024-02-29 23:59:59.999999+05',
    '2024-02-29',
    '1 year 2 mons -3 days 04:05:06.789',
    'héllo wörld – 漢字 😀 tab	quote" backslash\ ',
    'ab',
    'varchar',
    '192.168.0.1/24',
    '[1,10)',
    NULL
);

CREATE TEMP TABLE decoded AS
SELECT data::jsonb->'value'->'after' AS after
FROM pg_logical_slot_get_changes('plugin_types', NULL, NULL,
    'node_name', 'chat1', 'include_schema', 'false', 'include_xids', 'false',
    'include_lsn', 'false', 'include_timestamps', 'false');

SELECT key, value FROM decoded, jsonb_each(after) ORDER BY key;

-- round trip: the record's values, read back through each column's input
-- function (as a row literal of the table's type), give the identical row
SELECT (SELECT w::text FROM wide w) = (
    SELECT ('(' || string_agg(
        CASE WHEN d.after->>a.attname IS NULL THEN ''
             ELSE '"' || replace(replace(d.after->>a.attname, '\', '\\'), '"', '\"') || '"' END,
        ',' ORDER BY a.attnum) || ')')::wide::text
    FROM pg_attribute a
    WHERE a.attrelid = 'wide'::regclass AND a.attnum > 0 AND NOT a.attisdropped) AS round_trips
FROM decoded d;

SELECT pg_drop_replication_slot('plugin_types');
DROP TABLE wide;
DROP PUBLICATION kafka_sync;
DROP TYPE mood, address;
DROP DOMAIN positive_int;
