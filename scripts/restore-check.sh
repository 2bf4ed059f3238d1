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
#            journal, clearing resumes from cleared_batches).
#        scripts/restore-check.sh
#            with the services RUNNING again:
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
# Env:   DB_URL, REDIS_URL, REDIS_KEY_PREFIX (default exchange), MATCHING_URL,
#        METRICS_TOKEN, EXCHANGE_BIN
#        (default target/release/exchange, else target/debug/exchange, else
#        exchange on PATH).
# Exit:  0 all good; 1 a check failed (the message says which); 64 usage.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${REDIS_KEY_PREFIX:-exchange}"
: "${DB_URL:?DB_URL is not set}"
: "${REDIS_URL:?REDIS_URL is not set}"
fail() { echo "restore-check: FAILED: $*" >&2; exit 1; }

if [ "${1:-}" = "--reset-redis" ]; then
    deleted=0
    while read -r key; do
        [ -n "$key" ] || continue
        redis-cli -u "$REDIS_URL" UNLINK "$key" >/dev/null
        deleted=$((deleted + 1))
    done < <(redis-cli -u "$REDIS_URL" --scan --pattern "$prefix:*")
    echo "restore-check: deleted $deleted Redis keys under $prefix: (start the services now)"
    exit 0
elif [ $# -gt 0 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
    exit 64
fi

bin="${EXCHANGE_BIN:-}"
if [ -z "$bin" ]; then
    for bin in "$root/target/release/exchange" "$root/target/debug/exchange" "$(command -v exchange || true)"; do
        [ -n "$bin" ] && [ -x "$bin" ] && break
    done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then fail "no exchange binary (set EXCHANGE_BIN)"; fi

# 1. Redis not ahead: the seq of the last command on each market's stream
# (`<prefix>:orders:{MARKET}`, field `command`, a JSON SequencedCommand)
# against the seq the database journaled. The stream is read first: a
# command is published only after its commit, so with traffic flowing a
# legitimate entry is never above what the database holds a moment later.
while IFS= read -r market; do
    [ -n "$market" ] || continue
    stream="$prefix:orders:{$market}"
    seq=$(redis-cli -u "$REDIS_URL" --raw XREVRANGE "$stream" + - COUNT 1 |
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
deadline=$(( $(date +%s) + ${RESTORE_CHECK_WAIT:-30} ))
until out=$("$bin" admin reconcile 2>&1); do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$out" >&2; fail "exchange admin reconcile"; }
    sleep 1
done
echo "$out" | tail -n 1
echo "restore-check: OK"
