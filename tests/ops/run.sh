#!/usr/bin/env bash
# The operations test suite (scripts/test.sh runs it after the Rust tests).
# Checks the deployment and monitoring files the runbook relies on: preflight,
# deploy.sh (dry run), both compose stacks, the Prometheus config, every
# alert's unit test and runbook anchor, shellcheck on every script in git,
# yamllint, the crate and module graph (no service crate depends on another,
# no module cycles), the Grafana dashboard (parsed, and every panel's query run
# against a real Prometheus server), and, when the `exchange` binary and
# DB_URL/REDIS_URL are available, a live stage that starts the services,
# runs scripts/smoke.sh, scrapes them with Prometheus and checks that
# smoke.sh fails loudly with a service down.
#
# Usage: tests/ops/run.sh            (root installs missing Debian packages)
# Env:   OPS_LIVE=0|1|auto (default auto: live stage when binary + DB_URL/REDIS_URL)
#        EXCHANGE_BIN (default target/release/exchange, then target/debug/exchange)
# Last line: `ops: N passed, M failed`; exit status 1 when M > 0.
# (Single-quoted `bash -c` and jq programs expand their $vars themselves.)
# shellcheck disable=SC2016
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root" || exit 1
here="$root/tests/ops"
fixtures="$here/fixtures"

passed=0
failed=0
failures=()
work="$(mktemp -d "${TMPDIR:-/tmp}/exchange-ops.XXXXXX")"
bg_pids=()
cleanup() {
    local pid
    for pid in "${bg_pids[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    declare -F live_cleanup >/dev/null && live_cleanup
    rm -rf "$work"
}
trap cleanup EXIT

ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
not_ok() {
    failed=$((failed + 1))
    failures+=("$1")
    printf 'FAIL  %s\n' "$1"
    [ -n "${2:-}" ] && printf '%s\n' "$2" | tail -n 40 | sed 's/^/      | /'
    return 0
}
# check NAME CMD...: passes when CMD exits 0.
check() {
    local name="$1" out
    shift
    if out="$("$@" 2>&1)"; then ok "$name"; else not_ok "$name" "$out"; fi
}
# check_output NAME OUTPUT_VAR REGEX: passes when the text matches (grep -E).
check_contains() {
    local name="$1" text="$2" pattern="$3"
    if grep -qE -- "$pattern" <<<"$text"; then ok "$name"; else not_ok "$name" "expected /$pattern/ in:
$text"; fi
}
section() { printf '\n== %s\n' "$1"; }

# ---- tools ----------------------------------------------------------------------------
section "tools"
declare -A tool_pkg=([promtool]=prometheus [prometheus]=prometheus [docker-compose]=docker-compose
    [shellcheck]=shellcheck [jq]=jq [yamllint]=yamllint [curl]=curl)
missing_pkgs=()
for tool in promtool prometheus docker-compose shellcheck jq yamllint curl; do
    command -v "$tool" >/dev/null 2>&1 || missing_pkgs+=("${tool_pkg[$tool]}")
done
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u)
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing_pkgs[*]} (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
    else
        echo "missing ${missing_pkgs[*]}: sudo apt-get install --no-install-recommends ${missing_pkgs[*]}" >&2
    fi
fi
for tool in promtool prometheus docker-compose shellcheck jq yamllint curl; do
    check "tool $tool is installed" command -v "$tool"
done
# docker-compose (Debian) brings python3 with PyYAML; the compose assertions use it.
py=/usr/bin/python3
[ -x "$py" ] || py="$(command -v python3 || echo python3)"

# ---- the tree --------------------------------------------------------------------------
section "the tree shows the architecture"
check "no service crate depends on another service crate (cargo metadata)" bash "$here/crate_deps.sh"
for crate_src in exchange-*/src; do
    check "no modules of ${crate_src%/src} import each other in a circle" "$py" "$here/module_cycles.py" "$crate_src"
done

# ---- preflight -------------------------------------------------------------------------
section "prod-preflight.sh"
preflight=exchange-common/scripts/prod-preflight.sh
check "preflight accepts a filled production env (fixtures/good.env)" bash "$preflight" "$fixtures/good.env"
out="$(bash "$preflight" "$fixtures/dev.env" 2>&1)"
rc=$?
if [ "$rc" -eq 1 ]; then ok "preflight refuses the dev-default env (exit 1)"; else not_ok "preflight refuses the dev-default env (exit 1, got $rc)" "$out"; fi
while IFS='|' read -r label pattern; do
    [ -n "$label" ] && check_contains "preflight names: $label" "$out" "$pattern"
done <<'EOF'
INTERNAL_TOKEN dev default|FAIL +INTERNAL_TOKEN is a development default
AUTH_TOKEN_SECRET dev default|FAIL +AUTH_TOKEN_SECRET is a development default
ADMIN_TOKEN too short|FAIL +ADMIN_TOKEN is too short \(17 characters, need at least 32\)
APP_ENV not prod|FAIL +APP_ENV must be prod \(is 'dev'\)
APP_VERSION missing|FAIL +APP_VERSION is missing
ENABLE_DOCS true|FAIL +ENABLE_DOCS is true
origins contain *|FAIL +MARKETDATA_WS_ALLOW_ORIGINS contains '\*'
MATCHING_CONSUMER_NAME unset|FAIL +MATCHING_CONSUMER_NAME is not set
CLEARING_CONSUMER_NAME unset|FAIL +CLEARING_CONSUMER_NAME is not set
MARKETDATA_CONSUMER_NAME unset|FAIL +MARKETDATA_CONSUMER_NAME is not set
GATEWAY_CONSUMER_NAME unset|FAIL +GATEWAY_CONSUMER_NAME is not set
warns METRICS_TOKEN unset|WARN +METRICS_TOKEN is unset
the problem count|has 11 problem\(s\)
EOF
if grep -q 'ORDER_CONSUMER_NAME is not set' <<<"$out"; then
    not_ok "preflight does not blame a set ORDER_CONSUMER_NAME" "$out"
else
    ok "preflight does not blame a set ORDER_CONSUMER_NAME"
fi
# Variants of the good file, one problem each.
variant() { # variant NAME SED_EXPR -> path
    sed -e "$2" "$fixtures/good.env" >"$work/$1.env"
    printf '%s' "$work/$1.env"
}
while IFS='|' read -r label expr pattern; do
    [ -n "$label" ] || continue
    f="$(variant "$(printf '%s' "$label" | tr -c 'a-zA-Z0-9' '_')" "$expr")"
    out="$(bash "$preflight" "$f" 2>&1)"
    rc=$?
    if [ "$rc" -eq 1 ] && grep -qE -- "$pattern" <<<"$out"; then ok "preflight refuses: $label"; else not_ok "preflight refuses: $label (exit $rc)" "$out"; fi
done <<'EOF'
secret missing|/^INTERNAL_TOKEN=/d|INTERNAL_TOKEN is missing
secret 31 characters|s/^ADMIN_TOKEN=.*/ADMIN_TOKEN=0123456789abcdef0123456789abcde/|ADMIN_TOKEN is too short \(31
secret with change-me|s/^AUTH_TOKEN_SECRET=.*/AUTH_TOKEN_SECRET=please-change-me-0123456789abcdef0123/|AUTH_TOKEN_SECRET is a development default
secret with dev- prefix|s/^METRICS_TOKEN=.*/METRICS_TOKEN=dev-0123456789abcdef0123456789abcdef/|METRICS_TOKEN is a development default
two secrets equal|s/^ADMIN_TOKEN=.*/ADMIN_TOKEN=3b1f0c6e9a2d4f8b7c5e1a0d9f3b6c2e8a4d7f1b0c9e3a6d/|INTERNAL_TOKEN and ADMIN_TOKEN are the same value
origins empty|s/^MARKETDATA_WS_ALLOW_ORIGINS=.*/MARKETDATA_WS_ALLOW_ORIGINS=/|MARKETDATA_WS_ALLOW_ORIGINS is empty
origins with a wildcard|s/^MARKETDATA_WS_ALLOW_ORIGINS=.*/MARKETDATA_WS_ALLOW_ORIGINS=https:\/\/a.test,*/|MARKETDATA_WS_ALLOW_ORIGINS contains
ENABLE_DOCS=1|s/^ENABLE_DOCS=.*/ENABLE_DOCS=1/|ENABLE_DOCS is true
APP_VERSION=dev|s/^APP_VERSION=.*/APP_VERSION=dev/|APP_VERSION is 'dev'
a quoted dev secret|s/^INTERNAL_TOKEN=.*/INTERNAL_TOKEN="dev-internal-token-change-me-please-000"/|INTERNAL_TOKEN is a development default
local-db without a password|s/^COMPOSE_PROFILES=.*/COMPOSE_PROFILES=local-db/|LOCAL_DB_PASSWORD is missing
withdrawal address cooldown not a number|s/^WITHDRAWAL_ADDRESS_COOLDOWN_SECS=.*/WITHDRAWAL_ADDRESS_COOLDOWN_SECS=1d/|WITHDRAWAL_ADDRESS_COOLDOWN_SECS must be a whole number
local-db without a backup passphrase|s/^COMPOSE_PROFILES=.*/COMPOSE_PROFILES=local-db/; s/^LOCAL_DB_PASSWORD=.*/LOCAL_DB_PASSWORD=7d2c4e9f1a3b5c8d0e6f2a4b9c1d3e5f7a9b0c2d/|backup.env is missing
local-db without Redis ACL passwords|s/^COMPOSE_PROFILES=.*/COMPOSE_PROFILES=local-db/|REDIS_PASSWORD_MARKETDATA is missing
TRUSTED_PROXIES the example's placeholder|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=203.0.113.10/|TRUSTED_PROXIES holds the placeholder 203.0.113.10
TRUSTED_PROXIES 10.0.0.0/8|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=10.20.30.40,10.0.0.0\/8/|FAIL +TRUSTED_PROXIES entry 10.0.0.0/8 trusts the whole private range 10.0.0.0/8
TRUSTED_PROXIES 172.16.0.0/12|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=172.16.0.0\/12/|entry 172.16.0.0/12 trusts the whole private range
TRUSTED_PROXIES 192.168.0.0/16|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=192.168.0.0\/16/|entry 192.168.0.0/16 trusts the whole private range
TRUSTED_PROXIES fc00::/7|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=fc00::\/7/|entry fc00::/7 trusts the whole private range
TRUSTED_PROXIES 0.0.0.0/0|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=0.0.0.0\/0/|entry 0.0.0.0/0 trusts every address
TRUSTED_PROXIES ::/0|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=::\/0/|entry ::/0 trusts every address
TRUSTED_PROXIES a /23|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=10.1.0.0\/23/|entry 10.1.0.0/23 trusts a range .*shorter than /24
TRUSTED_PROXIES an IPv6 /56|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=2a01:4f8:1::\/56/|entry 2a01:4f8:1::/56 trusts a range .*shorter than /64
TRUSTED_PROXIES not an address|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=lb.internal/|TRUSTED_PROXIES entry 'lb.internal' is not an IP address
DB_URL without sslmode to another host|s/?sslmode=verify-full//|FAIL +DB_URL does not require TLS to a host that is not loopback
DB_URL sslmode=prefer|s/sslmode=verify-full/sslmode=prefer/|FAIL +DB_URL does not require TLS
REDIS_URL redis:// to another host|s/^REDIS_URL=rediss/REDIS_URL=redis/|FAIL +REDIS_URL is not TLS \(rediss://\) to a host that is not loopback
REDIS_URL_ORDER redis:// to another host|$ a REDIS_URL_ORDER=redis://order:0123456789abcdef0123456789abcdef@redis.internal.test:6379/0|FAIL +REDIS_URL_ORDER is not TLS
DB_READ_URL without sslmode to another host|$ a DB_READ_URL=postgres://ro:pw@replica.internal.test:5432/exchange|FAIL +DB_READ_URL does not require TLS to a host that is not loopback
API_KEY_ENCRYPTION_KEY missing|/^API_KEY_ENCRYPTION_KEY=/d|FAIL +API_KEY_ENCRYPTION_KEY is missing
API_KEY_ENCRYPTION_KEY equal to AUTH_TOKEN_SECRET|s/^API_KEY_ENCRYPTION_KEY=.*/API_KEY_ENCRYPTION_KEY=9e4a7c1f3d8b2e6a0c5f9d3b7e1a4c8f2d6b0e9a3c7f1d5b/|FAIL +API_KEY_ENCRYPTION_KEY equals AUTH_TOKEN_SECRET
API_KEY_ENCRYPTION_KEY derived from AUTH_TOKEN_SECRET|s/^API_KEY_ENCRYPTION_KEY=.*/API_KEY_ENCRYPTION_KEY=9e4a7c1f3d8b2e6a0c5f9d3b7e1a4c8f2d6b0e9a3c7f1d5b-api/|FAIL +API_KEY_ENCRYPTION_KEY is derived from AUTH_TOKEN_SECRET
API_KEY_ENCRYPTION_KEY a dev- default|s/^API_KEY_ENCRYPTION_KEY=.*/API_KEY_ENCRYPTION_KEY=dev-api-key-encryption-key-0123456789abcdef/|FAIL +API_KEY_ENCRYPTION_KEY is a development default
API_KEY_ENCRYPTION_KEY 31 characters|s/^API_KEY_ENCRYPTION_KEY=.*/API_KEY_ENCRYPTION_KEY=0123456789abcdef0123456789abcde/|FAIL +API_KEY_ENCRYPTION_KEY is too short \(31
API_KEY_ENCRYPTION_KEY_PREVIOUS equal to the key|s/^API_KEY_ENCRYPTION_KEY_PREVIOUS=.*/API_KEY_ENCRYPTION_KEY_PREVIOUS=e1c4a7f0b3d6e9a2c5f8b1d4e7a0c3f6b9d2e5a8c1f4b7d0/|API_KEY_ENCRYPTION_KEY_PREVIOUS equals API_KEY_ENCRYPTION_KEY
an unquoted $ in DB_URL|s/db-password-for-tests/db-pa$word/|FAIL +DB_URL holds a '\$' outside single quotes
EOF
# Accepted on purpose: loopback without TLS, the two explicit opt-ins, a
# quoted $ (each with the warning it must print, if any).
while IFS='|' read -r label expr pattern; do
    [ -n "$label" ] || continue
    f="$(variant "ok_$(printf '%s' "$label" | tr -c 'a-zA-Z0-9' '_')" "$expr")"
    out="$(bash "$preflight" "$f" 2>&1)"
    rc=$?
    if [ "$rc" -eq 0 ] && { [ -z "$pattern" ] || grep -qE -- "$pattern" <<<"$out"; }; then ok "preflight accepts: $label"; else not_ok "preflight accepts: $label (exit $rc)" "$out"; fi
done <<'EOF'
plaintext to loopback (127.0.0.1, localhost, ::1)|s/@db.internal.test:5432\/exchange?sslmode=verify-full/@127.0.0.1:5432\/exchange/; s/^REDIS_URL=.*/REDIS_URL=redis:\/\/:pw@localhost:6379\/0\nREDIS_URL_ORDER=redis:\/\/order:pw@[::1]:6379\/0/|
plaintext with ALLOW_PLAINTEXT_BACKENDS=true (the local-db case)|s/?sslmode=verify-full//; s/^REDIS_URL=rediss/REDIS_URL=redis/; $ a ALLOW_PLAINTEXT_BACKENDS=true|WARN +REDIS_URL is not TLS .*allowed by ALLOW_PLAINTEXT_BACKENDS=true
a whole range with TRUSTED_PROXIES_ALLOW_RANGES=true|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=10.0.0.0\/8\nTRUSTED_PROXIES_ALLOW_RANGES=true/|WARN +TRUSTED_PROXIES entry 10.0.0.0/8 .*allowed by TRUSTED_PROXIES_ALLOW_RANGES=true
loopback proxies and a /24|s/^TRUSTED_PROXIES=.*/TRUSTED_PROXIES=127.0.0.0\/8,::1\/128,10.1.2.0\/24/|
a $ in a single-quoted DB_URL|s/^DB_URL=\(.*\)db-password-for-tests\(.*\)/DB_URL='\1p%24ss$word\2'/|
API_KEY_ENCRYPTION_KEY_PREVIOUS during a rotation|s/^API_KEY_ENCRYPTION_KEY_PREVIOUS=.*/API_KEY_ENCRYPTION_KEY_PREVIOUS=0b3e6a9d2c5f8b1e4a7d0c3f6b9e2a5d8c1f4b7e0a3d6c9f/|
EOF
out="$(bash "$preflight" deploy/prod/prod.env.example 2>&1)"
check_contains "preflight refuses prod.env.example's placeholders" "$out" "INTERNAL_TOKEN still holds the REPLACE placeholder"
out="$(bash "$preflight" "$work/does-not-exist.env" 2>&1)"
rc=$?
if [ "$rc" -eq 66 ]; then ok "preflight exits 66 on a missing env file"; else not_ok "preflight exits 66 on a missing env file (got $rc)" "$out"; fi
out="$(PROD_ENV_FILE="$fixtures/good.env" bash "$preflight" 2>&1)"
check_contains "preflight reads PROD_ENV_FILE" "$out" "good.env ok"
f="$(variant no-tls 's/?sslmode=verify-full//; s/^REDIS_URL=rediss/REDIS_URL=redis/; /^METRICS_TOKEN=/d; $ a ALLOW_PLAINTEXT_BACKENDS=true')"
out="$(bash "$preflight" "$f" 2>&1)"
rc=$?
if [ "$rc" -eq 0 ] && [ "$(grep -c WARN <<<"$out")" -eq 3 ]; then ok "preflight only warns on non-TLS URLs with ALLOW_PLAINTEXT_BACKENDS=true, and on unset METRICS_TOKEN"; else not_ok "preflight only warns on non-TLS URLs with ALLOW_PLAINTEXT_BACKENDS=true, and on unset METRICS_TOKEN (exit $rc)" "$out"; fi
mkdir -p "$work/localdb"
{
    grep -vE '^(DB_URL|REDIS_URL|COMPOSE_PROFILES|LOCAL_DB_PASSWORD)=' "$fixtures/good.env"
    # What prod.env.example says for the local-db profile.
    grep -E '^ALLOW_PLAINTEXT_BACKENDS=' deploy/prod/prod.env.example | sed 's/=.*/=true/'
    echo "COMPOSE_PROFILES=local-db"
    echo "LOCAL_DB_PASSWORD=7d2c4e9f1a3b5c8d0e6f2a4b9c1d3e5f7a9b0c2d"
    echo "DB_URL=postgres://exchange:7d2c4e9f1a3b5c8d0e6f2a4b9c1d3e5f7a9b0c2d@postgres:5432/exchange"
    echo "REDIS_URL=redis://redis:6379/0"
    for u in GATEWAY ORDER MATCHING CLEARING MARKETDATA WALLET ADMIN; do echo "REDIS_PASSWORD_$u=$(printf '%s' "$u-0123456789abcdef0123456789abcdef" | tr '[:upper:]' '[:lower:]')"; done
} >"$work/localdb/prod.env"
printf 'PGBACKREST_REPO1_CIPHER_PASS=%s\n' 0123456789abcdef0123456789abcdef01234567 >"$work/localdb/backup.env"
chmod 600 "$work/localdb/backup.env"
out="$(bash "$preflight" "$work/localdb/prod.env" 2>&1)"
rc=$?
if [ "$rc" -eq 0 ] && grep -qE 'WARN +DB_URL .*allowed by ALLOW_PLAINTEXT_BACKENDS=true' <<<"$out"; then ok "preflight accepts the local-db setup prod.env.example describes (ALLOW_PLAINTEXT_BACKENDS=true, REDIS_PASSWORD_*)"; else not_ok "preflight accepts the documented local-db setup (exit $rc)" "$out"; fi
f="$(variant short-cooldown 's/^WITHDRAWAL_ADDRESS_COOLDOWN_SECS=.*/WITHDRAWAL_ADDRESS_COOLDOWN_SECS=60/')"
out="$(bash "$preflight" "$f" 2>&1)"
rc=$?
if [ "$rc" -eq 0 ] && grep -qE 'WARN +WITHDRAWAL_ADDRESS_COOLDOWN_SECS is 60' <<<"$out"; then ok "preflight only warns on a withdrawal address cooldown under an hour"; else not_ok "preflight only warns on a withdrawal address cooldown under an hour (exit $rc)" "$out"; fi

# ---- deploy.sh -----------------------------------------------------------------------------
section "deploy.sh (dry run: no Docker engine here)"
out="$(DEPLOY_DRY_RUN=1 DOCKER_COMPOSE=docker-compose PROD_ENV_FILE="$fixtures/good.env" bash deploy/prod/deploy.sh 2>&1)"
rc=$?
if [ "$rc" -eq 0 ]; then ok "deploy.sh dry run succeeds with a good env"; else not_ok "deploy.sh dry run succeeds with a good env (exit $rc)" "$out"; fi
steps="$(grep -oE '^==> (preflight|image|migrate|start|waiting)' <<<"$out" | awk '{print $2}' | tr '\n' ' ')"
if [ "$steps" = "preflight image migrate start waiting " ]; then ok "deploy.sh runs preflight, image, migrate, up, ready in order"; else not_ok "deploy.sh runs preflight, image, migrate, up, ready in order" "got: $steps"; fi
check_contains "deploy.sh migrates with the image" "$out" '\+ docker-compose -f .*docker-compose.yml run --rm --no-deps migrate'
check_contains "deploy.sh starts the six services" "$out" '\+ docker-compose .* up -d gateway order matching clearing marketdata wallet( |$)'
out="$(APP_VERSION=0.9.0 DEPLOY_DRY_RUN=1 DOCKER_COMPOSE=docker-compose PROD_ENV_FILE="$fixtures/good.env" bash deploy/prod/deploy.sh 2>&1)"
check_contains "deploy.sh rollback: APP_VERSION from the environment wins" "$out" 'start exchange:0\.9\.0'
check_contains "deploy.sh dry run of a rollback says it never builds 0.9.0 from this checkout" "$out" 'else it refuses to build: this checkout .* is not version 0\.9\.0'
f="$(variant marketdata-public 's/^EXPOSE_MARKETDATA=.*/EXPOSE_MARKETDATA=true/')"
out="$(DEPLOY_DRY_RUN=1 DOCKER_COMPOSE=docker-compose PROD_ENV_FILE="$f" bash deploy/prod/deploy.sh 2>&1)"
check_contains "deploy.sh adds the public-marketdata file on EXPOSE_MARKETDATA=true" "$out" 'up -d .*|-f [^ ]*docker-compose.public-marketdata.yml'
f="$(variant admin-public 's/^EXPOSE_MARKETDATA=.*/ADMIN_ON_PUBLIC_PORT=true/')"
out="$(DEPLOY_DRY_RUN=1 DOCKER_COMPOSE=docker-compose PROD_ENV_FILE="$f" bash deploy/prod/deploy.sh 2>&1)"
check_contains "deploy.sh adds the admin-on-public-port file on ADMIN_ON_PUBLIC_PORT=true" "$out" 'up -d .*|-f [^ ]*docker-compose.admin-on-public-port.yml'
f="$(variant no-db '/^DB_URL=/d')"
out="$(DEPLOY_DRY_RUN=1 DOCKER_COMPOSE=docker-compose PROD_ENV_FILE="$f" bash deploy/prod/deploy.sh 2>&1)"
rc=$?
if [ "$rc" -ne 0 ] && grep -q 'FAILED at step "preflight"' <<<"$out"; then ok "deploy.sh refuses an env without DB_URL at preflight"; else not_ok "deploy.sh refuses an env without DB_URL at preflight" "$out"; fi
out="$(DEPLOY_DRY_RUN=1 DOCKER_COMPOSE=docker-compose PROD_ENV_FILE="$fixtures/dev.env" bash deploy/prod/deploy.sh 2>&1)"
rc=$?
if [ "$rc" -ne 0 ] && grep -q 'FAILED at step "preflight"' <<<"$out" && ! grep -q '^    + ' <<<"$out"; then
    ok "deploy.sh stops at preflight on the dev env and runs nothing"
else
    not_ok "deploy.sh stops at preflight on the dev env and runs nothing (exit $rc)" "$out"
fi

# Rollback never builds an old version from this checkout. A stub `docker`
# on PATH (the Docker CLI is the one thing not here) records every call and
# says whether the image exists; deploy.sh and preflight run from a scratch
# git repository holding copies of them, tagged v1.0.0 (good.env's version).
rb="$work/rollback"
mkdir -p "$rb/deploy/prod" "$rb/exchange-common/scripts" "$rb/src" "$rb/bin"
cp deploy/prod/deploy.sh deploy/prod/Dockerfile deploy/prod/docker-compose*.yml "$rb/deploy/prod/"
cp exchange-common/scripts/prod-preflight.sh "$rb/exchange-common/scripts/"
echo 'fn main() {}' >"$rb/src/main.rs"
cat >"$rb/bin/docker" <<'STUB'
#!/usr/bin/env bash
# Stub of the Docker CLI for tests/ops/run.sh: logs each call to $STUB_LOG.
printf '%s\n' "docker $*" >>"$STUB_LOG"
case "$1" in
    info | build | pull) exit 0 ;;
    image) [ "$2" = inspect ] && [ "${STUB_HAVE_IMAGE:-0}" = 1 ]; exit $? ;;
    inspect) echo healthy; exit 0 ;;
    compose)
        [ "$2" = version ] && { echo "Docker Compose version v2.29.7"; exit 0; }
        for a in "$@"; do
            case "$a" in
                exec) echo '{"status":"ok"}'; exit 0 ;;
                ps) echo stub-container-id; exit 0 ;;
            esac
        done
        exit 0
        ;;
esac
exit 0
STUB
chmod +x "$rb/bin/docker"
git -C "$rb" init -q && git -C "$rb" add -A && git -C "$rb" -c user.name=ops -c user.email=ops@test commit -qm release && git -C "$rb" tag v1.0.0
# deploy_stub HAVE_IMAGE VAR=VALUE...: runs the scratch deploy.sh (not a dry run)
deploy_stub() {
    local have="$1"
    shift
    : >"$work/docker.log"
    env PATH="$rb/bin:$PATH" STUB_LOG="$work/docker.log" STUB_HAVE_IMAGE="$have" PROD_ENV_FILE="$fixtures/good.env" \
        READY_TIMEOUT=5 "$@" bash "$rb/deploy/prod/deploy.sh" 2>&1
}
out="$(deploy_stub 0 APP_VERSION=0.9.0)"
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'FAILED at step "image"' <<<"$out" && grep -q 'is not version 0.9.0' <<<"$out" \
    && ! grep -qE '^docker (build|compose .*(up|run))' "$work/docker.log"; then
    ok "rollback to a version whose image is not here: refused at step image, nothing built or started"
else
    not_ok "rollback to a version whose image is not here is refused (exit $rc)" "$out
$(cat "$work/docker.log")"
fi
check_contains "the refusal says how: PULL=1 or check out the release" "$out" 'PULL=1 APP_VERSION=0\.9\.0 deploy/prod/deploy\.sh.*|git checkout v0\.9\.0'
out="$(deploy_stub 1 APP_VERSION=0.9.0)"
rc=$?
if [ "$rc" -eq 0 ] && grep -q 'exchange:0.9.0 exists on this host: using it' <<<"$out" && ! grep -q '^docker build' "$work/docker.log" \
    && grep -qE '^docker compose .* up -d gateway order matching clearing marketdata wallet$' "$work/docker.log"; then
    ok "rollback to a version whose image is here: uses it, builds nothing, starts the services"
else
    not_ok "rollback to a version whose image is here (exit $rc)" "$out
$(cat "$work/docker.log")"
fi
out="$(deploy_stub 1 APP_VERSION=0.9.0 FORCE_BUILD=1)"
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'FORCE_BUILD=1, but this checkout' <<<"$out" && ! grep -q '^docker build' "$work/docker.log"; then
    ok "FORCE_BUILD=1 of another version than this checkout: refused"
else
    not_ok "FORCE_BUILD=1 of another version than this checkout is refused (exit $rc)" "$out"
fi
out="$(deploy_stub 0)"
rc=$?
if [ "$rc" -eq 0 ] && grep -qE '^docker build .*--build-arg APP_VERSION=1\.0\.0 .*-t exchange:1\.0\.0 ' "$work/docker.log"; then
    ok "the checkout at tag v1.0.0 builds exchange:1.0.0"
else
    not_ok "the checkout at tag v1.0.0 builds exchange:1.0.0 (exit $rc)" "$out
$(cat "$work/docker.log")"
fi
if grep -q "^REDIS_URL_GATEWAY='rediss://:redis-password-for-tests@redis.internal.test:6380/0'$" "$rb/deploy/prod/.env" \
    && [ "$(stat -c %a "$rb/deploy/prod/.env")" = 600 ]; then
    ok "deploy.sh writes each service's Redis URL to deploy/prod/.env (mode 600, single-quoted)"
else
    not_ok "deploy.sh writes REDIS_URL_<SERVICE> to deploy/prod/.env" "$(stat -c %a "$rb/deploy/prod/.env") $(grep -c REDIS_URL_ "$rb/deploy/prod/.env")"
fi
# A value deploy/prod/.env cannot hold stops the deploy before anything
# starts, and leaves the file as it was.
f="$(variant quote-in-db-password "s/^LOCAL_DB_PASSWORD=.*/LOCAL_DB_PASSWORD=0123456789abcdef'0123456789abcdef0123/")"
before="$(cksum <"$rb/deploy/prod/.env")"
out="$(deploy_stub 1 PROD_ENV_FILE="$f")"
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'FAILED at step "image": LOCAL_DB_PASSWORD contains a single quote' <<<"$out" \
    && ! grep -qE '^docker compose .*(up|run)' "$work/docker.log" && [ "$(cksum <"$rb/deploy/prod/.env")" = "$before" ] \
    && [ ! -e "$rb/deploy/prod/.new.env" ]; then
    ok "a single quote in LOCAL_DB_PASSWORD stops deploy.sh before migrate/up; deploy/prod/.env unchanged"
else
    not_ok "a single quote in LOCAL_DB_PASSWORD stops deploy.sh (exit $rc)" "$out
$(cat "$work/docker.log")"
fi
# deploy/prod/Dockerfile makes the image: a change to it is a changed
# checkout; other deploy/ files (compose, this script) are not in the image.
echo '# a change after the release' >>"$rb/deploy/prod/Dockerfile"
out="$(deploy_stub 0)"
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'v1.0.0 with uncommitted changes) is not version 1.0.0' <<<"$out" && ! grep -q '^docker build' "$work/docker.log"; then
    ok "a checkout with an uncommitted change to deploy/prod/Dockerfile is not v1.0.0: refused"
else
    not_ok "a checkout with a changed deploy/prod/Dockerfile is refused (exit $rc)" "$out
$(cat "$work/docker.log")"
fi
git -C "$rb" checkout -q -- deploy/prod/Dockerfile
echo '# an operator note' >>"$rb/deploy/prod/docker-compose.yml"
out="$(deploy_stub 0)"
rc=$?
if [ "$rc" -eq 0 ] && grep -qE '^docker build .*-t exchange:1\.0\.0 ' "$work/docker.log"; then
    ok "a change to deploy/prod/docker-compose.yml (not in the image) still builds v1.0.0"
else
    not_ok "a change to docker-compose.yml still builds v1.0.0 (exit $rc)" "$out
$(cat "$work/docker.log")"
fi
git -C "$rb" checkout -q -- deploy/prod/docker-compose.yml
echo '// a change after the release' >>"$rb/src/main.rs"
out="$(deploy_stub 0)"
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'v1.0.0 with uncommitted changes) is not version 1.0.0' <<<"$out" && ! grep -q '^docker build' "$work/docker.log"; then
    ok "a checkout with changes to the code is not v1.0.0: refused"
else
    not_ok "a checkout with changes to the code is refused (exit $rc)" "$out"
fi
git -C "$rb" -c user.name=ops -c user.email=ops@test commit -qam 'after the release'
out="$(deploy_stub 0)"
rc=$?
if [ "$rc" -eq 1 ] && grep -qE 'this checkout \(v1\.0\.0-1-g[0-9a-f]{12}\) is not version 1\.0\.0' <<<"$out"; then
    ok "a commit after the tag is not v1.0.0: refused"
else
    not_ok "a commit after the tag is refused (exit $rc)" "$out"
fi
out="$(deploy_stub 0 APP_VERSION="$(git -C "$rb" describe --tags --always --abbrev=12 | sed 's/^v//')")"
rc=$?
if [ "$rc" -eq 0 ] && grep -qE '^docker build .*-t exchange:1\.0\.0-1-g[0-9a-f]{12} ' "$work/docker.log"; then
    ok "an untagged checkout builds under its git describe version"
else
    not_ok "an untagged checkout builds under its git describe version (exit $rc)" "$out"
fi

# ---- compose -----------------------------------------------------------------------------
section "docker compose files"
# Compose v2 reads the files as they are (`docker compose`, or a v2
# `docker-compose`, or COMPOSE_V2=/path/to/docker-compose). Debian 12 ships
# only docker-compose 1.29, which refuses two v2 keys the files use (`name:`,
# deploy.resources.limits.pids): with it, `dcv` validates a copy without
# them (--project-directory deploy/prod, -p the file's name) and the checks
# below read those keys from the YAML itself.
compose_v2=()
if [ -n "${COMPOSE_V2:-}" ]; then
    compose_v2=("$COMPOSE_V2")
elif docker compose version >/dev/null 2>&1; then
    compose_v2=(docker compose)
elif docker-compose version --short 2>/dev/null | grep -qE '^v?2\.'; then
    compose_v2=(docker-compose)
fi
if [ "${#compose_v2[@]}" -gt 0 ]; then
    echo "compose: ${compose_v2[*]} ($("${compose_v2[@]}" version --short 2>/dev/null))"
else
    echo "compose: docker-compose 1.x only (no Compose v2 here): v2-only keys checked in the YAML"
fi
v1_copy() { # v1_copy FILE -> a copy for docker-compose 1.x, its path
    local out
    out="$work/compose-v1/$(basename "$1")"
    mkdir -p "$work/compose-v1"
    "$py" - "$1" "$out" <<'PYV1'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
d.pop("name", None)
for svc in (d.get("services") or {}).values():
    lim = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    if "pids" in lim:
        svc["pids_limit"] = lim.pop("pids")
yaml.safe_dump(d, open(sys.argv[2], "w"), sort_keys=False)
PYV1
    printf '%s' "$out"
}
dcv() { # dcv [-f FILE]... ARGS: docker compose with these files
    if [ "${#compose_v2[@]}" -gt 0 ]; then
        "${compose_v2[@]}" "$@"
        return
    fi
    local args=() name=""
    while [ "$#" -gt 0 ]; do
        case "$1" in
            -f)
                [ -n "$name" ] || name="$("$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get("name", ""))' "$2")"
                args+=(-f "$(v1_copy "$2")")
                shift 2
                ;;
            *) args+=("$1"); shift ;;
        esac
    done
    docker-compose ${name:+-p "$name"} --project-directory "$root/deploy/prod" "${args[@]}"
}
redis_url_env=()
for u in GATEWAY ORDER MATCHING CLEARING MARKETDATA WALLET ADMIN; do
    redis_url_env+=("REDIS_URL_$u=redis://$(printf '%s' "$u" | tr '[:upper:]' '[:lower:]'):test-password@redis:6379/0")
done
# export_compose_env [VAR=VALUE]... CMD...: CMD (a function too) with the
# variables deploy.sh would export.
export_compose_env() {
    (
        export APP_VERSION=1.0.0 PROD_ENV_FILE="$fixtures/good.env" BACKUP_ENV_FILE="$root/deploy/prod/backup.env.example" "${redis_url_env[@]}"
        while [[ "${1:-}" == *=* ]]; do export "${1?}"; shift; done
        "$@"
    )
}
dc=(dcv -f deploy/prod/docker-compose.yml)
check "docker-compose.yml validates (config -q)" export_compose_env "${dc[@]}" config -q
check "docker-compose.yml + public-marketdata validates" export_compose_env "${dc[@]}" -f deploy/prod/docker-compose.public-marketdata.yml config -q
check "docker-compose.yml + admin-on-public-port validates" export_compose_env "${dc[@]}" -f deploy/prod/docker-compose.admin-on-public-port.yml config -q
check "docker-compose.yml with the local-db profile validates" export_compose_env COMPOSE_PROFILES=local-db LOCAL_DB_PASSWORD=x "${dc[@]}" config -q
check "docker-compose.yml with the tools profile (migrate, admin) validates" export_compose_env COMPOSE_PROFILES=tools "${dc[@]}" config -q
out="$(PROD_ENV_FILE="$fixtures/good.env" "${dc[@]}" config -q 2>&1)"
rc=$?
if [ "$rc" -ne 0 ] && grep -q 'APP_VERSION' <<<"$out"; then ok "docker-compose.yml refuses to run without APP_VERSION"; else not_ok "docker-compose.yml refuses to run without APP_VERSION" "$out"; fi
out="$(APP_VERSION=1.0.0 PROD_ENV_FILE="$fixtures/good.env" BACKUP_ENV_FILE="$root/deploy/prod/backup.env.example" "${dc[@]}" config -q 2>&1)"
rc=$?
if [ "$rc" -ne 0 ] && grep -q 'REDIS_URL_' <<<"$out"; then ok "docker-compose.yml refuses to run without each service's REDIS_URL_<SERVICE> (deploy.sh writes them)"; else not_ok "docker-compose.yml refuses to run without REDIS_URL_<SERVICE>" "$out"; fi
printf 'GRAFANA_ADMIN_PASSWORD=ops-test-password\n' >"$work/monitoring.env"
dm=(dcv --env-file "$work/monitoring.env" -f deploy/prod/docker-compose.monitoring.yml)
check "docker-compose.monitoring.yml validates (dummy monitoring.env)" "${dm[@]}" config -q
check "docker-compose.monitoring.yml + ports file validates" "${dm[@]}" -f deploy/prod/docker-compose.monitoring.ports.yml config -q
: >"$work/empty.env"
out="$(dcv --env-file "$work/empty.env" -f deploy/prod/docker-compose.monitoring.yml config -q 2>&1)"
check_contains "monitoring refuses to start without GRAFANA_ADMIN_PASSWORD" "$out" 'GRAFANA_ADMIN_PASSWORD'

# The project names are fixed in the files, so `docker compose -f
# deploy/prod/docker-compose.yml ps|logs` (no -p, from any directory) see
# the stack deploy.sh started, and monitoring is a project of its own.
out="$("$py" - deploy/prod/docker-compose.yml deploy/prod/docker-compose.monitoring.yml <<'PY' 2>&1
import sys, yaml
base, mon = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
problems = []
if base.get("name") != "exchange": problems.append(f"docker-compose.yml name: {base.get('name')!r}, want 'exchange'")
if mon.get("name") != "exchange-monitoring": problems.append(f"docker-compose.monitoring.yml name: {mon.get('name')!r}, want 'exchange-monitoring'")
for n, svc in base["services"].items():
    if "build" in svc and str(svc.get("image", "")).startswith("${EXCHANGE_IMAGE"):
        problems.append(f"{n}: an exchange service with a build: section (compose could build an old tag from this checkout)")
    if "pids_limit" in svc: problems.append(f"{n}: pids_limit (Compose v2 refuses it beside deploy.resources.limits: use limits.pids)")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
)"
rc=$?
if [ "$rc" -eq 0 ]; then ok "compose files fix the project names (exchange, exchange-monitoring); no exchange service can be built by compose"; else not_ok "compose project names / build sections" "$out"; fi
if [ "${#compose_v2[@]}" -gt 0 ]; then
    # From another directory, without -p: the name comes from the file.
    out="$(cd "$work" && export_compose_env "${compose_v2[@]}" -f "$root/deploy/prod/docker-compose.yml" config 2>&1 | head -n 1)"
    check_contains "docker compose -f deploy/prod/docker-compose.yml config: project exchange (v2, no -p)" "$out" '^name: exchange$'
    out="$(cd "$work" && "${compose_v2[@]}" --env-file "$work/monitoring.env" -f "$root/deploy/prod/docker-compose.monitoring.yml" config 2>&1 | head -n 1)"
    check_contains "docker compose -f docker-compose.monitoring.yml config: project exchange-monitoring (v2, no -p)" "$out" '^name: exchange-monitoring$'
fi
check "RUNBOOK, README and compose comments pass no other project name (-p) and no docker-compose 1.x command" bash -c '
    bad=$(grep -nE "docker[ -]compose [^|#]*-p |docker-compose (-f|--env-file|-p|run|up|ps|logs)" docs/RUNBOOK.md README.md deploy/prod/*.yml deploy/prod/*.sh deploy/prod/*.example deploy/systemd/README.md || true)
    [ -z "$bad" ] || { echo "$bad"; exit 1; }'

out="$("$py" - docs/RUNBOOK.md <<'PY' 2>&1
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
problems = []
mon = text[text.index("## Monitoring\n"):text.index("### Metrics token")]
token, up = mon.find("> deploy/prod/metrics.token"), mon.find("docker-compose.monitoring.yml up -d")
if token < 0 or up < 0 or token > up: problems.append("Monitoring: metrics.token is not created before the first monitoring `up`")
if "chown 65534:65534 deploy/prod/metrics.token" not in mon or "chmod 0400 deploy/prod/metrics.token" not in mon:
    problems.append("Monitoring: metrics.token is not given to uid 65534, mode 0400")
for line in text.splitlines():
    if re.search(r"curl .*?/metrics", line) and "Authorization: Bearer" not in line:
        problems.append(f"a curl of /metrics without the bearer header: {line.strip()}")
if "docker run --rm -v \"$(pwd)/exchange-common:/work\"" not in text or " -e DB_URL " not in text or "export DB_URL='" not in text:
    problems.append("the throwaway-container migration (export DB_URL='...', docker run ... -e DB_URL) is missing")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
)"
rc=$?
if [ "$rc" -eq 0 ]; then ok "RUNBOOK: metrics.token (uid 65534, 0400) before the first monitoring up; every curl of /metrics sends the bearer token; the migrate container's quoting"; else not_ok "RUNBOOK monitoring/metrics/migrate commands" "$out"; fi

export_compose_env "${dc[@]}" config >"$work/compose.yml" 2>/dev/null
export_compose_env "${dc[@]}" -f deploy/prod/docker-compose.public-marketdata.yml config >"$work/compose-md.yml" 2>/dev/null
"${dm[@]}" config >"$work/monitoring.yml" 2>/dev/null
out="$("$py" - "$work/compose.yml" "$work/compose-md.yml" "$work/monitoring.yml" <<'PY' 2>&1
import sys, yaml
base, md, mon = (yaml.safe_load(open(p)) for p in sys.argv[1:4])
problems = []
services = {"gateway": 8080, "order": 8091, "matching": 8092, "clearing": 8093, "marketdata": 8094, "wallet": 8095}
s = base["services"]
for name, port in services.items():
    svc = s.get(name)
    if not svc:
        problems.append(f"service {name} missing"); continue
    if svc.get("image") != "exchange:1.0.0": problems.append(f"{name}: image {svc.get('image')} is not exchange:1.0.0")
    if svc.get("command") != [name]: problems.append(f"{name}: command {svc.get('command')} is not [{name}]")
    test = " ".join(svc.get("healthcheck", {}).get("test", []))
    if f"http://127.0.0.1:{port}/ready" not in test: problems.append(f"{name}: healthcheck does not curl :{port}/ready ({test})")
    if svc.get("restart") != "unless-stopped": problems.append(f"{name}: restart policy {svc.get('restart')}")
    lim = svc.get("deploy", {}).get("resources", {}).get("limits", {})
    if not lim.get("memory") or not lim.get("cpus"): problems.append(f"{name}: no cpu/memory limits")
    if not lim.get("pids") and not svc.get("pids_limit"): problems.append(f"{name}: no pids limit")
    log = svc.get("logging", {})
    if log.get("driver") != "json-file" or "max-size" not in log.get("options", {}) or "max-file" not in log.get("options", {}):
        problems.append(f"{name}: no json-file log rotation")
    env = svc.get("environment", {})
    if env.get("APP_ENV") != "prod": problems.append(f"{name}: env_file not applied (APP_ENV={env.get('APP_ENV')})")
    if svc.get("user") not in (None, "", "10001:10001"): problems.append(f"{name}: runs as {svc.get('user')}")
published = sorted(n for n, v in s.items() if v.get("ports"))
if published != ["gateway"]: problems.append(f"services publishing ports by default: {published} (only gateway may)")
gw_ports = sorted(str(p.get("target") if isinstance(p, dict) else p) for p in s["gateway"].get("ports", []))
for name in services:
    if s.get(name, {}).get("environment", {}).get("REDIS_URL") != f"redis://{name}:test-password@redis:6379/0":
        problems.append(f"{name}: REDIS_URL is not its own REDIS_URL_{name.upper()} ({s.get(name, {}).get('environment', {}).get('REDIS_URL')})")
if not all(any(str(t) in str(p) for p in s["gateway"]["ports"]) for t in (8080, 8090)): problems.append(f"gateway ports {s['gateway'].get('ports')} lack 8080/8090")
if s["gateway"]["environment"].get("ORDER_SERVICE_URL") != "http://order:8091": problems.append("gateway ORDER_SERVICE_URL is not http://order:8091")
if s["gateway"]["environment"].get("WALLET_SERVICE_URL") != "http://wallet:8095": problems.append("gateway WALLET_SERVICE_URL is not http://wallet:8095")
wallet = s.get("wallet", {})
if wallet.get("environment", {}).get("WALLET_HTTP_ADDR") != "0.0.0.0:8095": problems.append("wallet WALLET_HTTP_ADDR is not 0.0.0.0:8095")
if "8095" not in [str(p) for p in wallet.get("expose", [])]: problems.append(f"wallet does not expose 8095: {wallet.get('expose')}")
if s["gateway"]["environment"].get("ADMIN_HTTP_ADDR") != "0.0.0.0:8081": problems.append("gateway does not serve the admin API on its own listener (ADMIN_HTTP_ADDR)")
if not any("127.0.0.1" in str(p) and "8081" in str(p) for p in s["gateway"]["ports"]): problems.append(f"gateway does not publish the admin port 8081 on loopback: {s['gateway']['ports']}")
raw = yaml.safe_load(open("deploy/prod/docker-compose.yml"))["services"]  # v2 leaves inactive profiles out
for extra, profile in (("postgres", "local-db"), ("redis", "local-db"), ("migrate", "tools"), ("admin", "tools")):
    if raw.get(extra, {}).get("profiles") != [profile]: problems.append(f"{extra} is not limited to profile {profile}")
if base.get("networks", {}).get("default", {}).get("name") != "exchange-prod-net": problems.append("network is not exchange-prod-net")
md_published = sorted(n for n, v in md["services"].items() if v.get("ports"))
if md_published != ["gateway", "marketdata"]: problems.append(f"with the opt-in file, publishing: {md_published}")
if "8094" not in str(md["services"]["marketdata"]["ports"]): problems.append("opt-in does not publish 8094")
ms = mon["services"]
for name in ("prometheus", "grafana"):
    if name not in ms: problems.append(f"monitoring: {name} missing")
    elif ms[name].get("ports"): problems.append(f"monitoring: {name} publishes ports by default")
net = mon.get("networks", {}).get("exchange-prod-net", {})
if not net.get("external") or net.get("name") != "exchange-prod-net": problems.append(f"monitoring does not join external exchange-prod-net: {net}")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
)"
rc=$?
if [ "$rc" -eq 0 ]; then ok "compose: six services from one image, /ready healthchecks, limits, log rotation, only gateway published, external network for monitoring"; else not_ok "compose structure" "$out"; fi
# Each exchange container holds only its own Redis credential: prod.env
# (env_file) has every service's REDIS_URL_<SERVICE> and REDIS_PASSWORD_<USER>;
# the services' `environment:` blanks them. The env file and the interpolation
# carry a distinct password per user; no service's resolved environment may
# hold another user's.
{
    grep -vE '^(REDIS_URL|COMPOSE_PROFILES)' "$fixtures/good.env"
    for u in GATEWAY ORDER MATCHING CLEARING MARKETDATA WALLET ADMIN; do
        l="$(printf '%s' "$u" | tr '[:upper:]' '[:lower:]')"
        echo "REDIS_PASSWORD_$u=pw-of-$l-0123456789abcdef0123456789abcdef"
        echo "REDIS_URL_$u=rediss://$l:url-pw-of-$l-0123456789abcdef@redis.internal.test:6380/0"
    done
    echo "REDIS_URL=redis://redis:6379/0"
} >"$work/isolation.env"
iso_env=(PROD_ENV_FILE="$work/isolation.env" "COMPOSE_PROFILES=tools,local-db" LOCAL_DB_PASSWORD=x)
for u in GATEWAY ORDER MATCHING CLEARING MARKETDATA WALLET ADMIN; do
    iso_env+=("REDIS_URL_$u=$(sed -n "s/^REDIS_URL_$u=//p" "$work/isolation.env")" "REDIS_PASSWORD_$u=$(sed -n "s/^REDIS_PASSWORD_$u=//p" "$work/isolation.env")")
done
export_compose_env "${iso_env[@]}" "${dc[@]}" -f deploy/prod/docker-compose.public-marketdata.yml config >"$work/compose-iso.yml" 2>"$work/compose-iso.err"
out="$("$py" - "$work/compose-iso.yml" <<'PY' 2>&1
import sys, yaml
s = yaml.safe_load(open(sys.argv[1]))["services"]
users = ["gateway", "order", "matching", "clearing", "marketdata", "wallet", "admin"]
secret = {u: (f"pw-of-{u}-", f"url-pw-of-{u}-") for u in users}
problems = []
for name in users + ["migrate"]:
    if name not in s:
        problems.append(f"service {name} missing from the config output"); continue
    env = s[name].get("environment") or {}
    if env.get("APP_ENV") != "prod": problems.append(f"{name}: env_file not applied")
    for key, value in env.items():
        for other in users:
            if other != name and any(t in str(value) for t in secret[other]):
                problems.append(f"{name}: {key} holds the Redis credential of {other}")
    if name != "migrate" and f"url-pw-of-{name}-" not in str(env.get("REDIS_URL")):
        problems.append(f"{name}: REDIS_URL is not its own ({env.get('REDIS_URL')})")
redis_env = s.get("redis", {}).get("environment") or {}
if any(f"pw-of-{u}-" not in str(redis_env.get(f"REDIS_PASSWORD_{u.upper()}")) for u in users):
    problems.append("the redis container lacks a REDIS_PASSWORD_<USER> (it writes the ACL file from them)")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
)"
rc=$?
if [ "$rc" -eq 0 ]; then ok "compose: each exchange container (marketdata on its public port too) holds only its own Redis credential, not another service's REDIS_URL_*/REDIS_PASSWORD_*"; else not_ok "compose: a container holds another service's Redis credential" "$out
$(cat "$work/compose-iso.err")"; fi
# A reverse proxy on the host reaches the published ports through Docker's
# forwarding: the RUNBOOK's command for the address to trust names the
# network the compose file really creates.
out="$("$py" - deploy/prod/docker-compose.yml docs/RUNBOOK.md <<'PY' 2>&1
import re, sys, yaml
net = yaml.safe_load(open(sys.argv[1]))["networks"]["default"]["name"]
text = open(sys.argv[2], encoding="utf-8").read()
cmds = re.findall(r"docker network inspect (\S+) -f '\{\{\(index \.IPAM\.Config 0\)\.Gateway\}\}'", text)
problems = []
if not cmds: problems.append("RUNBOOK: no `docker network inspect <net> -f '{{(index .IPAM.Config 0).Gateway}}'` for TRUSTED_PROXIES behind a local proxy")
problems += [f"RUNBOOK inspects network {c}, the compose file creates {net}" for c in cmds if c != net]
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
)"
rc=$?
if [ "$rc" -eq 0 ]; then ok "RUNBOOK: a local proxy in front of compose is trusted by the compose network's gateway address (the network docker-compose.yml names)"; else not_ok "RUNBOOK: TRUSTED_PROXIES for a local proxy in front of compose" "$out"; fi
# The services refuse a client key not mode 0600/0400 or not owned by their
# uid: every RUNBOOK line that puts one in deploy/prod/certs gives it to the
# image's user (the Dockerfile's USER), and installing it that way works.
out="$("$py" - docs/RUNBOOK.md deploy/prod/Dockerfile <<'PY' 2>&1
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
uid = re.search(r"^USER (\d+)", open(sys.argv[2]).read(), re.M).group(1)
problems = []
lines = [l for l in text.splitlines() if re.search(r"deploy/prod/certs/\S*\.key", l) and not l.lstrip().startswith(("|", "#"))]
if not lines: problems.append("RUNBOOK: no command installs the Redis client key in deploy/prod/certs")
for l in lines:
    if not re.search(rf"install -m 0?[46]00 -o {uid} -g {uid} ", l): problems.append(f"not installed mode 0600/0400 owned by uid {uid}: {l.strip()}")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
)"
rc=$?
if [ "$rc" -eq 0 ]; then ok "RUNBOOK: the Redis client key goes into deploy/prod/certs mode 0600, owned by the image's uid"; else not_ok "RUNBOOK: the Redis client key's install" "$out"; fi
echo key >"$work/client.key"
if [ "$(id -u)" -eq 0 ]; then
    check "install -m 0600 -o 10001 -g 10001 (the RUNBOOK's) gives the key to uid 10001, mode 600" bash -c '
        install -m 0600 -o 10001 -g 10001 "$1" "$1.installed" && [ "$(stat -c "%a %u" "$1.installed")" = "600 10001" ]' sh "$work/client.key"
fi
check "Dockerfile: multi-stage, non-root, APP_VERSION label" bash -c '
    f=deploy/prod/Dockerfile
    grep -q "^FROM rust:\${RUST_VERSION}-\${DEBIAN_RELEASE} AS builder" $f &&
    grep -q "^FROM debian:\${DEBIAN_RELEASE}-slim" $f &&
    grep -q "^USER 10001" $f &&
    grep -q "org.opencontainers.image.version=\"\${APP_VERSION}\"" $f &&
    grep -q "cargo build --release --locked -p exchange" $f &&
    grep -q "ca-certificates curl" $f'
check ".dockerignore keeps target/, .git and env files out of the build context" bash -c '
    for p in target .git .local "**/*.env" "**/metrics.token"; do grep -qxF -- "$p" .dockerignore || { echo "missing $p"; exit 1; }; done'
check "deploy/prod/.gitignore covers prod.env, monitoring.env, metrics.token" bash -c '
    for f in prod.env monitoring.env metrics.token .env; do git check-ignore -q "deploy/prod/$f" || { echo "$f not ignored"; exit 1; }; done
    ! git check-ignore -q deploy/prod/prod.env.example'

# ---- prometheus and alerts ------------------------------------------------------------------------
section "Prometheus config and alerts"
check "promtool check config deploy/prod/prometheus.yml" promtool check config deploy/prod/prometheus.yml
check "promtool check rules deploy/prod/alerts.yml" promtool check rules deploy/prod/alerts.yml
check "promtool test rules deploy/prod/alerts.test.yml" promtool test rules deploy/prod/alerts.test.yml
out="$("$py" - deploy/prod/prometheus.yml deploy/prod/alerts.yml deploy/prod/alerts.test.yml docs/RUNBOOK.md <<'PY' 2>&1
import re, sys, yaml
prom, alerts, tests, runbook = sys.argv[1:5]
problems = []
cfg = yaml.safe_load(open(prom))
jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
want = {"gateway": "gateway:8080", "order": "order:8091", "matching": "matching:8092", "clearing": "clearing:8093", "marketdata": "marketdata:8094", "wallet": "wallet:8095"}
for job, target in want.items():
    if job not in jobs: problems.append(f"prometheus.yml does not scrape job {job}"); continue
    targets = [t for sc in jobs[job].get("static_configs", []) for t in sc.get("targets", [])]
    if target not in targets: problems.append(f"job {job} targets {targets}, want {target}")
text = open(prom).read()
if text.count("# bearer_token_file: /etc/prometheus/metrics.token") < len(want):
    problems.append("a commented bearer_token_file: /etc/prometheus/metrics.token per service job is missing")
# GitHub heading anchors of the runbook.
anchors = set()
for line in open(runbook, encoding="utf-8"):
    m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if m:
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        anchors.add(slug)
    for a in re.findall(r'<a (?:id|name)="([^"]+)"', line):
        anchors.add(a)
rules = [r for g in yaml.safe_load(open(alerts))["groups"] for r in g["rules"] if "alert" in r]
tested = {}
for t in yaml.safe_load(open(tests))["tests"]:
    for a in t.get("alert_rule_test", []):
        tested.setdefault(a["alertname"], set()).add("fires" if a.get("exp_alerts") else "silent")
required = ["service down", "ready", "consumer", "dlq", "lag", "pending", "error", "latency", "reconcile", "halted"]
names = " ".join(r["alert"].lower() for r in rules)
for word, hit in (("servicedown", "service down"), ("notready", "ready"), ("consumerdown", "consumer"), ("dlq", "dlq"),
                  ("lag", "lag"), ("pending", "pending"), ("errorrate", "error"), ("latency", "latency"),
                  ("reconcilefailed", "reconcile"), ("halted", "halted")):
    if word not in names: problems.append(f"no alert for {hit}")
for r in rules:
    name = r["alert"]
    url = r.get("annotations", {}).get("runbook_url", "")
    m = re.fullmatch(r"docs/RUNBOOK\.md#([a-z0-9\-]+)", url)
    if not m: problems.append(f"{name}: runbook_url {url!r} is not docs/RUNBOOK.md#anchor")
    elif m.group(1) not in anchors: problems.append(f"{name}: anchor #{m.group(1)} is not a heading in docs/RUNBOOK.md")
    if not r.get("labels", {}).get("severity"): problems.append(f"{name}: no severity label")
    if tested.get(name) != {"fires", "silent"}: problems.append(f"{name}: alerts.test.yml must test it firing and silent (has {sorted(tested.get(name, []))})")
print("\n".join(problems) if problems else f"{len(rules)} alerts, each tested firing and silent, each runbook anchor present")
sys.exit(1 if problems else 0)
PY
)"
rc=$?
if [ "$rc" -eq 0 ]; then ok "prometheus.yml scrapes every service; every alert is unit-tested both ways and links an existing runbook anchor"; else not_ok "scrape jobs / alert tests / runbook anchors" "$out"; fi

# ---- scripts ------------------------------------------------------------------------------------------
section "shell scripts (git ls-files '*.sh')"
mapfile -t scripts < <(git ls-files '*.sh')
for s in "${scripts[@]}"; do
    check "shellcheck $s" shellcheck -x "$s"
done
[ "${#scripts[@]}" -gt 0 ] || not_ok "no *.sh tracked by git"

section "yamllint"
check "yamllint deploy/prod and provisioning" yamllint -c "$here/yamllint.yml" \
    deploy/prod/docker-compose.yml deploy/prod/docker-compose.public-marketdata.yml \
    deploy/prod/docker-compose.admin-on-public-port.yml \
    deploy/prod/docker-compose.monitoring.yml deploy/prod/docker-compose.monitoring.ports.yml \
    deploy/prod/prometheus.yml deploy/prod/alerts.yml deploy/prod/alerts.test.yml \
    deploy/prod/grafana/provisioning/datasources/prometheus.yml deploy/prod/grafana/provisioning/dashboards/exchange.yml

# ---- systemd ------------------------------------------------------------------------------------------
section "systemd units"
if command -v systemd-analyze >/dev/null 2>&1; then
    check "systemd-analyze verify exchange@.service" bash -c '
        d=$(mktemp -d); cp deploy/systemd/exchange@.service "$d/"; printf "#!/bin/sh\n" >"$d/exchange"
        sed -i "s#/usr/local/bin/exchange#$d/exchange#" "$d/exchange@.service"; chmod +x "$d/exchange"
        out=$(systemd-analyze verify "$d/exchange@.service" 2>&1 | grep -v -e "Failed to connect" -e "not found" -e "^$" -e "exchange.target" || true); rm -rf "$d"
        [ -z "$out" ] || { echo "$out"; exit 1; }'
    check "systemd-analyze verify the backup service and its two timers" bash -c '
        d=$(mktemp -d); cp deploy/systemd/exchange-backup@.service deploy/systemd/exchange-backup-*.timer "$d/"
        # pgBackRest lives on the database host, not here: a stub stands in for its binary.
        printf "#!/bin/sh\n" >"$d/pgbackrest"; chmod +x "$d/pgbackrest"
        sed -i "s#/usr/bin/pgbackrest#$d/pgbackrest#" "$d/exchange-backup@.service"
        out=$(systemd-analyze verify "$d/exchange-backup@.service" "$d/exchange-backup-full.timer" "$d/exchange-backup-diff.timer" 2>&1 |
            grep -v -e "Failed to connect" -e "not found" -e "^$" || true); rm -rf "$d"
        [ -z "$out" ] || { echo "$out"; exit 1; }'
fi
check "systemd template runs the binary with an EnvironmentFile, hardening and Restart=on-failure" bash -c '
    u=deploy/systemd/exchange@.service
    for k in "ExecStart=/usr/local/bin/exchange %i" "EnvironmentFile=/etc/exchange/prod.env" "Restart=on-failure" \
             "User=exchange" "NoNewPrivileges=yes" "ProtectSystem=strict" "ProtectHome=yes" "PrivateTmp=yes" "CapabilityBoundingSet=" "KillSignal=SIGTERM"; do
        grep -qxF -- "$k" "$u" || { echo "missing: $k"; exit 1; }
    done'

# ---- grafana --------------------------------------------------------------------------------------------
section "Grafana dashboard"
dash=deploy/prod/grafana/dashboards/exchange.json
check "dashboard JSON parses (jq)" jq -e . "$dash"
check "every panel has a query" jq -e '
    [.panels[] | select(.type != "row")] as $p
    | ($p | length) > 0 and all($p[]; ((.targets // []) | length) > 0 and all(.targets[]; (.expr // "") | length > 0))' "$dash"
check "dashboard uses the provisioned datasource uid" bash -c '
    grep -q "uid: prometheus" deploy/prod/grafana/provisioning/datasources/prometheus.yml &&
    jq -e "[.panels[] | select(.type != \"row\") | .datasource.uid] | all(. == \"prometheus\")" '"$dash"
exprs="$(jq -r '.panels[] | select(.type != "row") | .targets[].expr' "$dash")"
for want in http_requests_total 'status=~\\"5\.\.\\"|status=~"5\.\."' http_request_duration_seconds_bucket exchange_orders_accepted_total \
    exchange_trades_total exchange_stream_lag exchange_stream_pending exchange_stream_dlq_length exchange_consumer_up exchange_ws_connections; do
    check_contains "dashboard has a panel on $want" "$exprs" "$want"
done

# Runs every panel's query against a real Prometheus server scraping TARGETS.
# prom_queries MODE TARGET...   MODE=strict: each query must return data.
prom_queries() {
    local mode="$1" prom_port dir i expr q res status n empty=0 token_line=""
    shift
    dir="$work/prom-$mode"
    mkdir -p "$dir/data"
    prom_port="$(free_port)"
    if [ -n "${METRICS_TOKEN:-}" ]; then
        printf '%s' "$METRICS_TOKEN" >"$dir/metrics.token"
        token_line="    bearer_token_file: $dir/metrics.token"
    fi
    cp deploy/prod/alerts.yml "$dir/alerts.yml"
    {
        printf 'global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nscrape_configs:\n'
        for t in "$@"; do
            printf '  - job_name: %s\n%s\n    static_configs:\n      - targets: ["%s"]\n' "${t%%=*}" "$token_line" "${t#*=}"
        done
    } >"$dir/prometheus.yml"
    prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
        --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$dir/prometheus.log" 2>&1 &
    bg_pids+=("$!")
    local api="http://127.0.0.1:$prom_port/api/v1"
    for _ in $(seq 60); do
        n="$(curl -fsS "$api/query" --data-urlencode 'query=count(up == 1) and count(count_over_time(up[1m]) >= 4)' 2>/dev/null | jq -r '.data.result[0].value[1] // 0' 2>/dev/null)"
        [ "${n:-0}" -ge "$#" ] && break
        sleep 0.5
    done
    check "Prometheus ($mode) scrapes all $# targets" test "${n:-0}" -ge "$#" || { tail -n 20 "$dir/prometheus.log"; return 0; }
    i=0
    while IFS= read -r expr; do
        [ -n "$expr" ] || continue
        i=$((i + 1))
        q="${expr//\$__rate_interval/1m}"
        res="$(curl -sS "$api/query" --data-urlencode "query=$q")"
        status="$(jq -r '.status' <<<"$res" 2>/dev/null)"
        n="$(jq -r '.data.result | length' <<<"$res" 2>/dev/null)"
        if [ "$status" != success ]; then
            not_ok "panel query $i runs ($mode): $expr" "$res"
        elif [ "${n:-0}" -eq 0 ] && [ "$mode" = strict ]; then
            not_ok "panel query $i returns data ($mode): $expr" "$res"
        else
            [ "${n:-0}" -eq 0 ] && empty=$((empty + 1))
            ok "panel query $i runs ($mode, $n series): ${expr:0:90}"
        fi
    done <<<"$exprs"
    [ "$empty" -gt 0 ] && echo "      ($empty queries had no data yet: those metrics appear once the services see traffic)"
    res="$(curl -sS "$api/rules")"
    check "alert rules evaluate without errors in Prometheus ($mode)" \
        jq -e '[.data.groups[].rules[] | .health] | length > 0 and all(. == "ok" or . == "unknown")' <<<"$res"
}
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Fixture targets: a static file with every contract metric, one target per job.
mkdir -p "$work/metrics-srv"
cp "$fixtures/metrics.prom" "$work/metrics-srv/metrics"
check "promtool check metrics on the contract fixture" bash -c 'promtool check metrics <"$1"' _ "$fixtures/metrics.prom"
srv_port="$(free_port)"
(cd "$work/metrics-srv" && exec "$py" -m http.server "$srv_port" --bind 127.0.0.1) >/dev/null 2>&1 &
bg_pids+=("$!")
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$srv_port/metrics" >/dev/null 2>&1 && break; sleep 0.1; done
prom_queries strict "gateway=127.0.0.1:$srv_port" "order=127.0.0.1:$srv_port" "matching=127.0.0.1:$srv_port" \
    "clearing=127.0.0.1:$srv_port" "marketdata=127.0.0.1:$srv_port" "wallet=127.0.0.1:$srv_port"

# ---- migrations ---------------------------------------------------------------------------------------------
# migrate.sh (what an operator runs with psql) twice on an empty database: the
# second run changes nothing; `exchange migrate` then agrees nothing is pending.
section "migrations (exchange-common/scripts/migrate.sh)"
if [ -n "${DB_URL:-}" ] && command -v psql >/dev/null 2>&1; then
    mig_db="ops_migrate_$$"
    psql "$DB_URL" -X -q -c "DROP DATABASE IF EXISTS $mig_db" -c "CREATE DATABASE $mig_db" >/dev/null 2>&1
    mig_url="${DB_URL%/*}/$mig_db"
    n_files=$(find exchange-common/migrations -name '*.sql' | wc -l)
    out="$(DB_URL="$mig_url" bash exchange-common/scripts/migrate.sh 2>&1)"
    check_contains "migrate.sh applies every migration to an empty database" "$out" "done, $n_files applied, 0 already present"
    schema_before="$(psql "$mig_url" -X -At -c "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'")"
    out="$(DB_URL="$mig_url" bash exchange-common/scripts/migrate.sh 2>&1)"
    check_contains "migrate.sh run again applies nothing" "$out" "done, 0 applied, $n_files already present"
    schema_after="$(psql "$mig_url" -X -At -c "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'")"
    if [ "$schema_before" = "$schema_after" ]; then ok "the second run left the schema unchanged"; else not_ok "the second run changed the schema" "$schema_before -> $schema_after"; fi
    mig_bin="${EXCHANGE_BIN:-target/debug/exchange}"
    if [ -x "$mig_bin" ]; then
        out="$(DB_URL="$mig_url" "$mig_bin" migrate 2>&1)"
        check_contains "exchange migrate agrees: nothing pending after migrate.sh" "$out" "done, 0 applied, $n_files already present"
    fi
    out="$(DB_URL="postgres://nobody@127.0.0.1:1/none" bash exchange-common/scripts/migrate.sh 2>&1)"
    rc=$?
    if [ "$rc" -ne 0 ] && grep -q 'cannot reach the database' <<<"$out"; then ok "migrate.sh fails clearly on an unreachable database"; else not_ok "migrate.sh on an unreachable database (exit $rc)" "$out"; fi
    psql "$DB_URL" -X -q -c "DROP DATABASE IF EXISTS $mig_db" >/dev/null
    # The RUNBOOK's throwaway-container migration hands DB_URL over with
    # `-e DB_URL` (no value: docker copies it from the caller's environment)
    # and runs `sh -lc "... bash scripts/migrate.sh"`. Here the same `sh -lc`
    # (without the container), with a URL whose role and database names hold
    # `$` and `&` (raw and percent-encoded) and whose query has several `&`
    # parameters: a shell expansion or word splitting anywhere would change
    # the database, the owner or the schema the tables land in.
    mq_role='ops$mq&'"$$"
    mq_db='ops$mq&db'"$$"
    mq_pass='p$ss&w0rd'
    psql "$DB_URL" -X -q -v ON_ERROR_STOP=1 -v role="$mq_role" -v db="$mq_db" -v pass="$mq_pass" <<'SQL' >/dev/null 2>&1
DROP DATABASE IF EXISTS :"db";
DROP ROLE IF EXISTS :"role";
CREATE ROLE :"role" LOGIN PASSWORD :'pass';
CREATE DATABASE :"db" OWNER :"role";
SQL
    mq_admin_url="${DB_URL%/*}/$(printf '%s' "$mq_db" | sed 's/\$/%24/g; s/&/%26/g')"
    psql "$mq_admin_url" -X -q -v role="$mq_role" -c 'SET ROLE NONE' -c "CREATE SCHEMA mq_schema AUTHORIZATION \"$mq_role\"" >/dev/null 2>&1
    mq_hostport="${DB_URL#*://}"
    mq_hostport="${mq_hostport#*@}"
    mq_hostport="${mq_hostport%%/*}"
    # As an operator exports it: single quotes, nothing expanded.
    mq_url='postgres://ops%24mq%26'"$$"':p%24ss%26w0rd@'"$mq_hostport"'/ops$mq&db'"$$"'?sslmode=prefer&options=-csearch_path%3Dmq_schema&application_name=x'
    out="$(cd exchange-common && env DB_URL="$mq_url" sh -lc "command -v bash >/dev/null && bash scripts/migrate.sh" 2>&1)"
    check_contains "the RUNBOOK's migrate command (sh -lc, DB_URL with \$ and & in names, &options=...&application_name=x) applies every migration" "$out" "done, $n_files applied, 0 already present"
    owner="$(psql "$mq_admin_url" -X -At -c "SELECT schemaname || ' ' || tableowner FROM pg_tables WHERE tablename = 'schema_migrations'" 2>&1)"
    if [ "$owner" = "mq_schema $mq_role" ]; then
        ok "... into that database and schema (&options reached psql), as that role (\$ and & intact)"
    else
        not_ok "migrate.sh got the DB_URL intact (schema and owner of schema_migrations)" "$owner"
    fi
    check "prod-preflight.sh accepts that URL single-quoted in an env file" bash -c '
        { grep -v "^DB_URL=" "$1"; printf "DB_URL='"'"'%s'"'"'\n" "$2"; } >"$3"
        bash exchange-common/scripts/prod-preflight.sh "$3" >/dev/null' _ "$fixtures/good.env" "$mq_url" "$work/mq.env"
    psql "$DB_URL" -X -q -v role="$mq_role" -v db="$mq_db" <<'SQL' >/dev/null 2>&1
DROP DATABASE IF EXISTS :"db";
DROP ROLE IF EXISTS :"role";
SQL
else
    printf 'skip  migrations: DB_URL or psql not available\n'
fi

# ---- Redis ACL users -----------------------------------------------------------------------------------
# The local-db Redis's users (deploy/prod/redis/users-acl.sh), loaded by a
# throwaway redis-server: each service may run what it runs and nothing else.
section "Redis ACL users (deploy/prod/redis/users-acl.sh)"
acl_users=(gateway order matching clearing marketdata wallet admin)
acl_env=()
for u in "${acl_users[@]}"; do
    acl_env+=("REDIS_PASSWORD_$(printf '%s' "$u" | tr '[:lower:]' '[:upper:]')=$(openssl rand -hex 32)")
done
check "users-acl.sh refuses a missing password, naming it" bash -c '! out=$(env -u REDIS_PASSWORD_WALLET "$@" sh deploy/prod/redis/users-acl.sh 2>&1) && grep -q "REDIS_PASSWORD_WALLET is not set" <<<"$out"' _ env "${acl_env[@]/REDIS_PASSWORD_WALLET=*/REDIS_PASSWORD_WALLET=}"
env "${acl_env[@]}" sh deploy/prod/redis/users-acl.sh >"$work/users.acl" 2>"$work/users-acl.err"
check "users-acl.sh prints no password (only SHA-256 hashes)" bash -c '
    for kv in "${@:2}"; do grep -qF -- "${kv#*=}" "$1" && { echo "a password is in the ACL file"; exit 1; }; done
    [ "$(grep -c "^user .* on #[0-9a-f]\{64\} " "$1")" -eq 7 ] && grep -qx "user default off resetpass resetkeys resetchannels -@all" "$1"' _ "$work/users.acl" "${acl_env[@]}"
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    acl_port="$(free_port)"
    redis-server --port "$acl_port" --bind 127.0.0.1 --save "" --appendonly no --aclfile "$work/users.acl" \
        --dir "$work" --logfile "$work/redis-acl.log" >/dev/null 2>&1 &
    bg_pids+=("$!")
    for _ in $(seq 50); do redis-cli -p "$acl_port" PING 2>/dev/null | grep -q NOAUTH && break; sleep 0.1; done
    # redis_as USER CMD...: redis-cli as that ACL user (password from the environment, never the command line)
    redis_as() {
        local user="$1" var kv
        shift
        var="REDIS_PASSWORD_$(printf '%s' "$user" | tr '[:lower:]' '[:upper:]')"
        for kv in "${acl_env[@]}"; do [ "${kv%%=*}" = "$var" ] && break; done
        REDISCLI_AUTH="${kv#*=}" redis-cli --no-auth-warning -p "$acl_port" --user "$user" "$@" 2>&1
    }
    check_contains "redis-server loads the ACL file; the default user is off" "$(redis-cli -p "$acl_port" PING 2>&1)" 'NOAUTH'
    check_contains "every user authenticates and may PING" "$(for u in "${acl_users[@]}"; do redis_as "$u" PING; done | sort | uniq -c)" '^ +7 PONG$'
    o='exchange:orders:{BTC-USDT}'
    while IFS='|' read -r label want user cmd; do
        [ -n "$label" ] || continue
        read -r -a argv <<<"$cmd"
        out="$(redis_as "$user" "${argv[@]}")"
        if [ "$want" = allow ]; then
            if grep -qE 'NOPERM|ERR|WRONGPASS' <<<"$out"; then not_ok "ACL: $label" "$out"; else ok "ACL: $label"; fi
        else
            check_contains "ACL: $label" "$out" 'NOPERM'
        fi
    done <<EOF
order may XADD to an order stream|allow|order|XADD $o * command {}
marketdata may not XADD to an order stream|deny|marketdata|XADD $o * command {}
gateway may not XADD to an order stream|deny|gateway|XADD $o * command {}
clearing may not XADD to an order stream|deny|clearing|XADD $o * command {}
matching may create its group on an order stream|allow|matching|XGROUP CREATE $o matching 0 MKSTREAM
matching may read the order stream as its group|allow|matching|XREADGROUP GROUP matching m1 COUNT 1 STREAMS $o >
matching may not XADD to an order stream (only its dead letters)|deny|matching|XADD $o * command {}
matching may XADD to the order stream's dead letters|allow|matching|XADD $o:dlq * error x
matching may XADD an event batch|allow|matching|XADD exchange:events * batch {}
order may not XADD an event batch|deny|order|XADD exchange:events * batch {}
marketdata may not XADD an event batch|deny|marketdata|XADD exchange:events * batch {}
clearing may not XADD an event batch|deny|clearing|XADD exchange:events * batch {}
clearing may create its group on the events stream|allow|clearing|XGROUP CREATE exchange:events clearing 0 MKSTREAM
clearing may read the events stream as its group|allow|clearing|XREADGROUP GROUP clearing c1 COUNT 1 STREAMS exchange:events >
clearing may XADD to the events' dead letters|allow|clearing|XADD exchange:events:dlq * error x
marketdata may create its group on the events stream|allow|marketdata|XGROUP CREATE exchange:events marketdata-h1 $ MKSTREAM
marketdata may not trim the events stream|deny|marketdata|XTRIM exchange:events MAXLEN 0
marketdata may not destroy a group|deny|marketdata|XGROUP DESTROY exchange:events clearing
matching may trim the events stream|allow|matching|XTRIM exchange:events MINID 0
matching may read the events groups|allow|matching|XINFO GROUPS exchange:events
clearing may publish a private event|allow|clearing|PUBLISH exchange:private:7 []
wallet may publish a private event|allow|wallet|PUBLISH exchange:private:7 []
marketdata may not publish a private event|deny|marketdata|PUBLISH exchange:private:7 []
order may not publish a private event|deny|order|PUBLISH exchange:private:7 []
gateway may keep a listenKey|allow|gateway|SETEX exchange:bn:listenKey:k1 60 7
gateway may not read the streams|deny|gateway|XRANGE exchange:events - +
wallet may not touch any key|deny|wallet|GET exchange:bn:listenKey:k1
matching may claim its consumer name on an order stream|allow|matching|SET $o:consumer:matching:m1 id1 PX 30000 GET
matching may drop its claim|allow|matching|DEL $o:consumer:matching:m1
clearing may claim its consumer name on the events stream|allow|clearing|SET exchange:events:consumer:clearing:c1 id1 PX 30000 GET
marketdata may claim its consumer name on the events stream|allow|marketdata|SET exchange:events:consumer:marketdata-h1:d1 id1 PX 30000 GET
marketdata may not SET other keys|deny|marketdata|SET exchange:events x
clearing may not DEL the events stream|deny|clearing|DEL exchange:events
admin may list the dead letters|allow|admin|XRANGE exchange:events:dlq - + COUNT 5
admin may not publish|deny|admin|PUBLISH exchange:private:7 []
no user may touch keys outside the prefix|deny|admin|XLEN other:events
no user may FLUSHALL|deny|admin|FLUSHALL
EOF
    out="$(REDISCLI_AUTH="$(printf '%s\n' "${acl_env[@]}" | sed -n 's/^REDIS_PASSWORD_GATEWAY=//p')" timeout 2 redis-cli --no-auth-warning -p "$acl_port" --user gateway PSUBSCRIBE 'exchange:private:*' 2>&1)"
    check_contains "ACL: gateway may PSUBSCRIBE exchange:private:* (its private-events consumer)" "$out" '^psubscribe$'
    out="$(REDISCLI_AUTH="$(printf '%s\n' "${acl_env[@]}" | sed -n 's/^REDIS_PASSWORD_MARKETDATA=//p')" timeout 2 redis-cli --no-auth-warning -p "$acl_port" --user marketdata PSUBSCRIBE 'exchange:private:*' 2>&1)"
    check_contains "ACL: marketdata may not subscribe to private events" "$out" 'NOPERM'
    out="$(redis_as admin --scan --pattern 'exchange:*' | sort | tr '\n' ' ')"
    check_contains "ACL: admin may SCAN the prefix (restore-check.sh --reset-redis, exchange admin dlq list)" "$out" 'exchange:events '
    out="$(env "${acl_env[@]}" REDIS_KEY_PREFIX=exchange sh deploy/prod/redis/users-acl.sh --setuser 2>&1 | head -n 1)"
    check_contains "users-acl.sh --setuser prints ACL SETUSER commands (for a Redis you run yourself)" "$out" '^ACL SETUSER gateway reset on #[0-9a-f]{64} '
else
    printf 'skip  Redis ACL users: redis-server or redis-cli not installed\n'
fi

# ---- Kubernetes -------------------------------------------------------------------------------------------
# shellcheck source=tests/ops/k8s.sh
. "$here/k8s.sh"
k8s_stage

# ---- live stage ---------------------------------------------------------------------------------------------
# shellcheck source=tests/ops/live.sh
. "$here/live.sh"
live_stage

# ---- summary ----------------------------------------------------------------------------------------------
if [ "$failed" -gt 0 ]; then
    printf '\nfailed checks:\n'
    printf '  - %s\n' "${failures[@]}"
fi
echo
echo "ops: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
