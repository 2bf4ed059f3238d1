#!/usr/bin/env bash
# Starts the whole exchange locally with demo data: provisions PostgreSQL and
# Redis (see scripts/lib/local-services.sh), builds the `exchange` binary,
# applies migrations, runs every service in one process (`exchange all`),
# creates demo assets, markets and two funded demo users, and prints the URLs.
#
# Usage: scripts/dev.sh            run in the foreground; Ctrl-C stops everything
#        scripts/dev.sh --detach   run in the background (logs in .local/exchange.log)
#        scripts/dev.sh stop       stop a detached run and the local databases
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib/local-services.sh
. scripts/lib/local-services.sh

pidfile="$root/.local/exchange.pid"
logfile="$root/.local/exchange.log"
mkdir -p "$root/.local"

if [ "${1:-}" = "stop" ]; then
    if [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
        log "stopping exchange (pid $(cat "$pidfile"))"
        for _ in $(seq 100); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
    if [ -f "$root/.local/pg/PG_VERSION" ]; then EXCHANGE_PG_DATA="$root/.local/pg"; fi
    local_services_down "$root"
    log "stopped"
    exit 0
fi
detach=0
[ "${1:-}" = "--detach" ] && detach=1

command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup, Rust >= 1.95)"
command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev
command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
command -v jq >/dev/null 2>&1 || apt_install jq

db_given="${DB_URL:-}"
local_services_up "$root"
if [ -z "$db_given" ]; then
    # Our own server: keep the exchange's data in its own database rather
    # than in the `postgres` maintenance database (tests use test_* ones).
    if [ "$(psql "$DB_URL" -X -At -c "SELECT 1 FROM pg_database WHERE datname = 'exchange'")" != 1 ]; then
        psql "$DB_URL" -X -q -c "CREATE DATABASE exchange" || die "cannot create database exchange"
    fi
    DB_URL="${DB_URL%/postgres}/exchange"
    export DB_URL
fi

# Development defaults: `APP_ENV=prod` and scripts/prod-preflight refuse these.
export APP_ENV="${APP_ENV:-dev}"
export APP_VERSION="${APP_VERSION:-dev}"
export INTERNAL_TOKEN="${INTERNAL_TOKEN:-dev-internal-token-change-me-please-000}"
export AUTH_TOKEN_SECRET="${AUTH_TOKEN_SECRET:-dev-auth-token-secret-change-me-please-0}"
export ADMIN_TOKEN="${ADMIN_TOKEN:-dev-admin-token-change-me-please-00000}"
export ENABLE_DOCS="${ENABLE_DOCS:-true}"
export MARKETDATA_WS_ALLOW_ORIGINS="${MARKETDATA_WS_ALLOW_ORIGINS:-http://localhost:3000,http://127.0.0.1:3000}"
export ORDER_SERVICE_URL="${ORDER_SERVICE_URL:-http://127.0.0.1:8091}"
export MARKETDATA_URL="${MARKETDATA_URL:-http://127.0.0.1:8094}"
export WALLET_SERVICE_URL="${WALLET_SERVICE_URL:-http://127.0.0.1:8095}"
# A new withdrawal address waits a day in production; a minute here, to try it.
export WITHDRAWAL_ADDRESS_COOLDOWN_SECS="${WITHDRAWAL_ADDRESS_COOLDOWN_SECS:-60}"
for svc in ORDER MATCHING CLEARING MARKETDATA; do
    lower=$(printf '%s' "$svc" | tr '[:upper:]' '[:lower:]')
    export "${svc}_CONSUMER_GROUP=${lower}"
    export "${svc}_CONSUMER_NAME=${lower}-local-1"
done
export GATEWAY_CONSUMER_NAME="${GATEWAY_CONSUMER_NAME:-gateway-local-1}"
export MATCHING_MARKETS="${MATCHING_MARKETS:-*}"

profile_flag=""
[ "${EXCHANGE_RELEASE:-0}" = 1 ] && profile_flag="--release"
log "cargo build -p exchange $profile_flag"
cargo build -q -p exchange $profile_flag
bin="$root/target/debug/exchange"
[ -n "$profile_flag" ] && bin="$root/target/release/exchange"

log "migrating $DB_URL"
"$bin" migrate

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    die "an exchange is already running (pid $(cat "$pidfile")): scripts/dev.sh stop"
fi
log "starting all services (log: $logfile)"
"$bin" all >>"$logfile" 2>&1 &
pid=$!
echo "$pid" >"$pidfile"
if [ "$detach" -eq 0 ]; then
    trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$pidfile"' EXIT INT TERM
fi

ports="8080 8091 8092 8093 8094 8095"
for port in $ports; do
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logfile" >&2; die "the exchange exited during start"; }
        curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -fsS "http://127.0.0.1:$port/ready" >/dev/null || die "service on :$port is not ready: curl http://127.0.0.1:$port/ready"
done
log "all services ready"

api=http://127.0.0.1:8080
admin() { curl -sS -o /dev/null -w '%{http_code}' -X "$1" "$api$2" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' -d "$3"; }
seed() {
    local code
    code=$(admin "$@")
    case "$code" in
        2*|409) ;;
        *) die "demo data: $1 $2 answered $code" ;;
    esac
}
seed POST /admin/v1/assets '{"symbol":"BTC","scale":8}'
seed POST /admin/v1/assets '{"symbol":"ETH","scale":8,"network":"ethereum","confirmations":3,"withdraw_fee":"0.001","withdraw_min":"0.01","auto_approve_limit":"1","daily_withdraw_limit":"100"}'
# Deposit addresses for the manual chain adapter (an operator's custody system
# would generate these).
addresses=$(for n in $(seq 1 20); do printf '"0x%040x",' "$n"; done)
seed POST /admin/v1/custody/deposit-addresses "{\"network\":\"ethereum\",\"addresses\":[${addresses%,}]}"
seed POST /admin/v1/assets '{"symbol":"USDT","scale":8}'
seed POST /admin/v1/markets '{"symbol":"BTC-USDT","base":"BTC","quote":"USDT","price_tick":"0.01","qty_step":"0.00001","min_notional":"1","maker_fee":"0.001","taker_fee":"0.002"}'
seed POST /admin/v1/markets '{"symbol":"ETH-USDT","base":"ETH","quote":"USDT","price_tick":"0.01","qty_step":"0.0001","min_notional":"1","maker_fee":"0.001","taker_fee":"0.002"}'
for who in alice bob; do
    body=$(curl -sS -X POST "$api/api/v1/auth/register" -H 'Content-Type: application/json' \
        -d "{\"email\":\"$who@example.com\",\"password\":\"demo-password-1\"}")
    user_id=$(printf '%s' "$body" | jq -r '.user_id // empty')
    if [ -n "$user_id" ]; then
        seed POST /admin/v1/deposits "{\"user_id\":$user_id,\"asset\":\"USDT\",\"amount\":\"100000\",\"reference\":\"dev-seed-$user_id-USDT\"}"
        seed POST /admin/v1/deposits "{\"user_id\":$user_id,\"asset\":\"BTC\",\"amount\":\"2\",\"reference\":\"dev-seed-$user_id-BTC\"}"
        seed POST /admin/v1/deposits "{\"user_id\":$user_id,\"asset\":\"ETH\",\"amount\":\"20\",\"reference\":\"dev-seed-$user_id-ETH\"}"
        log "demo user $who@example.com (id $user_id) funded with 100000 USDT, 2 BTC, 20 ETH"
    fi
done

cat <<EOT

  The exchange is running (APP_ENV=$APP_ENV, log: $logfile).

  REST API        http://127.0.0.1:8080/api/v1      (OpenAPI: http://127.0.0.1:8080/docs)
  Private WS      ws://127.0.0.1:8090/ws/private?token=<access_token>
  Public WS       ws://127.0.0.1:8094/ws
  Health / ready  http://127.0.0.1:{8080,8091,8092,8093,8094,8095}/ready
  Demo users      alice@example.com, bob@example.com   password: demo-password-1
  Admin token     $ADMIN_TOKEN

  Try it:
    TOKEN=\$(curl -s -X POST http://127.0.0.1:8080/api/v1/auth/login -H 'Content-Type: application/json' \\
      -d '{"email":"alice@example.com","password":"demo-password-1"}' | jq -r .access_token)
    curl -s http://127.0.0.1:8080/api/v1/account/balances -H "Authorization: Bearer \$TOKEN"
    curl -s -X POST http://127.0.0.1:8080/api/v1/orders -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
      -d '{"market":"BTC-USDT","side":"sell","type":"limit","price":"50000","quantity":"0.01"}'
    curl -s 'http://127.0.0.1:8080/api/v1/account/deposit-address?asset=ETH' -H "Authorization: Bearer \$TOKEN"
    # then report a transfer to it as the custody system would (docs/RUNBOOK.md, "Custody"):
    # POST /admin/v1/custody/deposits with the admin token

EOT
if [ "$detach" -eq 1 ]; then
    log "detached (pid $pid); stop with: scripts/dev.sh stop"
    exit 0
fi
log "Ctrl-C stops the exchange"
wait "$pid"
