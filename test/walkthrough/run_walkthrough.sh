#!/usr/bin/env bash
# The README's "Getting started" walkthrough, run as a reader runs it: every
# ```sh tour=<name> block of the section, in order, unchanged, in one bash
# (they share shell variables), as root from the source tree. After a block,
# check_<name> (below) checks what the README says happens then, waiting for
# it where the README says "a moment later". Any error in a block (psql
# stops at the first error here), a failed check, a check whose block is
# gone, or a block without a name fails the test.
#
# The one liberty: the tour's folder (/tmp/kafka_sync_tour) is a fresh
# temporary one. Whatever happens, the sidecars, the server and the broker
# the blocks started are stopped and the folder removed (trap). It prints a
# line per block; the transcript (commands, their output, what the checks
# saw) on failure, or always with WALKTHROUGH_VERBOSE=1.
#
#   test/walkthrough/run_walkthrough.sh [README]      (make test runs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
README=$(realpath "${1:-README.md}")
if [ "$(id -u)" != 0 ]; then
    echo "README walkthrough: SKIPPED, it runs as root (as the README says)"
    exit 0
fi
PGBIN=$(/usr/lib/postgresql/15/bin/pg_config --bindir 2>/dev/null || pg_config --bindir)
START=$SECONDS

# A fresh root shell of a reader: Debian's PATH (PostgreSQL's bindir, where
# the sidecar is, is not on it), no connection settings of the caller.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS PGPASSWORD KAFKA_BROKERS
WORK=$(mktemp -d /tmp/kafka_sync_walkthrough.XXXXXX)
chmod 755 "$WORK" # the postgres user reaches the tour folder inside
TOUR_DIR=$WORK/tour
OUT=$WORK/out
mkdir -p "$OUT"
printf '\\set ON_ERROR_STOP on\n' >"$WORK/psqlrc"
export PSQLRC=$WORK/psqlrc

TRANSCRIPT=$WORK/transcript
touch "$TRANSCRIPT"
CURRENT=
IN_BLOCK=0
cleanup() {
    local rc=$?
    set +e
    if [ "$rc" != 0 ]; then
        [ "$IN_BLOCK" = 1 ] && sed 's/^/   /' "$OUT/$CURRENT.out" >>"$TRANSCRIPT"
        echo "--- transcript:"
        cut -c1-300 "$TRANSCRIPT"
        echo "README walkthrough FAILED${CURRENT:+ in block tour=$CURRENT}"
        for f in "$TOUR_DIR"/server.log "$TOUR_DIR"/sidecar_*.log "$TOUR_DIR"/kafka/node1/server.log; do
            [ -f "$f" ] && { echo "--- tail of $f:"; tail -n 30 "$f"; }
        done
    fi
    for f in "$TOUR_DIR"/sidecar_*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
    kill $(jobs -p) 2>/dev/null
    [ -f "$TOUR_DIR/data/postmaster.pid" ] &&
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TOUR_DIR/data" -m immediate -w stop >/dev/null 2>&1
    [ -d "$TOUR_DIR/kafka" ] && /usr/bin/python3 test/kafka_broker/kafka_broker.py stop --dir "$TOUR_DIR/kafka" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- helpers of the checks ----------------------------------------------------------------------------

fail() { echo "CHECK FAILED: $*" >>"$TRANSCRIPT"; return 1; }
q() { psql -X -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
# wait_for DESCRIPTION EXPECTED COMMAND...: until COMMAND prints EXPECTED (30 s)
wait_for() {
    local what=$1 want=$2 got deadline=$((SECONDS + 30))
    shift 2
    while :; do
        got=$("$@" 2>&1) && [ "$got" = "$want" ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && fail "$what: expected '$want', got '$got'"
        sleep 0.3
    done
}
alive() { [ -e "/proc/$1" ] && ! grep -q ') Z ' "/proc/$1/stat" 2>/dev/null; }
output_has() { grep -qE -- "$2" "$OUT/$1.out" || fail "the output of tour=$1 lacks /$2/"; }
topic_headers() { kcat -b "$BROKERS" -C -t "kafka_sync.$1" -p 0 -o beginning -e -q -f '%o %h\n'; }
rows() { q "$1" "SELECT string_agg(user_id || ':' || user_status, ' ' ORDER BY user_id) FROM user_table"; }

# -- what the README says happens after each block ----------------------------------------------------

check_broker() {
    [[ "$BROKERS" =~ ^127\.0\.0\.1:[0-9]+$ ]] || fail "the broker printed '$BROKERS', not its bootstrap"
    alive "$(cat "$TOUR_DIR/kafka/node1/pid")" || fail "the broker is not running after start returned"
}
check_server() {
    [ "$(q chat1 'SHOW wal_level')" = logical ] || fail "wal_level is not logical"
    [ "$(stat -c %U "/proc/$(head -1 "$TOUR_DIR/data/postmaster.pid")")" = postgres ] ||
        fail "the server does not run as postgres"
    q chat2 'SELECT 1' >/dev/null
}
check_chat1_node() {
    output_has chat1_node 'kafka_sync\.chat1'
    wait_for "node chat1 streams and Kafka acknowledged its snapshot row" "streaming|1" \
        q chat1 'SELECT state, records_acknowledged FROM kafka_sync.node_status'
}
check_chat1_writes() {
    output_has chat1_writes 'chat1 +\| kafka_sync\.chat1 \| streaming \| [0-9A-F]+/[0-9A-F]+ +\| +1$'
    wait_for "Kafka acknowledged the snapshot row and the three changes" "streaming|4" \
        q chat1 'SELECT state, records_acknowledged FROM kafka_sync.node_status'
}
check_kcat() {
    output_has kcat '"user_name":"Bob"'
    local h
    h=$(topic_headers chat1)
    echo "(the headers of kafka_sync.chat1:)"; sed 's/^/   /' <<<"$h"
    [ "$(wc -l <<<"$h")" = 4 ] || fail "kafka_sync.chat1 should hold 4 records, holds: $h"
    grep -q '^0 .*kafka_sync.snapshot=true' <<<"$h" || fail "record 0 is not the snapshot row: $h"
    grep -q '^1 .*kafka_sync.seq=1,kafka_sync.txn_end=1' <<<"$h" || fail "record 1 is not a 1-record transaction: $h"
    grep -q '^2 .*kafka_sync.seq=1$' <<<"$h" || fail "record 2 is not the first of two: $h"
    grep -q '^3 .*kafka_sync.seq=2,kafka_sync.txn_end=2' <<<"$h" || fail "record 3 does not end a transaction of 2: $h"
}
check_chat2() {
    local t0=$SECONDS
    wait_for "chat1's rows reach chat2" "u0:offline u1:away u2:online" rows chat2
    echo "(chat1's rows were in chat2 $((SECONDS - t0)) s after the sidecar started)"
    wait_for "node chat2 streams" streaming q chat2 'SELECT state FROM kafka_sync.node_status'
}
check_chat2_rows() {
    output_has chat2_rows 'u2 +\| Bob +\| online'
}
check_two_masters() {
    wait_for "u3 reaches chat1" "u0:offline u1:away u2:online u3:online" rows chat1
    wait_for "chat2 publishes its insert of u3" "streaming|1" \
        q chat2 'SELECT state, records_acknowledged FROM kafka_sync.node_status'
    wait_for "chat1's subscription runs" running \
        q chat1 "SELECT state FROM kafka_sync.subscription_status WHERE name = 'from_chat2'"
    sleep 2 # time enough for a loop to show: an applied change published again
    [ "$(topic_headers chat1 | wc -l)" = 4 ] || fail "chat1 published what it applied: $(topic_headers chat1)"
    [ "$(topic_headers chat2 | wc -l)" = 1 ] ||
        fail "chat2's topic should hold only its insert of u3: $(topic_headers chat2)"
}
check_status() {
    output_has status 'from_chat2 \| chat2 +\| running +\| +0 \| +0 \| +1 \|'
    output_has status 'u3 +\| Cid'
}
check_conflict() {
    wait_for "the later change wins on chat1" "u1:offline" \
        q chat1 "SELECT user_id || ':' || user_status FROM user_table WHERE user_id = 'u1'"
    wait_for "the later change wins on chat2" "u1:offline" \
        q chat2 "SELECT user_id || ':' || user_status FROM user_table WHERE user_id = 'u1'"
    wait_for "chat1 logged the conflict" "from_chat2|update_update|apply_remote" \
        q chat1 'SELECT sub_name, kind, resolution FROM kafka_sync.conflicts'
    wait_for "chat2 logged the conflict" "from_chat1|update_update|keep_local" \
        q chat2 'SELECT sub_name, kind, resolution FROM kafka_sync.conflicts'
}
check_conflicts() {
    [ "$(grep -cE 'u1 +\| offline' "$OUT/conflicts.out")" = 2 ] || fail "the output of tour=conflicts lacks u1 offline twice"
    [ "$(grep -cE 'update_update' "$OUT/conflicts.out")" = 2 ] || fail "the output of tour=conflicts lacks two conflicts"
}
check_plugin() {
    output_has plugin '"user_id":"u4"'
    [ "$(q chat1 "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'look'")" = 0 ] ||
        fail "the slot look is still there"
}
check_drop() {
    local db
    for db in chat1 chat2; do
        [ "$(q $db 'SELECT count(*) FROM kafka_sync.subscription')" = 0 ] || fail "$db still has subscriptions"
        [ "$(q $db 'SELECT count(*) FROM kafka_sync.node_status')" = 0 ] || fail "$db is still a node"
    done
    [ "$(q chat1 'SELECT count(*) FROM pg_replication_slots')" = 0 ] || fail "slots remain: $(q chat1 'TABLE pg_replication_slots')"
    [ "$(q chat1 'SELECT count(*) FROM pg_replication_origin')" = 0 ] || fail "origins remain: $(q chat1 'TABLE pg_replication_origin')"
    # for check_stop: what runs now
    RUNNING="$(cat "$TOUR_DIR"/sidecar_*.pid) $(head -1 "$TOUR_DIR/data/postmaster.pid") $(cat "$TOUR_DIR/kafka/node1/pid")"
}
check_stop() {
    local pid deadline=$((SECONDS + 30))
    for pid in $RUNNING; do
        while alive "$pid"; do
            [ "$SECONDS" -ge "$deadline" ] && fail "process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline")) still runs"
            sleep 0.3
        done
    done
    [ ! -e "$TOUR_DIR" ] || fail "$TOUR_DIR is still there"
}

# -- run ---------------------------------------------------------------------------------------------

BLOCKS=$(/usr/bin/python3 test/walkthrough/extract_blocks.py "$README" "$WORK/blocks" --tour-dir "$TOUR_DIR")
for f in $(declare -F | sed -n 's/^declare -f check_//p'); do
    grep -q "^[0-9]*_$f\$" <<<"$BLOCKS" || { CURRENT=; fail "check_$f has no block tour=$f in the README's walkthrough"; }
done

for b in $BLOCKS; do
    CURRENT=${b#*_}
    where=$(head -1 "$WORK/blocks/$b.sh" | cut -c3-)
    { echo "-- tour=$CURRENT ($where)"; sed -e 1d -e 's/^/   $ /' "$WORK/blocks/$b.sh"; } >>"$TRANSCRIPT"
    # In this shell: its variables, exports and background jobs stay for the next blocks.
    IN_BLOCK=1
    source "$WORK/blocks/$b.sh" >"$OUT/$CURRENT.out" 2>&1 </dev/null
    IN_BLOCK=0
    sed 's/^/   /' "$OUT/$CURRENT.out" >>"$TRANSCRIPT"
    if declare -F "check_$CURRENT" >/dev/null; then "check_$CURRENT" >>"$TRANSCRIPT"; fi
    echo "ok  tour=$CURRENT ($where)"
done
CURRENT=
[ -z "${WALKTHROUGH_VERBOSE:-}" ] || cut -c1-300 "$TRANSCRIPT"
echo "README walkthrough: $(wc -w <<<"$BLOCKS") blocks ran as written, in $((SECONDS - START)) s"
