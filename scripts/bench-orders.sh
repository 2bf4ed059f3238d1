#!/usr/bin/env bash
# The order pipeline benchmark of docs/BENCHMARKS.md, one run: a fresh
# database, `exchange all` on ports 180xx with the rate limits raised,
# `exchange bench` with USERS users for SECONDS, then the CPU each process
# used per accepted order during the placing window (PostgreSQL's also per
# service, by its backends' application_name), the statements that
# took the most PostgreSQL time (when pg_stat_statements is loaded) and
# `exchange admin reconcile`. The database and the run's Redis keys are
# dropped afterwards (KEEP=1 keeps them).
#
# Usage: scripts/bench-orders.sh [USERS] [SECONDS]        (default 64 20)
#   EXCHANGE_BIN   the binary (default target/release/exchange; build it
#                  with `cargo build --release -p exchange` first)
#   DB_URL/REDIS_URL  as for scripts/test.sh; unset: the local PostgreSQL
#                  and Redis of scripts/lib/local-services.sh. PostgreSQL
#                  started here loads pg_stat_statements.
#   HTTP_FLOOR=1   afterwards, also the CPU per request of the cheapest
#                  request (`GET /health` on the gateway, 64 connections,
#                  `wrk`, installed if missing): the HTTP part of the floor
#                  that scripts/bench-floor.sh prints.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib/local-services.sh
. scripts/lib/local-services.sh

users="${1:-64}"
seconds="${2:-20}"
bin="${EXCHANGE_BIN:-$root/target/release/exchange}"
[ -x "$bin" ] || die "no $bin: cargo build --release -p exchange"
command -v curl >/dev/null 2>&1 || apt_install curl

EXCHANGE_PG_EXTRA_OPTS="${EXCHANGE_PG_EXTRA_OPTS:--c shared_preload_libraries=pg_stat_statements}"
export EXCHANGE_PG_EXTRA_OPTS
local_services_up "$root"
admin_url="$DB_URL"
db="bench_orders_$$"
work="$(mktemp -d)"
exchange_pid=""
cleanup() {
    [ -n "$exchange_pid" ] && kill -TERM "$exchange_pid" 2>/dev/null && wait "$exchange_pid" 2>/dev/null
    if [ -z "${KEEP:-}" ]; then
        drop_run_data "$admin_url" "$db"
    else
        log "kept database $db"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

export DB_URL="${admin_url%/*}/$db" REDIS_URL \
    REDIS_KEY_PREFIX="$db" APP_ENV=dev LOG_LEVEL=warn DB_POOL_MAX=20 MATCHING_MARKETS='*' \
    INTERNAL_TOKEN=dev-internal-token-change-me-please-000 \
    AUTH_TOKEN_SECRET=dev-auth-token-secret-change-me-please-0 \
    ADMIN_TOKEN=dev-admin-token-change-me-please-00000 \
    RATE_LIMIT_IP_PER_SECOND=1000000 RATE_LIMIT_ORDERS_PER_SECOND=1000000 \
    RATE_LIMIT_LOGIN_PER_MINUTE=100000 HTTP_CONNECTIONS_PER_IP_MAX=100000 \
    GATEWAY_HTTP_ADDR=127.0.0.1:18080 GATEWAY_WS_ADDR=127.0.0.1:18090 \
    ORDER_HTTP_ADDR=127.0.0.1:18091 MATCHING_HTTP_ADDR=127.0.0.1:18092 \
    CLEARING_HTTP_ADDR=127.0.0.1:18093 MARKETDATA_HTTP_ADDR=127.0.0.1:18094 \
    WALLET_HTTP_ADDR=127.0.0.1:18095 \
    ORDER_SERVICE_URL=http://127.0.0.1:18091 MARKETDATA_URL=http://127.0.0.1:18094 \
    WALLET_SERVICE_URL=http://127.0.0.1:18095

psql -q "$admin_url" -c "CREATE DATABASE $db" >/dev/null
"$bin" migrate >/dev/null
"$bin" all >"$work/exchange.log" 2>&1 &
exchange_pid=$!
for _ in $(seq 150); do curl -sf http://127.0.0.1:18080/ready >/dev/null && break; sleep 0.2; done
curl -sf http://127.0.0.1:18080/ready >/dev/null || { tail -n 20 "$work/exchange.log" >&2; die "the exchange did not become ready"; }
pgss=0
psql -q "$DB_URL" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null 2>&1 \
    && psql -q "$DB_URL" -c "SELECT pg_stat_statements_reset()" >/dev/null 2>&1 && pgss=1

# CPU clock ticks (user + system) of the given processes.
ticks() {
    local t=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
# This database's backends and the server's own processes (WAL writer, ...).
pg_pids() {
    psql -Atq "$admin_url" -c "SELECT pid FROM pg_stat_activity
        WHERE datname = '$db' OR backend_type <> 'client backend'"
}
# The Redis server of REDIS_URL (its command line names its port).
redis_pids() { pgrep -f "redis-server .*:${REDIS_URL##*:}\$" || true; }
# "pid service ticks" for each backend of this database (service = the
# pool's application_name: exchange-order, exchange-clearing, ...).
backend_ticks() {
    local pid app
    psql -Atq -F ' ' "$admin_url" -c "SELECT pid, application_name FROM pg_stat_activity
        WHERE datname = '$db' AND application_name <> ''" |
        while read -r pid app; do
            [ -r "/proc/$pid/stat" ] && echo "$pid $app $(awk '{print $14 + $15}' "/proc/$pid/stat")"
        done
}

"$bin" bench --gateway http://127.0.0.1:18080 --ws ws://127.0.0.1:18090 \
    --admin-token "$ADMIN_TOKEN" --users "$users" --duration "$seconds" --setup \
    >"$work/bench.txt" 2>&1 &
bench_pid=$!
# The placing window starts after the bench's warm-up pair has settled.
until grep -q "warm-up pair" "$work/bench.txt" || ! kill -0 "$bench_pid" 2>/dev/null; do sleep 0.05; done
# The process lists are split into words on purpose (one pid per word).
# shellcheck disable=SC2046
{
    ex0=$(ticks "$exchange_pid"); pg0=$(ticks $(pg_pids)); rd0=$(ticks $(redis_pids)); bn0=$(ticks "$bench_pid")
    backend_ticks >"$work/backends0"
    sleep "$seconds"
    ex1=$(ticks "$exchange_pid"); pg1=$(ticks $(pg_pids)); rd1=$(ticks $(redis_pids)); bn1=$(ticks "$bench_pid")
    backend_ticks >"$work/backends1"
}
wait "$bench_pid" || { cat "$work/bench.txt" >&2; die "the bench failed"; }
cat "$work/bench.txt"
accepted=$(grep -oP 'accepted: \K[0-9]+' "$work/bench.txt")
hz=$(getconf CLK_TCK)
# CPU microseconds per order between two tick readings (or per $3 units).
per_order() { echo $(( ($2 - $1) * 1000000 / hz / ${3-$accepted} )); }
echo "CPU per accepted order (placing window): exchange $(per_order "$ex0" "$ex1") us," \
    "postgres $(per_order "$pg0" "$pg1") us, redis $(per_order "$rd0" "$rd1") us," \
    "bench client $(per_order "$bn0" "$bn1") us"
# Per service: each backend's ticks in the window (a backend opened during
# it counts from 0), summed by application_name.
by_service=$(
    awk -v hz="$hz" -v n="$accepted" '
        FNR == NR { start[$1] = $3; next }
        { used[$2] += $3 - ($1 in start ? start[$1] : 0) }
        END { for (s in used) printf "%s %d us\n", s, used[s] * 1000000 / hz / n }
    ' "$work/backends0" "$work/backends1" | sort | paste -sd, - | sed 's/,/, /g')
echo "PostgreSQL CPU per accepted order by service: $by_service"
if [ "$pgss" = 1 ]; then
    echo "PostgreSQL statements by total time:"
    psql "$DB_URL" -c "SELECT calls, round(total_exec_time::numeric) AS ms,
            round((total_exec_time / nullif(calls, 0))::numeric, 3) AS ms_per_call, rows,
            left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS query
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$db')
        ORDER BY total_exec_time DESC LIMIT 15"
fi
"$bin" admin reconcile | tail -n 1

if [ -n "${HTTP_FLOOR:-}" ]; then
    command -v wrk >/dev/null 2>&1 || apt_install wrk
    wrk -t1 -c64 -d12s http://127.0.0.1:18080/health >"$work/wrk.txt" &
    wrk_pid=$!
    sleep 1
    ex0=$(ticks "$exchange_pid"); wk0=$(ticks "$wrk_pid")
    sleep 10
    ex1=$(ticks "$exchange_pid"); wk1=$(ticks "$wrk_pid")
    wait "$wrk_pid"
    # Requests in the 10 s window, at the run's average rate.
    requests=$(awk '/Requests\/sec:/ { printf "%d", $2 * 10 }' "$work/wrk.txt")
    [ "${requests:-0}" -gt 0 ] || { cat "$work/wrk.txt" >&2; die "wrk reported no requests"; }
    echo "HTTP floor: $requests requests in 10s, CPU per request: exchange $(per_order "$ex0" "$ex1" "$requests") us," \
        "wrk $(per_order "$wk0" "$wk1" "$requests") us"
fi
