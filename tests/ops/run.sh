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
warns DB_URL without TLS|WARN +DB_URL does not require TLS
warns REDIS_URL without TLS|WARN +REDIS_URL is not TLS
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
EOF
out="$(bash "$preflight" deploy/prod/prod.env.example 2>&1)"
check_contains "preflight refuses prod.env.example's placeholders" "$out" "INTERNAL_TOKEN still holds the REPLACE placeholder"
out="$(bash "$preflight" "$work/does-not-exist.env" 2>&1)"
rc=$?
if [ "$rc" -eq 66 ]; then ok "preflight exits 66 on a missing env file"; else not_ok "preflight exits 66 on a missing env file (got $rc)" "$out"; fi
out="$(PROD_ENV_FILE="$fixtures/good.env" bash "$preflight" 2>&1)"
check_contains "preflight reads PROD_ENV_FILE" "$out" "good.env ok"
f="$(variant no-tls 's/?sslmode=verify-full//; s/^REDIS_URL=rediss/REDIS_URL=redis/; /^METRICS_TOKEN=/d')"
out="$(bash "$preflight" "$f" 2>&1)"
rc=$?
if [ "$rc" -eq 0 ] && [ "$(grep -c WARN <<<"$out")" -eq 3 ]; then ok "preflight only warns on non-TLS URLs and unset METRICS_TOKEN"; else not_ok "preflight only warns on non-TLS URLs and unset METRICS_TOKEN (exit $rc)" "$out"; fi
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
check_contains "deploy.sh migrates with the image" "$out" '\+ docker-compose -p exchange -f .*docker-compose.yml run --rm --no-deps migrate'
check_contains "deploy.sh starts the six services" "$out" '\+ docker-compose .* up -d gateway order matching clearing marketdata wallet( |$)'
out="$(APP_VERSION=0.9.0 DEPLOY_DRY_RUN=1 DOCKER_COMPOSE=docker-compose PROD_ENV_FILE="$fixtures/good.env" bash deploy/prod/deploy.sh 2>&1)"
check_contains "deploy.sh rollback: APP_VERSION from the environment wins" "$out" 'start exchange:0\.9\.0'
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

# ---- compose -----------------------------------------------------------------------------
section "docker compose files"
export_compose_env() { APP_VERSION=1.0.0 PROD_ENV_FILE="$fixtures/good.env" BACKUP_ENV_FILE="$root/deploy/prod/backup.env.example" "$@"; }
dc=(docker-compose -p exchange -f deploy/prod/docker-compose.yml)
check "docker-compose.yml validates (config -q)" export_compose_env "${dc[@]}" config -q
check "docker-compose.yml + public-marketdata validates" export_compose_env "${dc[@]}" -f deploy/prod/docker-compose.public-marketdata.yml config -q
check "docker-compose.yml + admin-on-public-port validates" export_compose_env "${dc[@]}" -f deploy/prod/docker-compose.admin-on-public-port.yml config -q
check "docker-compose.yml with the local-db profile validates" export_compose_env env COMPOSE_PROFILES=local-db LOCAL_DB_PASSWORD=x "${dc[@]}" config -q
out="$(PROD_ENV_FILE="$fixtures/good.env" "${dc[@]}" config -q 2>&1)"
rc=$?
if [ "$rc" -ne 0 ] && grep -q 'APP_VERSION' <<<"$out"; then ok "docker-compose.yml refuses to run without APP_VERSION"; else not_ok "docker-compose.yml refuses to run without APP_VERSION" "$out"; fi
printf 'GRAFANA_ADMIN_PASSWORD=ops-test-password\n' >"$work/monitoring.env"
dm=(docker-compose -p exchange-monitoring --env-file "$work/monitoring.env" -f deploy/prod/docker-compose.monitoring.yml)
check "docker-compose.monitoring.yml validates (dummy monitoring.env)" "${dm[@]}" config -q
check "docker-compose.monitoring.yml + ports file validates" "${dm[@]}" -f deploy/prod/docker-compose.monitoring.ports.yml config -q
: >"$work/empty.env"
out="$(docker-compose -p exchange-monitoring --env-file "$work/empty.env" -f deploy/prod/docker-compose.monitoring.yml config -q 2>&1)"
check_contains "monitoring refuses to start without GRAFANA_ADMIN_PASSWORD" "$out" 'GRAFANA_ADMIN_PASSWORD'

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
    log = svc.get("logging", {})
    if log.get("driver") != "json-file" or "max-size" not in log.get("options", {}) or "max-file" not in log.get("options", {}):
        problems.append(f"{name}: no json-file log rotation")
    env = svc.get("environment", {})
    if env.get("APP_ENV") != "prod": problems.append(f"{name}: env_file not applied (APP_ENV={env.get('APP_ENV')})")
    if svc.get("user") not in (None, "", "10001:10001"): problems.append(f"{name}: runs as {svc.get('user')}")
published = sorted(n for n, v in s.items() if v.get("ports"))
if published != ["gateway"]: problems.append(f"services publishing ports by default: {published} (only gateway may)")
gw_ports = sorted(str(p.get("target") if isinstance(p, dict) else p) for p in s["gateway"].get("ports", []))
if not all(any(str(t) in str(p) for p in s["gateway"]["ports"]) for t in (8080, 8090)): problems.append(f"gateway ports {s['gateway'].get('ports')} lack 8080/8090")
if s["gateway"]["environment"].get("ORDER_SERVICE_URL") != "http://order:8091": problems.append("gateway ORDER_SERVICE_URL is not http://order:8091")
if s["gateway"]["environment"].get("WALLET_SERVICE_URL") != "http://wallet:8095": problems.append("gateway WALLET_SERVICE_URL is not http://wallet:8095")
wallet = s.get("wallet", {})
if wallet.get("environment", {}).get("WALLET_HTTP_ADDR") != "0.0.0.0:8095": problems.append("wallet WALLET_HTTP_ADDR is not 0.0.0.0:8095")
if "8095" not in [str(p) for p in wallet.get("expose", [])]: problems.append(f"wallet does not expose 8095: {wallet.get('expose')}")
if s["gateway"]["environment"].get("ADMIN_HTTP_ADDR") != "0.0.0.0:8081": problems.append("gateway does not serve the admin API on its own listener (ADMIN_HTTP_ADDR)")
if not any("127.0.0.1" in str(p) and "8081" in str(p) for p in s["gateway"]["ports"]): problems.append(f"gateway does not publish the admin port 8081 on loopback: {s['gateway']['ports']}")
for extra, profile in (("postgres", "local-db"), ("redis", "local-db"), ("migrate", "tools")):
    if s.get(extra, {}).get("profiles") != [profile]: problems.append(f"{extra} is not limited to profile {profile}")
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
else
    printf 'skip  migrations: DB_URL or psql not available\n'
fi

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
