#!/usr/bin/env bash
# make demo: two master PostgreSQL databases, chat1 and chat2, kept in sync
# in both directions through Kafka by kafka_sync. As root on Debian 12:
# installs what is missing, builds, starts a Kafka (a real Apache Kafka broker
# on loopback, test/kafka_broker/kafka_broker.py, or KAFKA_BROKERS), two
# PostgreSQL clusters, both nodes, both subscriptions and both sidecars, then
# writes on both sides and shows the other side.
#
#   make demo                          start (and leave running)
#   make demo KAFKA_BROKERS=host:9092  the same with an existing Kafka cluster
#   make demo-stop                     stop everything, remove the demo's data
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
DEMO=${KAFKA_SYNC_DEMO_DIR:-/tmp/kafka_sync_demo}
PGBIN=/usr/lib/postgresql/15/bin
PORT1=${DEMO_PORT1:-5441}
PORT2=${DEMO_PORT2:-5442}
KAFKA_DIR=$DEMO/kafka
KAFKA_BROKER="/usr/bin/python3 $REPO/test/kafka_broker/kafka_broker.py"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
as_pg() { runuser -u postgres -- "$@"; }

stop() {
    [ -d "$KAFKA_DIR" ] && $KAFKA_BROKER stop --dir "$KAFKA_DIR" 2>/dev/null || true
    for f in "$DEMO"/*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    for c in chat1 chat2; do
        [ -d "$DEMO/$c/data" ] && as_pg "$PGBIN/pg_ctl" -D "$DEMO/$c/data" -m fast stop >/dev/null 2>&1 || true
    done
    rm -rf "$DEMO"
}
if [ "${1:-}" = stop ]; then stop; echo "demo stopped"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "run make demo as root (it installs packages and starts servers as postgres)"; exit 1; }

say "Installing what is missing"
PKGS="build-essential postgresql-15 postgresql-server-dev-15 libpq-dev librdkafka-dev libjansson-dev kcat python3-psycopg2"
# the local broker: Java 17 runs it, Maven fetches it once, Python starts it
[ -n "${KAFKA_BROKERS:-}" ] || PKGS="$PKGS openjdk-17-jre-headless maven python3-confluent-kafka"
missing=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
echo "ok"

say "Building and installing kafka_sync"
export PATH=$PGBIN:$PATH
make -s -j"$(nproc)" >/dev/null && make -s install >/dev/null
chmod -R a+rX "$REPO"
echo "ok"

stop
mkdir -p "$DEMO" && chown postgres "$DEMO"

say "Starting Kafka"
if [ -n "${KAFKA_BROKERS:-}" ]; then
    BOOTSTRAP=$KAFKA_BROKERS
    PREFIX=${KAFKA_SYNC_DEMO_PREFIX:-kafka_sync_demo}
    echo "using $BOOTSTRAP (topics $PREFIX.chat1 and $PREFIX.chat2 are created by the nodes)"
else
    PREFIX=kafka_sync
    # Detached (it outlives this script); make demo-stop stops it. The first
    # run fetches the pinned Apache Kafka with Maven into ~/.cache/kafka_sync.
    BOOTSTRAP=$($KAFKA_BROKER start --dir "$KAFKA_DIR" </dev/null)
    KAFKA_VERSION=$(cd "$REPO/test/kafka_broker" && /usr/bin/python3 -c 'import kafka_broker; print(kafka_broker.KAFKA_VERSION)')
    echo "Apache Kafka $KAFKA_VERSION (KRaft, one broker) at $BOOTSTRAP, data and server.log in $KAFKA_DIR/node1"
    echo "(topics $PREFIX.chat1 and $PREFIX.chat2 are created by the nodes)"
fi

start_cluster() { # name port
    local dir=$DEMO/$1
    mkdir -p "$dir" && chown postgres "$dir"
    as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $2
listen_addresses = ''
unix_socket_directories = '$dir'
shared_preload_libraries = 'kafka_sync'
wal_level = logical
track_commit_timestamp = on
output_plugin_libraries = 'pgoutput, test_decoding, kafka_sync'
max_replication_slots = 10
max_worker_processes = 16
CONF
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
}
psql_on() { # name port sql...
    local name=$1 port=$2; shift 2
    as_pg "$PGBIN/psql" -h "$DEMO/$name" -p "$port" -U postgres -d chat -X -q -v ON_ERROR_STOP=1 "$@"
}

say "Starting PostgreSQL chat1 (port $PORT1) and chat2 (port $PORT2)"
start_cluster chat1 "$PORT1"
start_cluster chat2 "$PORT2"
for c in "chat1 $PORT1" "chat2 $PORT2"; do
    set -- $c
    as_pg "$PGBIN/createdb" -h "$DEMO/$1" -p "$2" -U postgres chat
done
echo "ok"

setup_node() { # name port peer
    psql_on "$1" "$2" <<SQL
CREATE EXTENSION kafka_sync;
CREATE TABLE user_table (user_id text PRIMARY KEY, user_name text, user_status text);
CREATE PUBLICATION kafka_sync FOR ALL TABLES;
SELECT kafka_sync.create_node('$1', '$BOOTSTRAP', topic_prefix => '$PREFIX',
       kafka_config => '{"kafka_sync.schemas": false}');
SELECT kafka_sync.create_subscription('from_$3', '$3', '$BOOTSTRAP', topic_prefix => '$PREFIX');
SQL
}
say "Creating the nodes and their subscriptions to each other"
setup_node chat1 "$PORT1" chat2
setup_node chat2 "$PORT2" chat1
cat <<TXT
  chat1: SELECT kafka_sync.create_node('chat1', '$BOOTSTRAP');
         SELECT kafka_sync.create_subscription('from_chat2', 'chat2', '$BOOTSTRAP');
  chat2: the same, the other way round
TXT

say "Starting the sidecars"
for c in "chat1 $PORT1" "chat2 $PORT2"; do
    set -- $c
    nohup "$PGBIN/kafka_sync_sidecar" --dsn "host=$DEMO/$1 port=$2 user=postgres dbname=chat" \
        >"$DEMO/sidecar_$1.log" 2>&1 </dev/null &
    echo $! >"$DEMO/sidecar_$1.pid"
    echo "kafka_sync_sidecar for $1: log in $DEMO/sidecar_$1.log"
done

wait_streaming() {
    for _ in $(seq 100); do
        s=$(psql_on "$1" "$2" -Atc "SELECT state FROM kafka_sync.node_status")
        [ "$s" = streaming ] && return 0
        sleep 0.2
    done
    echo "node $1 is not streaming: $s"; return 1
}
wait_streaming chat1 "$PORT1"; wait_streaming chat2 "$PORT2"

show() { # name port
    echo "-- on $1:"
    psql_on "$1" "$2" -c "SELECT * FROM user_table ORDER BY user_id"
}
settle() { sleep "${1:-2}"; }

say "Writing on chat1: two users join"
psql_on chat1 "$PORT1" -c "INSERT INTO user_table VALUES ('alice', 'Alice', 'online'), ('bob', 'Bob', 'online')"
settle; show chat2 "$PORT2"

say "Writing on chat2: Bob goes away, Carol joins"
psql_on chat2 "$PORT2" -c "UPDATE user_table SET user_status = 'away' WHERE user_id = 'bob'" \
    -c "INSERT INTO user_table VALUES ('carol', 'Carol', 'online')"
settle; show chat1 "$PORT1"

say "Writing on chat1: Alice leaves"
psql_on chat1 "$PORT1" -c "DELETE FROM user_table WHERE user_id = 'alice'"
settle; show chat2 "$PORT2"

say "Status on chat1"
psql_on chat1 "$PORT1" -c "SELECT node_name, topic, state, confirmed_lsn, records_acknowledged FROM kafka_sync.node_status" \
    -c "SELECT name, peer, state, applied_offset, lag, rows_applied, conflicts, dead_letters, apply_latency FROM kafka_sync.subscription_status"
say "Status on chat2"
psql_on chat2 "$PORT2" -c "SELECT node_name, topic, state, confirmed_lsn, records_acknowledged FROM kafka_sync.node_status" \
    -c "SELECT name, peer, state, applied_offset, lag, rows_applied, conflicts, dead_letters, apply_latency FROM kafka_sync.subscription_status"

say "The topics (each holds only its own node's changes: no loops)"
for t in chat1 chat2; do
    echo "-- $PREFIX.$t:"
    kcat -b "$BOOTSTRAP" -C -t "$PREFIX.$t" -p 0 -o beginning -e -q -f '  offset %o  key %k  %h\n' 2>/dev/null || true
done

cat <<TXT

The demo keeps running. Try it:
  psql -h $DEMO/chat1 -p $PORT1 -U postgres chat     (as the postgres user: runuser -u postgres -- psql ...)
  psql -h $DEMO/chat2 -p $PORT2 -U postgres chat
  write on one, SELECT on the other; watch kafka_sync.node_status and kafka_sync.subscription_status.
Logs: $DEMO/chat1/server.log, $DEMO/chat2/server.log, $DEMO/sidecar_chat*.log
TXT
if [ -z "${KAFKA_BROKERS:-}" ]; then
    cat <<TXT
Kafka: $KAFKA_DIR/node1/server.log. To make it unreachable for a while (writes go on,
  node_status says kafka_unavailable and the WAL it retains; nothing is lost):
  kill -STOP \$(cat $KAFKA_DIR/node1/pid)   ...   kill -CONT \$(cat $KAFKA_DIR/node1/pid)
TXT
fi
echo "Stop: make demo-stop"
