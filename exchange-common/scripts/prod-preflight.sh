#!/usr/bin/env bash
# Checks a production env file before anything is deployed with it, and lists
# EVERY problem at once (not just the first), so an operator fixes them in one
# pass. deploy/prod/deploy.sh runs it first; run it by hand after editing.
#
# Usage: exchange-common/scripts/prod-preflight.sh [ENV_FILE]
#        ENV_FILE defaults to $PROD_ENV_FILE, then deploy/prod/prod.env
#
# The file is parsed, never sourced (it is data, not a script): KEY=VALUE
# lines, `#` comments, blank lines, an optional `export ` prefix, and one pair
# of matching quotes around a value are understood.
#
# Exit status: 0 ok (warnings may be printed), 1 one or more problems,
# 66 the env file cannot be read.
set -euo pipefail

env_file="${1:-${PROD_ENV_FILE:-deploy/prod/prod.env}}"
if [ ! -r "$env_file" ] || [ -d "$env_file" ]; then
    echo "preflight: cannot read env file $env_file (copy deploy/prod/prod.env.example and fill it in)" >&2
    exit 66
fi

declare -A env=()
line_no=0
parse_problems=()
while IFS= read -r line || [ -n "$line" ]; do
    line_no=$((line_no + 1))
    line="${line%$'\r'}"
    # Trim leading whitespace; skip blanks and comments.
    line="${line#"${line%%[![:space:]]*}"}"
    case "$line" in
        '' | '#'*) continue ;;
    esac
    line="${line#export }"
    if [[ ! "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
        parse_problems+=("line $line_no is not KEY=VALUE: ${line%%=*}")
        continue
    fi
    key="${BASH_REMATCH[1]}"
    value="${BASH_REMATCH[2]}"
    # Trailing whitespace is almost always an editing accident.
    value="${value%"${value##*[![:space:]]}"}"
    if [[ "$value" =~ ^\"(.*)\"$ ]] || [[ "$value" =~ ^\'(.*)\'$ ]]; then
        value="${BASH_REMATCH[1]}"
    fi
    env["$key"]="$value"
done <"$env_file"

get() { printf '%s' "${env[$1]:-}"; }
is_true() {
    case "$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

problems=("${parse_problems[@]}")
warnings=()
fail() { problems+=("$1"); }
warn() { warnings+=("$1"); }

secret_min_len=32
# Known development defaults (scripts/dev.sh and the quickstart).
known_defaults=(
    dev-internal-token-change-me-please-000
    dev-auth-token-secret-change-me-please-0
    dev-admin-token-change-me-please-00000
)

# check_secret NAME REQUIRED: missing, too short or a development default.
check_secret() {
    local name="$1" required="$2" value lower known
    value="$(get "$name")"
    if [ -z "$value" ]; then
        [ "$required" = required ] && fail "$name is missing (need at least $secret_min_len random characters: openssl rand -hex 32)"
        return 0
    fi
    lower="$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')"
    for known in "${known_defaults[@]}"; do
        if [ "$value" = "$known" ]; then
            fail "$name is a development default (the local quickstart value); generate one: openssl rand -hex 32"
            return 0
        fi
    done
    case "$lower" in
        *replace*)
            fail "$name still holds the REPLACE placeholder from prod.env.example; generate one: openssl rand -hex 32"
            return 0
            ;;
        dev-* | *change-me* | *changeme* | *example*)
            fail "$name is a development default or placeholder ('dev-' prefix or 'change-me'); generate one: openssl rand -hex 32"
            return 0
            ;;
    esac
    if [ "${#value}" -lt "$secret_min_len" ]; then
        fail "$name is too short (${#value} characters, need at least $secret_min_len)"
    fi
}

for name in INTERNAL_TOKEN AUTH_TOKEN_SECRET ADMIN_TOKEN; do
    check_secret "$name" required
done
# Optional secrets obey the same rules when set.
for name in METRICS_TOKEN INTERNAL_TOKEN_PREVIOUS AUTH_TOKEN_SECRET_PREVIOUS; do
    check_secret "$name" optional
done
# One leaked secret must not open another door.
secret_names=(INTERNAL_TOKEN AUTH_TOKEN_SECRET ADMIN_TOKEN METRICS_TOKEN)
for ((i = 0; i < ${#secret_names[@]}; i++)); do
    for ((j = i + 1; j < ${#secret_names[@]}; j++)); do
        a="$(get "${secret_names[i]}")"
        b="$(get "${secret_names[j]}")"
        if [ -n "$a" ] && [ "$a" = "$b" ] && [[ "$a" != *REPLACE* ]]; then
            fail "${secret_names[i]} and ${secret_names[j]} are the same value; each secret must be distinct"
        fi
    done
done
for name in INTERNAL_TOKEN AUTH_TOKEN_SECRET; do
    if [ -n "$(get "$name")" ] && [ "$(get "$name")" = "$(get "${name}_PREVIOUS")" ]; then
        fail "${name}_PREVIOUS equals $name; after a rotation the previous value must be the old one (or unset)"
    fi
done

secret_like=" INTERNAL_TOKEN AUTH_TOKEN_SECRET ADMIN_TOKEN METRICS_TOKEN INTERNAL_TOKEN_PREVIOUS AUTH_TOKEN_SECRET_PREVIOUS LOCAL_DB_PASSWORD "
while IFS= read -r key; do
    [ -n "$key" ] || continue
    [[ "$secret_like" == *" $key "* ]] && continue
    if [[ "${env[$key]}" == *REPLACE* ]]; then
        fail "$key still holds the REPLACE placeholder from prod.env.example"
    fi
done < <(printf '%s\n' "${!env[@]}" | LC_ALL=C sort)

app_env="$(get APP_ENV)"
[ "$app_env" = prod ] || fail "APP_ENV must be prod (is '${app_env}')"

app_version="$(get APP_VERSION)"
if [ -z "$app_version" ]; then
    fail "APP_VERSION is missing (the image tag to run, e.g. 1.4.2; it is also what rollback changes)"
elif [ "$app_version" = dev ]; then
    fail "APP_VERSION is 'dev'; set the released version (image tag) you deploy"
elif [ "$app_version" = latest ]; then
    warn "APP_VERSION is 'latest': a rollback needs a real version tag"
fi

if is_true "$(get ENABLE_DOCS)"; then
    fail "ENABLE_DOCS is true; the OpenAPI/Swagger pages must be off in production (ENABLE_DOCS=false)"
fi

origins="$(get MARKETDATA_WS_ALLOW_ORIGINS)"
if [ -z "$origins" ]; then
    fail "MARKETDATA_WS_ALLOW_ORIGINS is empty; list the web origins allowed to open the public WebSocket"
elif [[ "$origins" == *'*'* ]]; then
    fail "MARKETDATA_WS_ALLOW_ORIGINS contains '*'; list the exact origins (https://exchange.example.com)"
else
    IFS=',' read -r -a origin_list <<<"$origins"
    for origin in "${origin_list[@]}"; do
        origin="${origin// /}"
        case "$origin" in
            https://*) ;;
            *) warn "MARKETDATA_WS_ALLOW_ORIGINS entry '$origin' is not https://" ;;
        esac
    done
fi

for svc in ORDER MATCHING CLEARING MARKETDATA GATEWAY; do
    [ -n "$(get "${svc}_CONSUMER_NAME")" ] \
        || fail "${svc}_CONSUMER_NAME is not set (a name unique per replica, e.g. $(printf '%s' "$svc" | tr '[:upper:]' '[:lower:]')-\$(hostname)-1)"
done
for svc in ORDER MATCHING CLEARING MARKETDATA; do
    [ -n "$(get "${svc}_CONSUMER_GROUP")" ] \
        || warn "${svc}_CONSUMER_GROUP is not set; the service default group is used"
done

db_url="$(get DB_URL)"
if [ -z "$db_url" ]; then
    fail "DB_URL is missing (postgres://user:password@host:5432/exchange?sslmode=verify-full)"
elif [[ ! "$db_url" =~ [?\&]sslmode=(require|verify-ca|verify-full)(\&|$) ]]; then
    warn "DB_URL does not require TLS (add ?sslmode=verify-full unless Postgres is on this host or a private link)"
fi
redis_url="$(get REDIS_URL)"
if [ -z "$redis_url" ]; then
    fail "REDIS_URL is missing (rediss://:password@host:6380/0)"
elif [[ "$redis_url" != rediss://* ]]; then
    warn "REDIS_URL is not TLS (rediss://) (fine only when Redis is on this host or a private link)"
fi
[ -n "$(get METRICS_TOKEN)" ] \
    || warn "METRICS_TOKEN is unset: /metrics is readable without a token (block it at the proxy, or set one)"

for name in RATE_LIMIT_LOGIN_PER_MINUTE RATE_LIMIT_ORDERS_PER_SECOND RATE_LIMIT_IP_PER_SECOND SHUTDOWN_DRAIN_SECONDS; do
    value="$(get "$name")"
    if [ -n "$value" ] && [[ ! "$value" =~ ^[1-9][0-9]*$ ]]; then
        fail "$name must be a positive whole number (is '$value')"
    fi
done

# How long a new withdrawal address waits before use: what stops a stolen
# session from adding an address and draining the account at once.
cooldown="$(get WITHDRAWAL_ADDRESS_COOLDOWN_SECS)"
if [ -n "$cooldown" ]; then
    if [[ ! "$cooldown" =~ ^[0-9]+$ ]]; then
        fail "WITHDRAWAL_ADDRESS_COOLDOWN_SECS must be a whole number of seconds (is '$cooldown')"
    else
        digits="${cooldown#"${cooldown%%[!0]*}"}" # no leading zeros; no overflow below
        if [ "${#digits}" -lt 4 ] || { [ "${#digits}" -eq 4 ] && [ "$digits" -lt 3600 ]; }; then
            warn "WITHDRAWAL_ADDRESS_COOLDOWN_SECS is $cooldown: under an hour, a stolen session can add an address and withdraw to it almost at once (default 86400)"
        fi
    fi
fi

case ",$(get COMPOSE_PROFILES)," in
    *,local-db,*)
        check_secret LOCAL_DB_PASSWORD required
        backup_env="$(dirname "$env_file")/backup.env"
        if [ ! -f "$backup_env" ]; then
            fail "backup.env is missing next to $(basename "$env_file") (local-db backups: copy deploy/prod/backup.env.example, set PGBACKREST_REPO1_CIPHER_PASS, chmod 600)"
        else
            [ "$(stat -c %a "$backup_env")" = 600 ] || fail "$backup_env must be mode 600 (it holds the backups' passphrase): chmod 600 $backup_env"
            pass="$(sed -n 's/^PGBACKREST_REPO1_CIPHER_PASS=//p' "$backup_env" | tail -n 1)"
            if [ -z "$pass" ] || [ "${#pass}" -lt "$secret_min_len" ] || [[ "$pass" == *REPLACE* ]]; then
                fail "PGBACKREST_REPO1_CIPHER_PASS in $backup_env is missing or weak (need at least $secret_min_len random characters: openssl rand -hex 32)"
            fi
        fi
        ;;
esac

for w in "${warnings[@]}"; do
    echo "preflight: WARN  $w" >&2
done
if [ "${#problems[@]}" -gt 0 ]; then
    for p in "${problems[@]}"; do
        echo "preflight: FAIL  $p" >&2
    done
    echo "preflight: $env_file has ${#problems[@]} problem(s); nothing was deployed" >&2
    exit 1
fi
echo "preflight: $env_file ok (${#warnings[@]} warning(s))"
