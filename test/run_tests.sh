#!/usr/bin/env bash
# The project's test command (README: "make test"): unit tests, pg_regress
# against a private temporary instance, then the pytest suite (multi-process,
# end to end, on Apache Kafka brokers it starts or on KAFKA_BROKERS when set),
# then the README's getting-started walkthrough as a reader types it.
#
# PostgreSQL refuses to run as root: when started as root, servers run as the
# unprivileged user $PGUSER_OS (default postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PG_CONFIG=${PG_CONFIG:-$(command -v pg_config || echo /usr/lib/postgresql/15/bin/pg_config)}
BINDIR=$("$PG_CONFIG" --bindir)
PGXS_DIR=$(dirname "$("$PG_CONFIG" --pgxs)")
OS_USER=${PGUSER_OS:-postgres}
WORK=$(mktemp -d /tmp/kafka_sync_tests.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

as_pg_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u "$OS_USER" -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown "$OS_USER" "$WORK"; fi

echo "== unit tests"
test/unit/unit_tests
test/unit/sidecar_tests
test/unit/conflict_policy_tests
test/unit/wire_tests

echo "== pg_regress"
TESTS=$(sed -n 's/^REGRESS *= *//p' Makefile)
if ! as_pg_user "$PGXS_DIR/../test/regress/pg_regress" --inputdir="$REPO" --outputdir="$WORK" \
        --temp-instance="$WORK/instance" --temp-config="$REPO/test/regress.conf" \
        --bindir="$BINDIR" --load-extension=kafka_sync --port="${REGRESS_PORT:-55499}" $TESTS; then
    cat "$WORK/regression.diffs" || true
    exit 1
fi

echo "== pytest"
/usr/bin/python3 -m pytest -p no:cacheprovider -q test/pytest "$@"

echo "== README walkthrough"
test/walkthrough/run_walkthrough.sh
