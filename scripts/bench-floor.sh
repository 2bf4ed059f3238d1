#!/usr/bin/env bash
# The CPU floor of an order on this machine (docs/BENCHMARKS.md): the least
# CPU the cheapest HTTP request and the rows the pipeline writes per order
# take, i.e. an upper bound on orders/s for any code that accepts orders
# over HTTP and stores what the pipeline stores in PostgreSQL.
#
# HTTP: a short `scripts/bench-orders.sh` run with HTTP_FLOOR=1, whose
# last line is the CPU per `GET /health` of the exchange process (the
# gateway serving it) and of `wrk`.
# PostgreSQL: that run's database (kept) provides real rows; this script
# then writes copies of them the way the three services'
# transactions do (order service: reserve funds per user, the orders, the
# journal, the sequence; matching: the event batches; clearing: the orders'
# fills, fills, trades, a netted ledger journal, balances, cleared
# batches), BATCH orders per transaction, ROUNDS times, from one psql
# session with nothing else running. It prints PostgreSQL's time per order
# for each statement and in all.
#
# A floor, not an estimate: it leaves out everything the services also do
# (reads and row locks before writing, decoding parameter arrays, two round
# trips per statement, planning, contention between the services'
# transactions), and its batches are as large as the pipeline's largest.
#
# Usage: scripts/bench-floor.sh [BATCH] [ROUNDS]        (default 200 50)
#   EXCHANGE_BIN, DB_URL, REDIS_URL as for scripts/bench-orders.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib/local-services.sh
. scripts/lib/local-services.sh

batch="${1:-200}"
rounds="${2:-50}"
case "$batch$rounds" in *[!0-9]*) die "usage: $0 [BATCH] [ROUNDS]" ;; esac
if [ "$batch" -eq 0 ] || [ "$rounds" -eq 0 ]; then die "usage: $0 [BATCH] [ROUNDS] (both above 0)"; fi

local_services_up "$root"
admin_url="$DB_URL"
db=""
floor_file=""
cleanup() {
    [ -n "$floor_file" ] && rm -f "$floor_file"
    [ -n "$db" ] || return 0
    drop_run_data "$admin_url" "$db"
}
trap cleanup EXIT
floor_file=$(mktemp)

log "a 5 s order pipeline run for rows to copy, then the HTTP floor"
status=0
run=$(KEEP=1 HTTP_FLOOR=1 scripts/bench-orders.sh 64 5 2>&1) || status=$?
# Named even when the run failed, so that cleanup drops it.
db=$(grep -oP 'kept database \K\w+' <<<"$run" || true)
[ "$status" -eq 0 ] || { printf '%s\n' "$run" >&2; die "the bench run failed"; }
[ -n "$db" ] || die "the bench run kept no database"
url="${admin_url%/*}/$db"
http_line=$(grep '^HTTP floor:' <<<"$run") || die "the bench run printed no HTTP floor"
http_us=$(grep -oP 'exchange \K[0-9]+(?= us)' <<<"$http_line")
http_us=$((http_us + $(grep -oP 'wrk \K[0-9]+(?= us)' <<<"$http_line")))

market=$(psql -Atq "$url" -c "SELECT market FROM orders WHERE id = 1")
rows=$(psql -Atq "$url" -c "SELECT least(
    (SELECT count(*) FROM orders WHERE id <= $batch),
    (SELECT count(*) FROM order_commands WHERE market = '$market' AND seq <= $batch),
    (SELECT count(*) FROM event_batches WHERE market = '$market' AND seq <= $batch),
    (SELECT count(*) FROM fills WHERE id <= $batch))")
[ "$rows" -eq "$batch" ] || die "the run left only $rows rows to copy, fewer than BATCH $batch"
offset=$(psql -Atq "$url" -c "SELECT greatest((SELECT max(id) FROM orders), (SELECT max(seq) FROM order_commands),
    (SELECT max(id) FROM fills), (SELECT max(id) FROM trades)) + 1")

# Settle the run's aftermath (autovacuum, dirty buffers) before measuring.
# CHECKPOINT needs a superuser (or pg_checkpoint); without, it is skipped.
psql -q "$url" -c "VACUUM ANALYZE" >/dev/null
psql -q "$url" -c "CHECKPOINT" >/dev/null 2>&1 || log "no CHECKPOINT (not a superuser): measuring anyway"
log "$rounds rounds of $batch orders"
{
    printf '%s\n' '\set ON_ERROR_STOP 1' '\timing on'
    printf '\\set M %s\n\\set N %s\n' "$market" "$batch"
    for i in $(seq 0 $((rounds - 1))); do
        printf '\\set B %s\n' $((offset + i * batch))
        cat scripts/lib/pg-floor-round.sql
    done
} | psql -e -X "$url" 2>&1 | awk -v orders=$((batch * rounds)) -v batch="$batch" '
    /^Time: / { if (stmt != "") { t[stmt] += $2; total += $2 } stmt = ""; next }
    # The echoed statements, not the result tags that follow them ("UPDATE
    # 200"; the tags "BEGIN" and "COMMIT" match but name the same key).
    /^(BEGIN|COMMIT|INSERT INTO [a-z]|UPDATE [a-z])/ { stmt = ($1 == "INSERT" ? $1 " " $2 " " $3 : $1 " " $2) }
    /^(ERROR|psql:)/ { print > "/dev/stderr"; failed = 1 }
    END {
        if (failed) exit 1
        printf "PostgreSQL time per order, %d orders per transaction, one backend:\n", batch
        for (s in t) printf "%8.1f us  %s\n", t[s] * 1000 / orders, s | "sort -rn"
        close("sort -rn")
        printf "%8.1f us  in all: %d orders/s from one core, if PostgreSQL did nothing else\n",
            total * 1000 / orders, orders / (total / 1000)
        print total * 1000 / orders > floor_file
    }' floor_file="$floor_file"
echo "$http_line"
pg_us=$(cat "$floor_file")
awk -v pg="$pg_us" -v http="$http_us" -v cores="$(nproc)" 'BEGIN {
    printf "Floor per order: PostgreSQL %.0f us + HTTP (server and client) %d us = %.0f us of CPU;\n", pg, http, pg + http
    printf "at most %d orders/s on %d cores with nothing else running (no order logic, matching, clearing, Redis or pushes)\n",
        cores * 1000000 / (pg + http), cores
}'
