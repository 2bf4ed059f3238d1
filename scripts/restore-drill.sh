#!/usr/bin/env bash
# The restore drill of docs/RUNBOOK.md ("Disaster recovery"), on real servers
# it starts itself: a PostgreSQL with continuous WAL archiving to an
# encrypted pgBackRest repository, a Redis, and `exchange all`.
#
#   1. full base backup; trading at load (`exchange bench`); a differential
#      backup;
#   2. the load pauses: the time T and the order count there are recorded
#      (the point-in-time target); trading resumes;
#   3. mid-run PostgreSQL is killed (-9) and its data directory deleted;
#   4. the services are stopped, the latest point restored, Redis reset to
#      the restored database (scripts/restore-check.sh --reset-redis), the
#      services started, scripts/restore-check.sh run, and a smoke trade
#      settled;
#   5. a second restore, to time T into a scratch directory, must hold
#      exactly the order count recorded at T;
#   6. archiving is broken on purpose: clearing must report it
#      (exchange_pg_wal_archive_failing, which the alert watches).
#
# It prints RPO (orders and ledger journals committed before the loss and
# missing after the restore, and the seconds they span) and RTO (from the
# loss to /ready, and to the first settled order), and fails when they
# exceed RPO_MAX_SECONDS / RTO_MAX_SECONDS.
#
# Usage: scripts/restore-drill.sh [LOAD_SECONDS]      (default 30; the test
#        suite runs it short)
# Env:   EXCHANGE_BIN      the binary (default target/release/exchange, else
#                          target/debug/exchange)
#        ARCHIVE_TIMEOUT   PostgreSQL's archive_timeout, seconds (default 10;
#                          production: 60) — it bounds the RPO
#        RPO_MAX_SECONDS   default ARCHIVE_TIMEOUT + 10
#        RTO_MAX_SECONDS   default 120
#        DRILL_PG_PORT (default 54339), DRILL_REDIS_PORT (default 63809),
#        DRILL_HTTP_BASE   first of seven service ports (default 18180)
#        KEEP=1            keep the work directory (logs, repository)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib/local-services.sh
. scripts/lib/local-services.sh

load_seconds="${1:-30}"
archive_timeout="${ARCHIVE_TIMEOUT:-10}"
rpo_max="${RPO_MAX_SECONDS:-$((archive_timeout + 10))}"
rto_max="${RTO_MAX_SECONDS:-120}"
pg_port="${DRILL_PG_PORT:-54339}"
redis_port="${DRILL_REDIS_PORT:-63809}"
base="${DRILL_HTTP_BASE:-18180}"
bin="${EXCHANGE_BIN:-}"
if [ -z "$bin" ]; then
    for bin in "$root/target/release/exchange" "$root/target/debug/exchange" ""; do
        [ -x "$bin" ] && break
    done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then die "no exchange binary: cargo build -p exchange (or set EXCHANGE_BIN)"; fi
command -v pgbackrest >/dev/null 2>&1 || apt_install pgbackrest
command -v curl >/dev/null 2>&1 || apt_install curl
command -v jq >/dev/null 2>&1 || apt_install jq
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
bindir="$(pg_bindir)"

work="$(mktemp -d /tmp/restore-drill.XXXXXX)"
data="$work/pg"
scratch="$work/pg-pitr"
sock="$work/sock"
mkdir -p "$sock" "$work/repo" "$work/log" "$work/lock" "$work/spool"
# PostgreSQL and pgBackRest run as the database's owner.
if [ "$(id -u)" = 0 ]; then chown -R postgres "$work"; fi
exchange_pid=""
bench_pid=""
# shellcheck disable=SC2317  # (run by the EXIT trap)
cleanup() {
    [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null
    [ -n "$exchange_pid" ] && kill -TERM "$exchange_pid" 2>/dev/null && wait "$exchange_pid" 2>/dev/null
    for d in "$data" "$scratch"; do
        [ -f "$d/postmaster.pid" ] && as_pg "$bindir/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1
    done
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1
    if [ -n "${KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
    return 0
}
trap cleanup EXIT

# The repository is encrypted (as it must be off the host); the passphrase
# would live in a secret store, here in the drill's private config file.
conf="$work/pgbackrest.conf"
cipher="$(openssl rand -hex 32)"
cat >"$conf" <<EOF
[global]
repo1-path=$work/repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$cipher
repo1-retention-full=2
log-path=$work/log
lock-path=$work/lock
spool-path=$work/spool
log-level-console=warn
start-fast=y

[drill]
pg1-path=$data
pg1-port=$pg_port
pg1-socket-path=$sock
pg1-user=postgres
EOF
chmod 600 "$conf"
[ "$(id -u)" = 0 ] && chown postgres "$conf"
backrest() { as_pg pgbackrest --config="$conf" --stanza=drill "$@"; }

pg_start() { # DATA_DIR PORT [EXTRA_OPTIONS]
    as_pg "$bindir/pg_ctl" -D "$1" -l "$work/log/postgres-$2.log" -w -t 120 \
        -o "-p $2 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$sock ${3:-}" start >/dev/null
}
now_s() { date +%s.%N; }
# Waits (at most 300 s) until the server of DATA_DIR at URL has left
# recovery; fails at once when it stopped (a recovery that failed).
wait_promoted() { # DATA_DIR URL LOG
    for _ in $(seq 1500); do
        [ "$(psql -Atq "$2" -c "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && return 0
        as_pg "$bindir/pg_ctl" -D "$1" status >/dev/null 2>&1 || { tail -n 20 "$3" >&2; die "PostgreSQL stopped during recovery"; }
        sleep 0.2
    done
    tail -n 20 "$3" >&2
    die "PostgreSQL did not finish recovery within 300 s"
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

log "PostgreSQL on $pg_port with WAL archiving to pgBackRest (archive_timeout=${archive_timeout}s)"
as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
cat >>"$data/postgresql.conf" <<EOF
wal_level = replica
archive_mode = on
archive_timeout = ${archive_timeout}s
archive_command = 'pgbackrest --config=$conf --stanza=drill archive-push %p'
max_connections = 200
fsync = on
EOF
pg_start "$data" "$pg_port"
admin_url="postgres://postgres@127.0.0.1:$pg_port/postgres"
psql -q "$admin_url" -c "CREATE DATABASE exchange" >/dev/null
# A Redis left on the port (by a killed run) would bring its old streams.
if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then die "port $redis_port is taken (a Redis left by an earlier run? redis-cli -p $redis_port shutdown nosave)"; fi
redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --save '' --appendonly no \
    --dir "$work" --logfile "$work/log/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

export DB_URL="postgres://postgres@127.0.0.1:$pg_port/exchange" REDIS_URL="redis://127.0.0.1:$redis_port" \
    REDIS_KEY_PREFIX=drill APP_ENV=dev LOG_LEVEL=warn DB_POOL_MAX=20 MATCHING_MARKETS='*' \
    INTERNAL_TOKEN=dev-internal-token-change-me-please-000 \
    AUTH_TOKEN_SECRET=dev-auth-token-secret-change-me-please-0 \
    ADMIN_TOKEN=dev-admin-token-change-me-please-00000 \
    RATE_LIMIT_IP_PER_SECOND=1000000 RATE_LIMIT_ORDERS_PER_SECOND=1000000 \
    RATE_LIMIT_LOGIN_PER_MINUTE=100000 HTTP_CONNECTIONS_PER_IP_MAX=100000 \
    GATEWAY_HTTP_ADDR=127.0.0.1:$base GATEWAY_WS_ADDR=127.0.0.1:$((base + 1)) \
    ORDER_HTTP_ADDR=127.0.0.1:$((base + 2)) MATCHING_HTTP_ADDR=127.0.0.1:$((base + 3)) \
    CLEARING_HTTP_ADDR=127.0.0.1:$((base + 4)) MARKETDATA_HTTP_ADDR=127.0.0.1:$((base + 5)) \
    WALLET_HTTP_ADDR=127.0.0.1:$((base + 6)) \
    ORDER_SERVICE_URL=http://127.0.0.1:$((base + 2)) MARKETDATA_URL=http://127.0.0.1:$((base + 5)) \
    WALLET_SERVICE_URL=http://127.0.0.1:$((base + 6)) \
    MATCHING_URL=http://127.0.0.1:$((base + 3)) EXCHANGE_BIN="$bin"
gateway="http://127.0.0.1:$base"
services="$gateway http://127.0.0.1:$((base + 2)) http://127.0.0.1:$((base + 3)) http://127.0.0.1:$((base + 4)) http://127.0.0.1:$((base + 5)) http://127.0.0.1:$((base + 6))"
"$bin" migrate >/dev/null

# The first full backup is taken by the compose backup service's own
# script, run once here against this server.
log "full backup (deploy/prod/postgres/backup-loop.sh)"
as_pg env PGBACKREST_CONFIG="$conf" PGBACKREST_STANZA=drill PGBACKREST_REPO1_CIPHER_PASS="$cipher" \
    PGHOST="$sock" PGPORT="$pg_port" BACKUP_LOOP_ONCE=1 \
    sh deploy/prod/postgres/backup-loop.sh >"$work/log/backup-loop.log" 2>&1 \
    || { cat "$work/log/backup-loop.log" >&2; die "backup-loop.sh failed"; }
backrest info --output=json | grep -q '"type":"full"' || die "the repository holds no full backup"

exchange_start() {
    "$bin" all >>"$work/log/exchange.log" 2>&1 &
    exchange_pid=$!
}
# Waits until every service answers /ready 200.
wait_ready() {
    local s
    for _ in $(seq 600); do
        local all=1
        for s in $services; do curl -sf --max-time 2 "$s/ready" >/dev/null || { all=0; break; }; done
        [ "$all" = 1 ] && return 0
        sleep 0.2
    done
    tail -n 30 "$work/log/exchange.log" >&2
    die "the services did not become ready"
}
bench() { # SECONDS OUTPUT (exec: in the background, its pid is the bench's)
    exec "$bin" bench --gateway "$gateway" --ws "ws://127.0.0.1:$((base + 1))" --admin-token "$ADMIN_TOKEN" \
        --users 16 --duration "$1" --setup >"$2" 2>&1
}
count_now() { psql -Atq "$DB_URL" -c "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM ledger_journal), now()"; }

exchange_start
wait_ready
half=$(( (load_seconds + 1) / 2 ))
log "trading at load for ${half}s"
(bench "$half" "$work/bench-1.txt") || { cat "$work/bench-1.txt" >&2; die "the bench failed"; }
# A differential backup on top of the full one, as the daily schedule takes:
# the restores below start from it.
log "differential backup"
backrest backup --type=diff >/dev/null
# The point-in-time target: nothing commits between the count and T (the load
# is paused and settles first).
sleep 2
IFS='|' read -r pitr_orders _ pitr_time < <(count_now)
log "point-in-time target $pitr_time: $pitr_orders orders"
# Recovery to a time stops at the first commit after it, so one must follow
# (the load is paused: a marker), and the WAL holding both must be archived
# before the loss: switch segments and wait for the archiver to take it.
sleep 0.5
psql -q "$DB_URL" -c "CREATE TABLE drill_after_target AS SELECT now() AS at"
switched=$(psql -Atq "$DB_URL" -c "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 300); do
    archived=$(psql -Atq "$DB_URL" -c "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
    [[ "$archived" < "$switched" ]] || break
    sleep 0.2
done
if [[ "$archived" < "$switched" ]]; then die "WAL segment $switched was not archived within 60 s"; fi
sleep 1

log "trading at load again; PostgreSQL is lost in ${half}s"
bench "$load_seconds" "$work/bench-2.txt" &
bench_pid=$!
sleep "$half"
# The loss: what was committed just before it, then kill -9 and delete.
IFS='|' read -r lost_orders_before lost_journals_before _ < <(count_now)
# The newest orders and their times, to date the first one the restore loses.
psql -q "$DB_URL" -c "\\copy (SELECT id, extract(epoch FROM created_at) FROM orders WHERE created_at > now() - interval '5 minutes' ORDER BY id) TO '$work/recent-orders.csv' CSV"
loss=$(now_s)
postmaster=$(head -n 1 "$data/postmaster.pid")
kill -9 "$postmaster"
rm -rf "$data"
log "PostgreSQL killed (-9) and its data directory deleted"
kill "$bench_pid" 2>/dev/null || true
wait "$bench_pid" 2>/dev/null || true
bench_pid=""

# Recovery, as the RUNBOOK says: stop the services (gracefully, or killed
# after 20 s: their database is gone), restore, reset Redis, start the
# services, check.
kill -TERM "$exchange_pid" 2>/dev/null
for _ in $(seq 100); do kill -0 "$exchange_pid" 2>/dev/null || break; sleep 0.2; done
kill -KILL "$exchange_pid" 2>/dev/null || true
wait "$exchange_pid" 2>/dev/null || true
exchange_pid=""
as_pg mkdir -p "$data"
as_pg chmod 700 "$data"
log "restoring the latest point"
backrest restore >/dev/null
pg_start "$data" "$pg_port"
# Recovery replays the archived WAL, then promotes.
wait_promoted "$data" "$admin_url" "$work/log/postgres-$pg_port.log"
restored=$(now_s)
# What survived, before anything new is written.
IFS='|' read -r orders_after journals_after _ < <(count_now)
kept_id=$(psql -Atq "$DB_URL" -c "SELECT coalesce(max(id), 0) FROM orders")
# Before the reset, Redis still holds the lost minutes' commands under seqs
# the restored database will hand out again: the check must say so.
if ahead=$(bash scripts/restore-check.sh 2>&1); then
    caught="no (nothing committed after the last archived WAL was on the streams)"
else
    grep -q "Redis is ahead of PostgreSQL" <<<"$ahead" || { echo "$ahead" >&2; die "restore-check failed for another reason than Redis being ahead"; }
    caught="yes"
fi
bash scripts/restore-check.sh --reset-redis >/dev/null
exchange_start
wait_ready
ready=$(now_s)
bash scripts/restore-check.sh || die "restore-check failed after the restore"
SERVICE_URLS="$services" GATEWAY_URL="$gateway" SMOKE_MARKET=DRILL-USDT bash scripts/smoke.sh --timeout 60 >"$work/smoke.txt" 2>&1 \
    || { cat "$work/smoke.txt" >&2; die "no trade settled after the restore"; }
settled=$(now_s)
# The smoke trade's orders took ids past the lost window's.
newest_id=$(psql -Atq "$DB_URL" -c "SELECT max(id) FROM orders")
[ "$newest_id" -gt $((kept_id + 1000000)) ] || die "order ids were not advanced past the lost window (newest $newest_id, kept $kept_id)"
# Clearing watches the archiver: on, not failing, nothing left behind.
metrics=$(curl -fsS --max-time 5 "http://127.0.0.1:$((base + 4))/metrics")
for want in 'exchange_pg_wal_archiving_enabled 1' 'exchange_pg_wal_archive_failing 0'; do
    grep -q "^$want\$" <<<"$metrics" || die "clearing's /metrics lacks '$want'"
done

# Seconds of history lost: from the first order the restore lost (by the
# list taken just before the loss) to the loss; 0 when none was lost.
first_lost=$(awk -F, -v kept="$kept_id" '$1 > kept { print $2; exit }' "$work/recent-orders.csv")
span=$(awk -v loss="$loss" -v first="${first_lost:-}" 'BEGIN { printf "%.1f", first == "" ? 0 : loss - first }')
lost_orders=$((lost_orders_before - (orders_after < lost_orders_before ? orders_after : lost_orders_before)))
lost_journals=$((lost_journals_before - (journals_after < lost_journals_before ? journals_after : lost_journals_before)))
rto_ready=$(elapsed "$loss" "$ready")
rto_settled=$(elapsed "$loss" "$settled")

log "point-in-time restore to $pitr_time into a scratch directory"
as_pg mkdir -p "$scratch"
as_pg chmod 700 "$scratch"
backrest restore --pg1-path="$scratch" --type=time "--target=$pitr_time" --target-timeline=current \
    --target-action=promote >/dev/null
# Not archiving: its new timeline must not mix with the restored server's.
pg_start "$scratch" "$((pg_port + 1))" "-c archive_mode=off"
scratch_url="postgres://postgres@127.0.0.1:$((pg_port + 1))/exchange"
wait_promoted "$scratch" "$scratch_url" "$work/log/postgres-$((pg_port + 1)).log"
pitr_got=$(psql -Atq "$scratch_url" -c "SELECT count(*) FROM orders")

# The alert's input: archiving breaks (an archive command that fails), and
# clearing, which reads pg_stat_archiver every 30 s, reports it.
psql -q "$admin_url" -c "ALTER SYSTEM SET archive_command = 'false'" -c "SELECT pg_reload_conf()" >/dev/null
psql -q "$DB_URL" -c "CREATE TABLE drill_archive_probe AS SELECT now() AS at" -c "SELECT pg_switch_wal()" >/dev/null
broke=$(now_s)
seen=""
for _ in $(seq 90); do
    if curl -fsS --max-time 5 "http://127.0.0.1:$((base + 4))/metrics" | grep -qx 'exchange_pg_wal_archive_failing 1'; then
        seen=$(elapsed "$broke" "$(now_s)")
        break
    fi
    sleep 0.5
done
[ -n "$seen" ] || die "clearing did not report the failing WAL archiver within 45 s"

echo "restore drill: load ${load_seconds}s, archive_timeout ${archive_timeout}s, $(du -sh "$work/repo" | cut -f1) repository (encrypted)"
echo "RPO: $lost_orders orders and $lost_journals ledger journals lost: the ${span}s before the loss (bound ${rpo_max}s)"
echo "RTO: ${rto_ready}s from the loss to every service ready, ${rto_settled}s to the first settled trade (bound ${rto_max}s)"
echo "     (stopping the services, restore and WAL replay $(elapsed "$loss" "$restored")s of it)"
echo "restore-check caught Redis ahead of the restored database before the reset: $caught"
echo "a failing archive command showed in clearing's exchange_pg_wal_archive_failing after ${seen}s"
echo "point-in-time restore to $pitr_time: $pitr_got orders (expected $pitr_orders)"
fail=0
[ "$pitr_got" = "$pitr_orders" ] || { echo "FAIL: the point-in-time restore holds $pitr_got orders, not $pitr_orders"; fail=1; }
awk -v s="$span" -v m="$rpo_max" 'BEGIN { exit !(s > m) }' && { echo "FAIL: RPO ${span}s above ${rpo_max}s"; fail=1; }
awk -v s="$rto_settled" -v m="$rto_max" 'BEGIN { exit !(s > m) }' && { echo "FAIL: RTO ${rto_settled}s above ${rto_max}s"; fail=1; }
[ "$fail" = 0 ] && echo "restore drill: OK"
exit "$fail"
