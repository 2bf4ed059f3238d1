#!/usr/bin/env bash
# End-to-end check of a running exchange, through the public API only:
#   1. /health and /ready of every service
#   2. admin: assets and market exist (creates them; 409 = already there)
#   3. two fresh users register and log in
#   4. admin deposits: the seller gets base, the buyer gets quote
#   5. a sell then a crossing buy (and the sell again with the same
#      client_order_id must return the same order)
#   6. both orders become filled
#   7. balances settle to the amounts the trade implies
#   8. both users' trade history and the public trades show the trade
# Every wait is bounded by --timeout. Exits 0 with "smoke: OK", or non-zero
# with "SMOKE FAILED at step ..." naming the step and the response.
#
# Usage: ADMIN_TOKEN=... scripts/smoke.sh [--timeout SECONDS] [--gateway URL] [--market BASE-QUOTE]
# Env:   GATEWAY_URL   default http://127.0.0.1:8080
#        SERVICE_URLS  services whose /health and /ready are checked (space or
#                      comma list); default the gateway and 127.0.0.1:8091-8095.
#                      Behind docker compose only the gateway is reachable:
#                      SERVICE_URLS=$GATEWAY_URL (compose healthchecks cover the rest).
#        ADMIN_URL     where the admin API is served, default the gateway URL;
#                      with ADMIN_HTTP_ADDR set (the production compose file)
#                      e.g. http://127.0.0.1:8081.
#        SMOKE_MARKET  default BTC-USDT. In production use a market of its own
#                      (e.g. SMOKE-USDT) so the smoke orders cannot meet real ones.
#        SMOKE_PRICE (default 30000), SMOKE_QTY (default 0.001)
# Needs bash, curl, jq.
# (jq programs are single-quoted on purpose: $names there are jq variables.)
# shellcheck disable=SC2016
set -euo pipefail

timeout_s="${SMOKE_TIMEOUT:-30}"
gateway="${GATEWAY_URL:-http://127.0.0.1:8080}"
admin_url="${ADMIN_URL:-}"
market="${SMOKE_MARKET:-BTC-USDT}"
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout_s="${2:?--timeout needs seconds}"; shift 2 ;;
        --timeout=*) timeout_s="${1#*=}"; shift ;;
        --gateway) gateway="${2:?--gateway needs a URL}"; shift 2 ;;
        --gateway=*) gateway="${1#*=}"; shift ;;
        --market) market="${2:?--market needs BASE-QUOTE}"; shift 2 ;;
        --market=*) market="${1#*=}"; shift ;;
        -h | --help) sed -n '2,/^# Needs bash/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "smoke: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || { echo "smoke: --timeout must be whole seconds" >&2; exit 64; }
gateway="${gateway%/}"
[[ "$market" =~ ^[A-Z0-9]+-[A-Z0-9]+$ ]] || { echo "smoke: market must look like BASE-QUOTE" >&2; exit 64; }
base="${market%-*}"
quote="${market#*-}"
price="${SMOKE_PRICE:-30000}"
qty="${SMOKE_QTY:-0.001}"
for tool in curl jq; do
    command -v "$tool" >/dev/null 2>&1 || { echo "smoke: $tool is required (apt-get install $tool)" >&2; exit 69; }
done
if [ -z "${ADMIN_TOKEN:-}" ]; then
    echo "smoke: ADMIN_TOKEN is not set (the gateway's admin token; prod: see deploy/prod/prod.env)" >&2
    exit 64
fi
service_urls="${SERVICE_URLS-$gateway http://127.0.0.1:8091 http://127.0.0.1:8092 http://127.0.0.1:8093 http://127.0.0.1:8094 http://127.0.0.1:8095}"
service_urls="${service_urls//,/ }"

started=$SECONDS
step_name="start"
step_no=0
step() {
    step_no=$((step_no + 1))
    step_name="$*"
    printf 'smoke: [%d] %s\n' "$step_no" "$*"
}
die() {
    {
        printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
        printf 'SMOKE FAILED at step %d (%s):\n  %s\n' "$step_no" "$step_name" "$1"
        [ -n "${2:-}" ] && printf '  response: %s\n' "${2:0:600}"
        printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
    } >&2
    exit 1
}

# http METHOD URL [JSON] [TOKEN] -> sets $code and $body (code 000: no answer).
request_timeout=$((timeout_s < 10 ? timeout_s : 10))
http() {
    local method="$1" url="$2" data="${3:-}" token="${4:-}" args out
    args=(-sS -X "$method" --max-time "$request_timeout" -w '\n%{http_code}' -H 'Accept: application/json')
    [ -n "$token" ] && args+=(-H "Authorization: Bearer $token")
    [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data "$data")
    if out="$(curl "${args[@]}" "$url" 2>&1)"; then
        code="${out##*$'\n'}"
        body="${out%$'\n'*}"
    else
        code=000
        body="${out%$'\n'*}"
    fi
}
# Admin routes go to ADMIN_URL (the gateway's, unless set).
api() {
    local base="$gateway"
    case "$2" in /admin/*) base="${admin_url:-$gateway}" ;; esac
    http "$1" "$base$2" "${3:-}" "${4:-}"
}
expect() { # expect CODE... : the last request answered one of these
    local c
    for c in "$@"; do [ "$code" = "$c" ] && return 0; done
    die "$last_call answered HTTP $code (expected $*)" "$body"
}
# until_ok DESCRIPTION COMMAND...: retries COMMAND until it succeeds or the timeout.
until_ok() {
    local what="$1" deadline=$((SECONDS + timeout_s))
    shift
    while ! "$@"; do
        [ "$SECONDS" -ge "$deadline" ] && die "$what: not true after ${timeout_s}s" "$body"
        sleep 0.5
    done
}
jqb() { jq -er "$@" <<<"$body" 2>/dev/null; }
# Decimal strings compared as numbers, within 1e-10 (amounts have at most 8
# decimals here; jq computes in binary floating point).
dec_eq() { jq -en --arg a "$1" --arg b "$2" '(($a|tonumber) - ($b|tonumber)) | (if . < 0 then -. else . end) < 1e-10' >/dev/null 2>&1; }

rand="$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
run_id="smoke-$(date +%s)-$rand"

# ---- 1 -------------------------------------------------------------------------------------
for url in $service_urls; do
    url="${url%/}"
    step "GET $url/health and /ready"
    last_call="GET $url/health"
    http GET "$url/health"
    [ "$code" != 000 ] || die "$url does not answer (is the service running? docs/RUNBOOK.md#service-down)" "$body"
    expect 200
    [ "$(jqb .status)" = ok ] || die "$url/health status is not ok" "$body"
    last_call="GET $url/ready"
    http GET "$url/ready"
    if [ "$code" != 200 ] || [ "$(jqb .status)" != ok ]; then
        die "$url/ready is not ok (HTTP $code): a dependency or consumer loop is down (docs/RUNBOOK.md#service-not-ready)" "$body"
    fi
done

# ---- 2 -------------------------------------------------------------------------------------
step "admin: assets $base, $quote and market $market exist"
for asset in "$base" "$quote"; do
    last_call="POST /admin/v1/assets $asset"
    api POST /admin/v1/assets "{\"symbol\":\"$asset\",\"scale\":8}" "$ADMIN_TOKEN"
    if [ "$code" = 401 ] || [ "$code" = 403 ]; then
        die "the admin API refused ADMIN_TOKEN (HTTP $code)" "$body"
    fi
    expect 200 201 409
done
last_call="POST /admin/v1/markets $market"
api POST /admin/v1/markets "{\"symbol\":\"$market\",\"base\":\"$base\",\"quote\":\"$quote\",\"price_tick\":\"0.01\",\"qty_step\":\"0.00001\",\"min_notional\":\"1\",\"maker_fee\":\"0.001\",\"taker_fee\":\"0.002\"}" "$ADMIN_TOKEN"
expect 200 201 409
market_created=0
[ "$code" != 409 ] && market_created=1
last_call="GET /api/v1/markets"
market_listed() {
    api GET /api/v1/markets
    [ "$code" = 200 ] && jqb --arg m "$market" 'any(.[]; .symbol == $m)' >/dev/null
}
until_ok "$market is listed by GET /api/v1/markets" market_listed
status="$(jqb --arg m "$market" '.[] | select(.symbol == $m) | .status')"
[ "$status" = trading ] || die "$market is '$status', not trading (docs/RUNBOOK.md#market-halted)" "$body"

# ---- 3 -------------------------------------------------------------------------------------
password="pw-$rand-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
declare -A user_id=() token=()
for who in seller buyer; do
    step "register and log in the $who"
    email="$run_id-$who@smoke.example.com"
    last_call="POST /api/v1/auth/register ($who)"
    api POST /api/v1/auth/register "{\"email\":\"$email\",\"password\":\"$password\"}"
    expect 201
    user_id[$who]="$(jq -c '.user_id' <<<"$body")"
    if [ -z "${user_id[$who]}" ] || [ "${user_id[$who]}" = null ]; then
        die "register answered without user_id" "$body"
    fi
    last_call="POST /api/v1/auth/login ($who)"
    api POST /api/v1/auth/login "{\"email\":\"$email\",\"password\":\"$password\"}"
    expect 200
    token[$who]="$(jqb .access_token)" || die "login answered without access_token" "$body"
done

# ---- 4 -------------------------------------------------------------------------------------
notional="$(jq -nr --arg p "$price" --arg q "$qty" '($p|tonumber) * ($q|tonumber)')"
seller_base=0.01
buyer_quote=1000
step "admin deposits: seller $seller_base $base, buyer $buyer_quote $quote"
last_call="POST /admin/v1/deposits (seller)"
api POST /admin/v1/deposits "{\"user_id\":${user_id[seller]},\"asset\":\"$base\",\"amount\":\"$seller_base\",\"reference\":\"smoke-${user_id[seller]}-$base\"}" "$ADMIN_TOKEN"
expect 200 201
last_call="POST /admin/v1/deposits (buyer)"
api POST /admin/v1/deposits "{\"user_id\":${user_id[buyer]},\"asset\":\"$quote\",\"amount\":\"$buyer_quote\",\"reference\":\"smoke-${user_id[buyer]}-$quote\"}" "$ADMIN_TOKEN"
expect 200 201
# balance WHO ASSET FIELD VALUE: the user's balance field equals VALUE now.
balance_is() {
    api GET /api/v1/account/balances "" "${token[$1]}"
    [ "$code" = 200 ] || return 1
    local got
    got="$(jqb --arg a "$2" --arg f "$3" '(.[] | select(.asset == $a) | .[$f]) // "0"')" || got=0
    dec_eq "$got" "$4"
}
last_call="GET /api/v1/account/balances"
until_ok "seller's $base deposit is available" balance_is seller "$base" available "$seller_base"
until_ok "buyer's $quote deposit is available" balance_is buyer "$quote" available "$buyer_quote"

# ---- 5 -------------------------------------------------------------------------------------
step "place a sell $qty $base @ $price, then a crossing buy"
sell_body="{\"market\":\"$market\",\"side\":\"sell\",\"type\":\"limit\",\"price\":\"$price\",\"quantity\":\"$qty\",\"time_in_force\":\"GTC\",\"client_order_id\":\"$run_id-sell\"}"
last_call="POST /api/v1/orders (sell)"
api POST /api/v1/orders "$sell_body" "${token[seller]}"
expect 201
sell_id="$(jqb .id)" || die "the sell order has no id" "$body"
last_call="POST /api/v1/orders (same client_order_id again)"
api POST /api/v1/orders "$sell_body" "${token[seller]}"
expect 200 201
[ "$(jqb .id)" = "$sell_id" ] || die "the same client_order_id created a second order (idempotency broken)" "$body"
last_call="POST /api/v1/orders (buy)"
api POST /api/v1/orders "{\"market\":\"$market\",\"side\":\"buy\",\"type\":\"limit\",\"price\":\"$price\",\"quantity\":\"$qty\",\"time_in_force\":\"GTC\",\"client_order_id\":\"$run_id-buy\"}" "${token[buyer]}"
expect 201
buy_id="$(jqb .id)" || die "the buy order has no id" "$body"

# ---- 6 -------------------------------------------------------------------------------------
step "both orders are filled (bounded wait, ${timeout_s}s)"
order_filled() {
    api GET "/api/v1/orders/$1" "" "${token[$2]}"
    [ "$code" = 200 ] && [ "$(jqb .status)" = filled ]
}
last_call="GET /api/v1/orders/$sell_id"
until_ok "sell order $sell_id filled" order_filled "$sell_id" seller
dec_eq "$(jqb .filled_quantity)" "$qty" || die "sell filled_quantity is not $qty" "$body"
last_call="GET /api/v1/orders/$buy_id"
until_ok "buy order $buy_id filled" order_filled "$buy_id" buyer
dec_eq "$(jqb .filled_quantity)" "$qty" || die "buy filled_quantity is not $qty" "$body"

# ---- 7 -------------------------------------------------------------------------------------
step "balances settle"
last_call="GET /api/v1/account/balances"
seller_base_left="$(jq -nr --arg a "$seller_base" --arg q "$qty" '($a|tonumber) - ($q|tonumber)')"
buyer_quote_left="$(jq -nr --arg a "$buyer_quote" --arg n "$notional" '($a|tonumber) - ($n|tonumber)')"
until_ok "seller has $seller_base_left $base available" balance_is seller "$base" available "$seller_base_left"
until_ok "seller has 0 $base locked" balance_is seller "$base" locked 0
until_ok "buyer has $buyer_quote_left $quote available (paid $notional)" balance_is buyer "$quote" available "$buyer_quote_left"
until_ok "buyer has 0 $quote locked" balance_is buyer "$quote" locked 0
if [ "$market_created" = 1 ]; then
    # Fees as created above: the maker (seller) pays 0.1% of the quote it
    # receives, the taker (buyer) 0.2% of the base it receives.
    seller_gets="$(jq -nr --arg n "$notional" '($n|tonumber) * 0.999')"
    buyer_gets="$(jq -nr --arg q "$qty" '($q|tonumber) * 0.998')"
    until_ok "seller received $seller_gets $quote (after the maker fee)" balance_is seller "$quote" available "$seller_gets"
    until_ok "buyer received $buyer_gets $base (after the taker fee)" balance_is buyer "$base" available "$buyer_gets"
else
    has_positive() {
        api GET /api/v1/account/balances "" "${token[$1]}"
        [ "$code" = 200 ] && jqb --arg a "$2" 'any(.[]; .asset == $a and (.available|tonumber) > 0)' >/dev/null
    }
    until_ok "seller received $quote" has_positive seller "$quote"
    until_ok "buyer received $base" has_positive buyer "$base"
fi

# ---- 8 -------------------------------------------------------------------------------------
step "trade history shows the trade"
my_fill() { # my_fill WHO ORDER_ID LIQUIDITY
    api GET "/api/v1/account/trades?market=$market&limit=10" "" "${token[$1]}"
    [ "$code" = 200 ] && jqb --arg o "$2" --arg l "$3" --arg p "$price" --arg q "$qty" \
        'any(.[]; (.order_id|tostring) == $o and .liquidity == $l and (.price|tonumber) == ($p|tonumber) and (.quantity|tonumber) == ($q|tonumber))' >/dev/null
}
last_call="GET /api/v1/account/trades (seller)"
until_ok "seller's trades list a maker fill of order $sell_id" my_fill seller "$sell_id" maker
last_call="GET /api/v1/account/trades (buyer)"
until_ok "buyer's trades list a taker fill of order $buy_id" my_fill buyer "$buy_id" taker
public_trade() {
    api GET "/api/v1/markets/$market/trades?limit=100"
    [ "$code" = 200 ] && jqb --arg p "$price" --arg q "$qty" \
        'any(.[]; (.price|tonumber) == ($p|tonumber) and (.quantity|tonumber) == ($q|tonumber) and .taker_side == "buy")' >/dev/null
}
last_call="GET /api/v1/markets/$market/trades"
until_ok "public trades of $market show the trade" public_trade

echo "smoke: OK ($step_no steps in $((SECONDS - started))s, market $market, run $run_id)"
