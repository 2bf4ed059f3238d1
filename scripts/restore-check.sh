#!/usr/bin/env bash
# What an operator runs after any restore of PostgreSQL (docs/RUNBOOK.md,
# "Disaster recovery"). A restored database is older than Redis: Redis's
# streams may hold commands and events of the lost minutes, with sequence
# numbers the restored database will hand out again. They must never be
# applied, so Redis is rebuilt from PostgreSQL before the services start.
#
# Usage: scripts/restore-check.sh --reset-redis
#            with every service STOPPED: deletes every key under
#            REDIS_KEY_PREFIX (streams, consumer groups, listenKeys, caches);
#            the services recreate what they need from PostgreSQL at start
#            (matching rebuilds its books from its snapshot and the command
#            journal, clearing resumes from cleared_batches); and moves every
#            id sequence (orders, ledger journals, ...) a million ahead, so
#            ids of the lost window are not handed out again.
#        scripts/restore-check.sh [--skip-reconcile]
#            with the services RUNNING again (--skip-reconcile: where there
#            is no exchange binary, e.g. in the local-db postgres image;
#            then run `exchange admin reconcile` yourself):
#            1. Redis is not ahead of PostgreSQL: no market's order stream
#               holds a command whose seq the database has not journaled;
#            2. matching replayed its journal against the stored batches
#               without a difference (no market halted; its /metrics at
#               MATCHING_URL, default http://127.0.0.1:8092, with
#               METRICS_TOKEN when set);
#            3. `exchange admin reconcile` passes (ledger balanced and equal
#               to balances, locks equal to open orders, no journal gap,
#               every command matched and every batch cleared), retried
#               while the services catch up (RESTORE_CHECK_WAIT seconds,
#               default 30).
#            (There is no custody yet: once withdrawals exist, pending
#            payouts are reviewed here before payouts resume.)
# Env:   DB_URL, REDIS_URL (rediss:// uses TLS, REDIS_CA_FILE), REDIS_KEY_PREFIX
#        (default exchange), MATCHING_URL, METRICS_TOKEN, EXCHANGE_BIN. Needs
#        psql, redis-cli, jq, curl and the exchange binary where it runs.
#        (default target/release/exchange, else target/debug/exchange, else
#        exchange on PATH).
# Exit:  0 all good; 1 a check failed (the message says which); 64 usage.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${REDIS_KEY_PREFIX:-exchange}"
: "${DB_URL:?DB_URL is not set}"
: "${REDIS_URL:?REDIS_URL is not set}"
fail() { echo "restore-check: FAILED: $*" >&2; exit 1; }

# redis-cli for REDIS_URL (TLS for rediss://, with REDIS_CA_FILE when set);
# Redis must answer, or a check below would pass without having looked.
rcli=(redis-cli -u "$REDIS_URL")
if [[ "$REDIS_URL" == rediss://* ]]; then
    rcli+=(--tls)
    [ -n "${REDIS_CA_FILE:-}" ] && rcli+=(--cacert "$REDIS_CA_FILE")
fi
[ "$("${rcli[@]}" PING 2>&1)" = PONG ] || fail "Redis at REDIS_URL does not answer PING (URL, password, TLS?)"

if [ "${1:-}" = "--reset-redis" ]; then
    deleted=0
    while read -r key; do
        [ -n "$key" ] || continue
        "${rcli[@]}" UNLINK "$key" >/dev/null
        deleted=$((deleted + 1))
    done < <("${rcli[@]}" --scan --pattern "$prefix:*")
    # Ids the restored database will hand out again (orders, journals,
    # audit rows, ...) skip past the lost window's, so no client sees one id
    # for two things. (Market sequence numbers are not touched: the journal
    # must stay gapless; the lost window's seqs and trade ids are reused.)
    psql -q "$DB_URL" -v ON_ERROR_STOP=1 -c "DO \$\$
        DECLARE s record;
        BEGIN
            FOR s IN SELECT schemaname, sequencename, coalesce(last_value, 0) AS v FROM pg_sequences
                     WHERE schemaname NOT IN ('pg_catalog', 'information_schema') LOOP
                PERFORM setval(format('%I.%I', s.schemaname, s.sequencename), s.v + 1000000);
            END LOOP;
        END \$\$" || fail "cannot advance the id sequences"
    echo "restore-check: deleted $deleted Redis keys under $prefix:, advanced every id sequence by 1000000 (start the services now)"
    exit 0
fi
skip_reconcile=0
case "${1:-}" in
    "") ;;
    --skip-reconcile) skip_reconcile=1 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 64 ;;
esac

bin="${EXCHANGE_BIN:-}"
if [ "$skip_reconcile" = 0 ] && [ -z "$bin" ]; then
    for bin in "$root/target/release/exchange" "$root/target/debug/exchange" "$(command -v exchange || true)"; do
        [ -n "$bin" ] && [ -x "$bin" ] && break
    done
fi
if [ "$skip_reconcile" = 0 ] && { [ -z "$bin" ] || [ ! -x "$bin" ]; }; then
    fail "no exchange binary (set EXCHANGE_BIN, or --skip-reconcile and run exchange admin reconcile yourself)"
fi

# 1. Redis not ahead: the seq of the last command on each market's stream
# (`<prefix>:orders:{MARKET}`, field `command`, a JSON SequencedCommand)
# against the seq the database journaled. The stream is read first: a
# command is published only after its commit, so with traffic flowing a
# legitimate entry is never above what the database holds a moment later.
while IFS= read -r market; do
    [ -n "$market" ] || continue
    stream="$prefix:orders:{$market}"
    seq=$("${rcli[@]}" --raw XREVRANGE "$stream" + - COUNT 1 |
        awk 'prev == "command" { print; exit } { prev = $0 }' | jq -r '.seq // empty' 2>/dev/null || true)
    [ -n "$seq" ] || continue
    last_seq=$(echo "SELECT last_seq FROM market_sequences WHERE market = :'market'" |
        psql -Atq "$DB_URL" -v market="$market")
    if [ "$seq" -gt "${last_seq:-0}" ]; then
        fail "Redis is ahead of PostgreSQL: $stream holds seq $seq, the database journaled up to ${last_seq:-0}; stop the services and run $0 --reset-redis"
    fi
done < <(psql -Atq "$DB_URL" -c "SELECT market FROM market_sequences ORDER BY market")
echo "restore-check: Redis is not ahead of PostgreSQL"

# 2. Matching replayed its journal at start, from its newest snapshot, and
# compared every batch it produced with the stored one: a difference halts
# the market (exchange_market_halted 1, exchange_matching_replay_mismatch_total).
matching="${MATCHING_URL:-http://127.0.0.1:8092}"
auth=()
[ -n "${METRICS_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $METRICS_TOKEN")
metrics=$(curl -fsS --max-time 5 "${auth[@]}" "$matching/metrics") || fail "cannot read $matching/metrics (set MATCHING_URL, METRICS_TOKEN)"
halted=$(grep -E '^exchange_market_halted\{.*\} 1$' <<<"$metrics" || true)
[ -z "$halted" ] || fail "matching halted a market after replaying its journal: $halted (docs/RUNBOOK.md, Market halted)"
mismatched=$(grep -E '^exchange_matching_replay_mismatch_total\{' <<<"$metrics" | grep -v ' 0$' || true)
[ -z "$mismatched" ] || fail "matching's replay differs from the stored batches: $mismatched"
echo "restore-check: matching replayed its journal and matched the stored batches"

# 3. Every money invariant, once the services caught up.
if [ "$skip_reconcile" = 1 ]; then
    echo "restore-check: OK so far; now run exchange admin reconcile (xadm reconcile): it must pass"
    exit 0
fi
deadline=$(( $(date +%s) + ${RESTORE_CHECK_WAIT:-30} ))
until out=$("$bin" admin reconcile 2>&1); do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$out" >&2; fail "exchange admin reconcile"; }
    sleep 1
done
echo "$out" | tail -n 1
echo "restore-check: OK"
