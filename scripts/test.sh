#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a developer's: provisions
# PostgreSQL and Redis (see scripts/lib/local-services.sh) and a second pair
# that speaks only TLS, with a CA made on the fly (scripts/lib/tls-services.sh,
# for exchange/tests/tls.rs), a 3-master Redis Cluster
# (scripts/lib/cluster-services.sh, for exchange/tests/redis_cluster.rs) and
# a streaming read replica of its PostgreSQL (scripts/lib/replica-services.sh,
# for exchange/tests/read_replica.rs), then runs every
# Rust test (unit, property, integration against the real databases, end-to-end
# against the real binaries) and the operations checks in tests/ops/.
#
# Usage: scripts/test.sh [extra cargo test args]
# Uses DB_URL / REDIS_URL when both are set; otherwise starts its own. The
# same for TLS_DB_URL / TLS_REDIS_URL / TLS_CA_FILE (the TLS servers),
# CLUSTER_REDIS_URL / CLUSTER_REDIS_NODES (the Redis Cluster) and
# REPLICA_DB_URL (a streaming replica of DB_URL; with an external DB_URL and
# no REPLICA_DB_URL the read-replica tests are skipped, saying so).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib/local-services.sh
. scripts/lib/local-services.sh
# shellcheck source=scripts/lib/tls-services.sh
. scripts/lib/tls-services.sh
# shellcheck source=scripts/lib/cluster-services.sh
. scripts/lib/cluster-services.sh
# shellcheck source=scripts/lib/replica-services.sh
. scripts/lib/replica-services.sh

command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup, Rust >= 1.95)"
command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev

started_here=0
if [ -z "${DB_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
    started_here=1
    # Durability buys nothing for throwaway test databases.
    export EXCHANGE_PG_EXTRA_OPTS="${EXCHANGE_PG_EXTRA_OPTS:--c fsync=off -c synchronous_commit=off -c full_page_writes=off}"
fi
local_services_up "$root"
tls_services_up "$root"
cluster_services_up "$root"
stop_services() {
    # The replica first: stopped after its primary, it would wait for it.
    replica_services_down "$root"
    [ "$started_here" -eq 1 ] && local_services_down "$root"
    tls_services_down "$root"
    cluster_services_down "$root"
}
if [ "${EXCHANGE_KEEP_SERVICES:-0}" != 1 ]; then
    trap stop_services EXIT
fi
log "DB_URL=$DB_URL REDIS_URL=$REDIS_URL"
log "TLS servers: $(printf '%s' "$TLS_DB_URL" | sed 's#//\([^:@/]*\):[^@]*@#//\1:***@#') and $(printf '%s' "$TLS_REDIS_URL" | sed 's#//\([^:@/]*\):[^@]*@#//\1:***@#')"
log "Redis Cluster: $(printf '%s' "$CLUSTER_REDIS_URL" | sed 's#//\([^:@/]*\):[^@]*@#//\1:***@#') + $CLUSTER_REDIS_NODES"
if [ "$started_here" -eq 1 ]; then
    # Each test creates its own database (test_*) and Redis key prefix; on
    # our own servers, clear what earlier runs left behind.
    psql "$DB_URL" -X -q -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'test\_%'" |
        while read -r db; do psql "$DB_URL" -X -q -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null; done
    redis-cli -p "$EXCHANGE_REDIS_PORT" flushall >/dev/null
fi
# After the clean-up above: the copy it makes is then small.
replica_services_up "$root"
if [ -n "${REPLICA_DB_URL:-}" ]; then log "read replica: $REPLICA_DB_URL"; fi
if [ -n "${EXCHANGE_TLS_PG_DATA:-}" ]; then
    psql "$TLS_DB_URL" -X -q -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'test\_%'" |
        while read -r db; do psql "$TLS_DB_URL" -X -q -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null; done
    tls_redis_cli "$EXCHANGE_TLS_DIR" flushall >/dev/null
fi

# The Binance-compatibility test drives the unmodified Python ccxt client.
if [ -z "${PYTHON:-}" ]; then
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if python3 -c 'import ccxt' >/dev/null 2>&1; then
        export PYTHON=python3
    else
        # A private virtualenv: Debian's system Python refuses global pip installs.
        if [ ! -x "$root/.local/venv/bin/python" ]; then
            python3 -m venv "$root/.local/venv" >/dev/null 2>&1 || {
                apt_install python3-venv python3-pip
                python3 -m venv "$root/.local/venv"
            }
        fi
        if ! "$root/.local/venv/bin/python" -c 'import ccxt' >/dev/null 2>&1; then
            log "pip install ccxt (into .local/venv)"
            "$root/.local/venv/bin/python" -m pip install --quiet 'ccxt>=4.5,<5' || die "pip install ccxt failed"
        fi
        export PYTHON="$root/.local/venv/bin/python"
    fi
fi

log "cargo test --workspace"
# Unit, property, integration, end-to-end and doc tests; benchmarks run
# separately (cargo bench), as they print figures rather than assert.
# A target that fails is run once more, alone, and reported by name either
# way: a test that fails on a loaded machine and passes alone is flaky, which
# must be visible (and fixed), but must not hide the rest of the suite.
log_file="$(mktemp "${TMPDIR:-/tmp}/exchange-test.XXXXXX")"
if ! cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log_file"; then
    # shellcheck disable=SC2016 # backticks are literal in cargo's summary
    mapfile -t failed_targets < <(sed -n 's/^    `\(-p .*\)`$/\1/p' "$log_file")
    [ "${#failed_targets[@]}" -gt 0 ] || die "cargo test failed (see above)"
    for target in "${failed_targets[@]}"; do
        log "FLAKY? re-running once: cargo test $target"
        # shellcheck disable=SC2086 # the target is "-p crate --test name": split on purpose
        cargo test $target "$@" || die "still failing alone: cargo test $target"
        log "FLAKY: cargo test $target failed in the full run and passed alone"
    done
fi
rm -f "$log_file"

if [ -f tests/ops/run.sh ]; then
    log "operations checks (tests/ops/run.sh)"
    bash tests/ops/run.sh
fi
# The restore drill, short: a base backup, the database destroyed under
# load, the latest point and a chosen time restored (its own PostgreSQL,
# Redis and pgBackRest repository, on their own ports).
log "restore drill (scripts/restore-drill.sh, short form)"
EXCHANGE_BIN="${EXCHANGE_BIN:-$root/target/debug/exchange}" bash scripts/restore-drill.sh 6
log "all tests passed"
