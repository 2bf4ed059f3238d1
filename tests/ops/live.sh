# shellcheck shell=bash
# Live stage of tests/ops/run.sh (sourced; uses its check/ok/not_ok helpers,
# $work, $bg_pids, prom_queries and free_port).
#
# Starts the six services as separate processes from the built `exchange`
# binary on free ports, against a fresh database on DB_URL's server and Redis
# logical database 14 of REDIS_URL's server, then runs what the runbook tells
# operators to run: /health /ready /metrics, scripts/smoke.sh, the redis-cli
# inspection commands, `exchange admin dlq list` and `exchange admin reconcile`,
# pg_dump/pg_restore; scrapes the services with a real Prometheus and runs every
# dashboard query; checks the served OpenAPI document against the server with
# schemathesis (every check: as a user, as admin, and the unsigned Binance
# routes); finally stops matching and checks smoke.sh fails loudly.
#
# OPS_LIVE=auto (default): runs when the binary exists, is newer than every
# Rust source, and DB_URL/REDIS_URL are set; otherwise prints why it skipped.
# OPS_LIVE=1: must run (missing prerequisites fail). OPS_LIVE=0: skipped.
# shellcheck disable=SC2154,SC2016

live_db=""
live_restore_db=""
live_redis_url=""
live_admin_db_url=""
live_cleanup() {
    if [ -n "$live_admin_db_url" ]; then
        local db
        for db in "$live_db" "$live_restore_db"; do
            [ -n "$db" ] && psql "$live_admin_db_url" -X -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1
        done
    fi
    [ -n "$live_redis_url" ] && redis-cli -u "$live_redis_url" FLUSHDB >/dev/null 2>&1
    return 0
}

live_skip() {
    if [ "${OPS_LIVE:-auto}" = 1 ]; then
        not_ok "live stage can run: $1"
    else
        printf 'skip  live stage: %s (OPS_LIVE=1 forces it)\n' "$1"
    fi
}

# The schemathesis command (a pinned major version, installed into the
# repository's .local/venv when missing, as scripts/test.sh does for ccxt);
# prints why on failure.
live_schemathesis() {
    local venv="$root/.local/venv"
    if [ ! -x "$venv/bin/schemathesis" ]; then
        if ! { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } >&2 ||
            ! "$venv/bin/python" -m pip install --quiet 'schemathesis>=4.3,<5' >&2; then
            echo "cannot install schemathesis into $venv (python3-venv, network?)"
            return 1
        fi
    fi
    echo "$venv/bin/schemathesis"
}

# live_conformance NAME GATEWAY_URL SCHEMATHESIS_ARGS...: schemathesis with
# every check against the served document, bounded (a few examples per
# operation, a fixed seed, within the gateway's per-IP budget); run in $work,
# where it keeps its example database.
live_conformance() {
    local name="$1" gateway="$2" st
    shift 2
    if ! st="$(live_schemathesis)"; then
        not_ok "$name" "$st"
        return 0
    fi
    check "$name" bash -c 'cd "$1" && shift && exec "$@"' _ "$work" \
        "$st" --config-file "$here/schemathesis.toml" run "$gateway/docs/openapi.json" \
        --checks all --max-examples 5 --seed 1 --workers 1 --rate-limit 25/s --max-response-time 5 "$@"
}

# url_with_db URL NAME: the same server URL with another database (path).
url_with_db() {
    local url="$1" name="$2" base query
    base="${url%%\?*}"
    query="${url#"$base"}"
    printf '%s/%s%s' "${base%/*}" "$name" "$query"
}

live_stage() {
    section "live stage (the running services)"
    [ "${OPS_LIVE:-auto}" = 0 ] && { echo "skip  live stage: OPS_LIVE=0"; return 0; }
    local bin="${EXCHANGE_BIN:-}"
    if [ -z "$bin" ]; then
        for bin in target/release/exchange target/debug/exchange ""; do
            [ -x "$bin" ] && break
        done
    fi
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        live_skip "no exchange binary (cargo build -p exchange, or EXCHANGE_BIN)"
        return 0
    fi
    if [ "${OPS_LIVE:-auto}" = auto ] && [ -n "$(find exchange* -name '*.rs' -newer "$bin" -print -quit 2>/dev/null)" ]; then
        live_skip "$bin is older than the Rust sources (cargo build -p exchange)"
        return 0
    fi
    if [ -z "${DB_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
        live_skip "DB_URL and REDIS_URL are not set (scripts/test.sh sets them)"
        return 0
    fi
    local tool
    for tool in psql pg_dump pg_restore redis-cli; do
        command -v "$tool" >/dev/null 2>&1 || { live_skip "$tool is not installed"; return 0; }
    done
    echo "using $bin"

    # ---- a private database and Redis logical database ----
    live_admin_db_url="$DB_URL"
    live_db="ops_live_$$"
    live_restore_db="ops_restore_$$"
    local db_url redis_base
    db_url="$(url_with_db "$DB_URL" "$live_db")"
    redis_base="${REDIS_URL%%\?*}"
    if [[ "$redis_base" =~ ^(rediss?://[^/]*)(/[0-9]*)?$ ]]; then
        live_redis_url="${BASH_REMATCH[1]}/14"
    else
        live_skip "cannot derive a Redis URL from REDIS_URL"
        return 0
    fi
    check "live: create database $live_db" psql "$DB_URL" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$live_db\""
    check "live: empty Redis database 14" redis-cli -u "$live_redis_url" FLUSHDB

    # ---- environment: a development configuration on free ports ----
    local -A port=()
    local svc
    for svc in gateway ws order matching clearing marketdata wallet; do port[$svc]="$(free_port)"; done
    local metrics_token="ops-live-metrics-token-0123456789abcdef"
    local admin_token="dev-admin-token-change-me-please-00000"
    local -a live_env=(
        APP_ENV=dev APP_VERSION=ops-live LOG_LEVEL=warn
        DB_URL="$db_url" REDIS_URL="$live_redis_url"
        INTERNAL_TOKEN=dev-internal-token-change-me-please-000
        AUTH_TOKEN_SECRET=dev-auth-token-secret-change-me-please-0
        ADMIN_TOKEN="$admin_token" METRICS_TOKEN="$metrics_token"
        ENABLE_DOCS=true MARKETDATA_WS_ALLOW_ORIGINS=http://localhost:3000
        SHUTDOWN_DRAIN_SECONDS=2
        GATEWAY_HTTP_ADDR="127.0.0.1:${port[gateway]}" GATEWAY_WS_ADDR="127.0.0.1:${port[ws]}"
        ORDER_HTTP_ADDR="127.0.0.1:${port[order]}" MATCHING_HTTP_ADDR="127.0.0.1:${port[matching]}"
        CLEARING_HTTP_ADDR="127.0.0.1:${port[clearing]}" MARKETDATA_HTTP_ADDR="127.0.0.1:${port[marketdata]}"
        WALLET_HTTP_ADDR="127.0.0.1:${port[wallet]}"
        ORDER_SERVICE_URL="http://127.0.0.1:${port[order]}" MARKETDATA_URL="http://127.0.0.1:${port[marketdata]}"
        WALLET_SERVICE_URL="http://127.0.0.1:${port[wallet]}"
        ORDER_CONSUMER_GROUP=order ORDER_CONSUMER_NAME=order-ops-1
        MATCHING_CONSUMER_GROUP=matching MATCHING_CONSUMER_NAME=matching-ops-1
        CLEARING_CONSUMER_GROUP=clearing CLEARING_CONSUMER_NAME=clearing-ops-1
        MARKETDATA_CONSUMER_GROUP=marketdata-ops-1 MARKETDATA_CONSUMER_NAME=marketdata-ops-1
        GATEWAY_CONSUMER_NAME=gateway-ops-1 MATCHING_MARKETS='*'
        # The conformance runs below check shapes and codes at schemathesis'
        # pace from one address; the budgets themselves have their own tests.
        RATE_LIMIT_IP_PER_SECOND=1000000 RATE_LIMIT_LOGIN_PER_MINUTE=1000000
        MARKETDATA_RATE_LIMIT_IP_PER_SECOND=1000000
    )
    check "live: exchange migrate" env "${live_env[@]}" "$bin" migrate || { live_cleanup; return 0; }

    local -A pid=()
    local logdir="$work/live"
    mkdir -p "$logdir"
    for svc in wallet gateway order matching clearing marketdata; do
        env "${live_env[@]}" "$bin" "$svc" >"$logdir/$svc.log" 2>&1 &
        pid[$svc]=$!
        bg_pids+=("$!")
    done
    local -A url=()
    for svc in wallet gateway order matching clearing marketdata; do url[$svc]="http://127.0.0.1:${port[$svc]}"; done

    # ---- health, ready, metrics ----
    local deadline=$((SECONDS + 90)) all_ready
    while :; do
        all_ready=1
        for svc in wallet gateway order matching clearing marketdata; do
            curl -fsS --max-time 2 "${url[$svc]}/ready" >/dev/null 2>&1 || all_ready=0
        done
        [ "$all_ready" = 1 ] || [ "$SECONDS" -ge "$deadline" ] && break
        sleep 0.5
    done
    local body all_metrics=""
    for svc in wallet gateway order matching clearing marketdata; do
        body="$(curl -sS --max-time 3 "${url[$svc]}/health" 2>&1)"
        if jq -e '.status == "ok"' <<<"$body" >/dev/null 2>&1; then ok "live: $svc GET /health ok"; else not_ok "live: $svc GET /health ok" "$body
$(tail -n 20 "$logdir/$svc.log")"; fi
        body="$(curl -sS --max-time 3 -w '\n%{http_code}' "${url[$svc]}/ready" 2>&1)"
        if [ "${body##*$'\n'}" = 200 ] && jq -e '.status == "ok" and (.dependencies | type == "object")' <<<"${body%$'\n'*}" >/dev/null 2>&1; then
            ok "live: $svc GET /ready 200 ok with dependencies"
        else
            not_ok "live: $svc GET /ready 200 ok with dependencies" "$body
$(tail -n 20 "$logdir/$svc.log")"
        fi
        body="$(curl -sS --max-time 3 -o /dev/null -w '%{http_code}' "${url[$svc]}/metrics" 2>&1)"
        if [ "$body" = 401 ] || [ "$body" = 403 ]; then ok "live: $svc /metrics refuses a request without METRICS_TOKEN"; else not_ok "live: $svc /metrics refuses a request without METRICS_TOKEN (HTTP $body)"; fi
        body="$(curl -fsS --max-time 3 -H "Authorization: Bearer $metrics_token" "${url[$svc]}/metrics" 2>&1)"
        if [ -n "$body" ]; then ok "live: $svc /metrics with the token"; else not_ok "live: $svc /metrics with the token"; fi
        check "live: promtool check metrics ($svc)" bash -c 'promtool check metrics <<<"$1"' _ "$body"
        all_metrics+="$body"$'\n'
    done

    # ---- the end-to-end check ----
    local svc_urls="${url[gateway]} ${url[order]} ${url[matching]} ${url[clearing]} ${url[marketdata]} ${url[wallet]}"
    check "live: scripts/smoke.sh passes" env GATEWAY_URL="${url[gateway]}" SERVICE_URLS="$svc_urls" \
        ADMIN_TOKEN="$admin_token" bash scripts/smoke.sh --timeout 30

    # ---- the OpenAPI document describes the API as it is ----
    # No server error, no status code the document does not list, every
    # field rule in the schema (tests/ops/schemathesis.toml says which
    # operations refuse valid data for business rules, and why).
    local st_email st_token
    st_email="openapi-$$@example.com"
    curl -fsS --max-time 10 -H 'Content-Type: application/json' "${url[gateway]}/api/v1/auth/register" \
        -d "{\"email\":\"$st_email\",\"password\":\"openapi-conformance\"}" >/dev/null 2>&1
    st_token="$(curl -fsS --max-time 10 -H 'Content-Type: application/json' "${url[gateway]}/api/v1/auth/login" \
        -d "{\"email\":\"$st_email\",\"password\":\"openapi-conformance\"}" 2>/dev/null | jq -r '.access_token // empty')"
    if [ -n "$st_token" ]; then
        # Logging out ends the token's session: those two run last, alone.
        live_conformance "live: schemathesis, every check, as a user (v1 API)" "${url[gateway]}" \
            --header "Authorization: Bearer $st_token" --exclude-path-regex '^/(admin/|api/v3/|sapi/|api/v1/auth/logout)'
        live_conformance "live: schemathesis, every check, logout and logout-all" "${url[gateway]}" \
            --header "Authorization: Bearer $st_token" --include-path-regex '^/api/v1/auth/logout'
    else
        not_ok "live: schemathesis, every check, as a user (v1 API): cannot register and log in a user"
    fi
    live_conformance "live: schemathesis, every check, as admin (admin API)" "${url[gateway]}" \
        --header "Authorization: Bearer $admin_token" --include-path-regex '^/admin/'
    live_conformance "live: schemathesis, every check, the Binance-compatible API (unsigned)" "${url[gateway]}" \
        --include-path-regex '^/(api/v3|sapi/v1)/'

    # ---- contract metrics, after traffic ----
    all_metrics=""
    for svc in wallet gateway order matching clearing marketdata; do
        all_metrics+="$(curl -fsS --max-time 3 -H "Authorization: Bearer $metrics_token" "${url[$svc]}/metrics" 2>/dev/null)"$'\n'
    done
    local name
    for name in 'http_requests_total\{' 'http_request_duration_seconds_bucket\{' 'exchange_ready\{' 'exchange_consumer_up\{' \
        'exchange_stream_lag\{' 'exchange_stream_pending\{' 'exchange_stream_dlq_length\{' 'exchange_orders_accepted_total\{' \
        'exchange_trades_total\{' 'exchange_ws_connections\{' 'exchange_market_halted\{' 'exchange_reconcile_ok\{' \
        'exchange_reconcile_last_run_timestamp_seconds' 'exchange_pg_wal_archiving_enabled' \
        'exchange_pg_wal_archive_pending_segments' 'exchange_pg_wal_archive_failing' \
        'exchange_wallet_custody_freezes_open' 'exchange_wallet_withdrawal_oldest_age_seconds\{'; do
        if grep -qE "^$name" <<<"$all_metrics"; then ok "live: a service exports ${name%\\\{}"; else not_ok "live: a service exports ${name%\\\{} (contract metric missing from every /metrics)"; fi
    done
    for svc in wallet gateway order matching clearing marketdata; do
        if grep -qE "^exchange_ready\{[^}]*service=\"$svc\"" <<<"$all_metrics"; then ok "live: $svc exports exchange_ready{service=\"$svc\"}"; else not_ok "live: $svc exports exchange_ready{service=\"$svc\"}"; fi
    done

    # ---- runbook commands: Redis inspection, admin CLI, backup/restore ----
    local R=(redis-cli -u "$live_redis_url")
    local cmd
    while IFS= read -r cmd; do
        [ -n "$cmd" ] || continue
        local -a words=()
        eval "words=($cmd)"
        if body="$("${R[@]}" "${words[@]}" 2>&1)" && ! grep -q '^ERR\|^WRONGTYPE\|^NOGROUP' <<<"$body"; then
            ok "live: redis-cli $cmd"
        else
            not_ok "live: redis-cli $cmd" "$body"
        fi
    done <<'EOF'
XINFO GROUPS exchange:events
XINFO GROUPS 'exchange:orders:{BTC-USDT}'
XINFO CONSUMERS exchange:events clearing
XPENDING exchange:events clearing
XPENDING exchange:events clearing - + 20
XLEN exchange:events:dlq
XRANGE exchange:events:dlq - + COUNT 5
EOF
    check "live: exchange admin dlq list" env "${live_env[@]}" "$bin" admin dlq list
    check "live: exchange admin reconcile" env "${live_env[@]}" "$bin" admin reconcile
    local dump="$work/exchange.dump" restore_url
    restore_url="$(url_with_db "$DB_URL" "$live_restore_db")"
    check "live: pg_dump -Fc" pg_dump "$db_url" -Fc -f "$dump"
    check "live: pg_restore into a new database" bash -c '
        psql "$1" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$2\" TEMPLATE template0" &&
        pg_restore -d "$3" --no-owner --exit-on-error "$4"' _ "$DB_URL" "$live_restore_db" "$restore_url" "$dump"
    local count_sql="SELECT string_agg(format('%s=%s', table_name, (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text), ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    local before after
    before="$(psql "$db_url" -X -A -t -c "$count_sql" 2>&1)"
    after="$(psql "$restore_url" -X -A -t -c "$count_sql" 2>&1)"
    if [ -n "$before" ] && [ "$before" = "$after" ]; then ok "live: the restored database has the same tables and row counts"; else not_ok "live: the restored database has the same tables and row counts" "before: $before
after:  $after"; fi

    # ---- Prometheus scraping the services, every dashboard query ----
    METRICS_TOKEN="$metrics_token" prom_queries live "gateway=127.0.0.1:${port[gateway]}" "order=127.0.0.1:${port[order]}" \
        "matching=127.0.0.1:${port[matching]}" "clearing=127.0.0.1:${port[clearing]}" "marketdata=127.0.0.1:${port[marketdata]}" \
        "wallet=127.0.0.1:${port[wallet]}"

    # ---- a service down: smoke.sh must fail, loudly, naming it ----
    kill "${pid[matching]}" 2>/dev/null
    wait "${pid[matching]}" 2>/dev/null
    body="$(GATEWAY_URL="${url[gateway]}" SERVICE_URLS="$svc_urls" ADMIN_TOKEN="$admin_token" bash scripts/smoke.sh --timeout 5 2>&1)"
    local rc=$?
    if [ "$rc" -ne 0 ] && grep -q "SMOKE FAILED at step" <<<"$body" && grep -q "127.0.0.1:${port[matching]}" <<<"$body"; then
        ok "live: scripts/smoke.sh fails loudly, naming matching, when matching is down"
    else
        not_ok "live: scripts/smoke.sh fails loudly, naming matching, when matching is down (exit $rc)" "$body"
    fi

    for svc in gateway order clearing marketdata wallet; do kill "${pid[$svc]}" 2>/dev/null; done
    for svc in gateway order clearing marketdata wallet; do wait "${pid[$svc]}" 2>/dev/null; done
    live_cleanup
}
