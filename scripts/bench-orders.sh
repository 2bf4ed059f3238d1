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
#   REPLICAS=N     instead of `exchange all`, every service as a process of
#                  its own: N gateways, N order services, N clearing
#                  consumers and N matching replicas, which share the
#                  market by lease (one matches, the others stand by), plus
#                  one marketdata and one wallet. GATEWAY_REPLICAS,
#                  ORDER_REPLICAS, CLEARING_REPLICAS and MATCHING_REPLICAS
#                  (each 1..9, default N) set one service's count apart.
#                  Replica k listens on 180xx + 100 (k-1) (gateway
#                  18080/18180/..., its WebSocket 18090/18190/..., order
#                  18091/18191/..., matching ...92, clearing ...93) with its
#                  own *_CONSUMER_NAME; gateway k calls order service
#                  ((k-1) mod ORDER_REPLICAS) + 1 (as a balancer would
#                  spread them), and the bench spreads its users over the
#                  gateways (user i on gateway i mod GATEWAY_REPLICAS).
#                  Also prints each process's CPU per order. REPLICAS=1 is
#                  the same layout with one of each.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib/local-services.sh
. scripts/lib/local-services.sh

users="${1:-64}"
seconds="${2:-20}"
replicas="${REPLICAS:-}"
if [ -n "$replicas" ]; then
    [[ "$replicas" =~ ^[1-9]$ ]] || die "REPLICAS must be 1 to 9, not $replicas"
    gateway_replicas="${GATEWAY_REPLICAS:-$replicas}" order_replicas="${ORDER_REPLICAS:-$replicas}"
    clearing_replicas="${CLEARING_REPLICAS:-$replicas}" matching_replicas="${MATCHING_REPLICAS:-$replicas}"
    for v in gateway order clearing matching; do
        n="${v}_replicas"
        [[ "${!n}" =~ ^[1-9]$ ]] || die "${v^^}_REPLICAS must be 1 to 9, not ${!n}"
    done
fi
bin="${EXCHANGE_BIN:-$root/target/release/exchange}"
[ -x "$bin" ] || die "no $bin: cargo build --release -p exchange"
command -v curl >/dev/null 2>&1 || apt_install curl

EXCHANGE_PG_EXTRA_OPTS="${EXCHANGE_PG_EXTRA_OPTS:--c shared_preload_libraries=pg_stat_statements}"
export EXCHANGE_PG_EXTRA_OPTS
local_services_up "$root"
admin_url="$DB_URL"
db="bench_orders_$$"
work="$(mktemp -d)"
# The exchange's processes: pid, name, and the /ready URL to wait for.
pids=() names=() readies=()
bench_pid="" wrk_pid=""
cleanup() {
    local p
    for p in $bench_pid $wrk_pid "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
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

# start NAME SERVICE HTTP_ADDR [VAR=value...]: `exchange SERVICE` in the
# background with these variables, its log in $work/NAME.log.
start() {
    local name="$1" service="$2" addr="$3"
    shift 3
    env "$@" "$bin" "$service" >"$work/$name.log" 2>&1 &
    pids+=("$!") names+=("$name") readies+=("http://$addr/ready")
}
psql -q "$admin_url" -c "CREATE DATABASE $db" >/dev/null
"$bin" migrate >/dev/null
gateways=http://127.0.0.1:18080 websockets=ws://127.0.0.1:18090
if [ -z "$replicas" ]; then
    start exchange all 127.0.0.1:18080
else
    gateways="" websockets=""
    # Replica k's port for the service at offset $1 (80 gateway, 90 its
    # WebSocket, 91 order, 92 matching, 93 clearing).
    port() { echo $((18000 + 100 * (k - 1) + $1)); }
    for k in $(seq "$gateway_replicas"); do
        order_port=$((18091 + 100 * ((k - 1) % order_replicas)))
        start "gateway-$k" gateway "127.0.0.1:$(port 80)" \
            GATEWAY_HTTP_ADDR="127.0.0.1:$(port 80)" GATEWAY_WS_ADDR="127.0.0.1:$(port 90)" \
            ORDER_SERVICE_URL="http://127.0.0.1:$order_port" GATEWAY_CONSUMER_NAME="gateway-bench-$k"
        gateways+="${gateways:+,}http://127.0.0.1:$(port 80)"
        websockets+="${websockets:+,}ws://127.0.0.1:$(port 90)"
    done
    for k in $(seq "$order_replicas"); do
        start "order-$k" order "127.0.0.1:$(port 91)" \
            ORDER_HTTP_ADDR="127.0.0.1:$(port 91)" ORDER_CONSUMER_NAME="order-bench-$k"
    done
    for k in $(seq "$clearing_replicas"); do
        start "clearing-$k" clearing "127.0.0.1:$(port 93)" \
            CLEARING_HTTP_ADDR="127.0.0.1:$(port 93)" CLEARING_CONSUMER_NAME="clearing-bench-$k"
    done
    for k in $(seq "$matching_replicas"); do
        start "matching-$k" matching "127.0.0.1:$(port 92)" \
            MATCHING_HTTP_ADDR="127.0.0.1:$(port 92)" MATCHING_CONSUMER_NAME="matching-bench-$k"
    done
    start marketdata marketdata 127.0.0.1:18094 MARKETDATA_CONSUMER_NAME=marketdata-bench-1
    start wallet wallet 127.0.0.1:18095
fi
for i in "${!pids[@]}"; do
    for _ in $(seq 150); do curl -sf "${readies[$i]}" >/dev/null && break; sleep 0.2; done
    curl -sf "${readies[$i]}" >/dev/null || {
        tail -n 20 "$work/${names[$i]}.log" >&2
        die "${names[$i]} did not become ready"
    }
done
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

"$bin" bench --gateway "$gateways" --ws "$websockets" \
    --admin-token "$ADMIN_TOKEN" --users "$users" --duration "$seconds" --setup \
    >"$work/bench.txt" 2>&1 &
bench_pid=$!
# The placing window starts after the bench's warm-up pair has settled.
until grep -q "warm-up pair" "$work/bench.txt" || ! kill -0 "$bench_pid" 2>/dev/null; do sleep 0.05; done
# The process lists are split into words on purpose (one pid per word).
# shellcheck disable=SC2046
{
    ex0=$(ticks "${pids[@]}"); pg0=$(ticks $(pg_pids)); rd0=$(ticks $(redis_pids)); bn0=$(ticks "$bench_pid")
    each0=(); for p in "${pids[@]}"; do each0+=("$(ticks "$p")"); done
    backend_ticks >"$work/backends0"
    sleep "$seconds"
    ex1=$(ticks "${pids[@]}"); pg1=$(ticks $(pg_pids)); rd1=$(ticks $(redis_pids)); bn1=$(ticks "$bench_pid")
    each1=(); for p in "${pids[@]}"; do each1+=("$(ticks "$p")"); done
    backend_ticks >"$work/backends1"
}
wait "$bench_pid" || { cat "$work/bench.txt" >&2; die "the bench failed"; }
bench_pid=""
cat "$work/bench.txt"
accepted=$(grep -oP 'accepted: \K[0-9]+' "$work/bench.txt")
hz=$(getconf CLK_TCK)
# CPU microseconds per order between two tick readings (or per $3 units).
per_order() { echo $(( ($2 - $1) * 1000000 / hz / ${3-$accepted} )); }
echo "CPU per accepted order (placing window): exchange $(per_order "$ex0" "$ex1") us," \
    "postgres $(per_order "$pg0" "$pg1") us, redis $(per_order "$rd0" "$rd1") us," \
    "bench client $(per_order "$bn0" "$bn1") us"
if [ -n "$replicas" ]; then
    each=""
    for i in "${!pids[@]}"; do
        each+="${each:+, }${names[$i]} $(per_order "${each0[$i]}" "${each1[$i]}") us"
    done
    echo "exchange CPU per accepted order by process: $each"
fi
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
    ex0=$(ticks "${pids[@]}"); wk0=$(ticks "$wrk_pid")
    sleep 10
    ex1=$(ticks "${pids[@]}"); wk1=$(ticks "$wrk_pid")
    wait "$wrk_pid"
    wrk_pid=""
    # Requests in the 10 s window, at the run's average rate.
    requests=$(awk '/Requests\/sec:/ { printf "%d", $2 * 10 }' "$work/wrk.txt")
    [ "${requests:-0}" -gt 0 ] || { cat "$work/wrk.txt" >&2; die "wrk reported no requests"; }
    echo "HTTP floor: $requests requests in 10s, CPU per request: exchange $(per_order "$ex0" "$ex1" "$requests") us," \
        "wrk $(per_order "$wk0" "$wk1" "$requests") us"
fi
