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
unquoted_dollar=()
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
    if [[ "$value" =~ ^\'(.*)\'$ ]]; then
        value="${BASH_REMATCH[1]}"
    else
        if [[ "$value" =~ ^\"(.*)\"$ ]]; then
            value="${BASH_REMATCH[1]}"
        fi
        # docker compose expands $NAME in unquoted and double-quoted values.
        [[ "$value" == *'$'* ]] && unquoted_dollar+=("$key")
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
# Encrypts API-key secrets (and TOTP secrets) at rest: required in prod.
if [ "$(get APP_ENV)" = prod ]; then
    check_secret API_KEY_ENCRYPTION_KEY required
else
    check_secret API_KEY_ENCRYPTION_KEY optional
fi
# Optional secrets obey the same rules when set.
for name in METRICS_TOKEN INTERNAL_TOKEN_PREVIOUS AUTH_TOKEN_SECRET_PREVIOUS API_KEY_ENCRYPTION_KEY_PREVIOUS; do
    check_secret "$name" optional
done
# One leaked secret must not open another door.
secret_names=(INTERNAL_TOKEN AUTH_TOKEN_SECRET ADMIN_TOKEN METRICS_TOKEN API_KEY_ENCRYPTION_KEY)
for ((i = 0; i < ${#secret_names[@]}; i++)); do
    for ((j = i + 1; j < ${#secret_names[@]}; j++)); do
        a="$(get "${secret_names[i]}")"
        b="$(get "${secret_names[j]}")"
        if [ -n "$a" ] && [ "$a" = "$b" ] && [[ "$a" != *REPLACE* ]]; then
            fail "${secret_names[i]} and ${secret_names[j]} are the same value; each secret must be distinct"
        fi
    done
done
for name in INTERNAL_TOKEN AUTH_TOKEN_SECRET API_KEY_ENCRYPTION_KEY; do
    if [ -n "$(get "$name")" ] && [ "$(get "$name")" = "$(get "${name}_PREVIOUS")" ]; then
        fail "${name}_PREVIOUS equals $name; after a rotation the previous value must be the old one (or unset)"
    fi
done
# The API-key encryption key must not be (or be made from) the token-signing
# secret: whoever holds one must not hold the other.
for name in API_KEY_ENCRYPTION_KEY API_KEY_ENCRYPTION_KEY_PREVIOUS; do
    key="$(get "$name")"
    for other in AUTH_TOKEN_SECRET AUTH_TOKEN_SECRET_PREVIOUS; do
        secret="$(get "$other")"
        if [ -z "$key" ] || [ -z "$secret" ]; then continue; fi
        [[ "$key" == *REPLACE* ]] && continue
        if [ "$key" = "$secret" ]; then
            fail "$name equals $other; generate its own: openssl rand -hex 32"
        elif [[ "$key" == *"$secret"* ]] || [[ "$secret" == *"$key"* ]]; then
            fail "$name is derived from $other (one contains the other); generate its own: openssl rand -hex 32"
        fi
    done
done

secret_like=" INTERNAL_TOKEN AUTH_TOKEN_SECRET ADMIN_TOKEN METRICS_TOKEN INTERNAL_TOKEN_PREVIOUS AUTH_TOKEN_SECRET_PREVIOUS API_KEY_ENCRYPTION_KEY API_KEY_ENCRYPTION_KEY_PREVIOUS LOCAL_DB_PASSWORD REDIS_PASSWORD_GATEWAY REDIS_PASSWORD_ORDER REDIS_PASSWORD_MATCHING REDIS_PASSWORD_CLEARING REDIS_PASSWORD_MARKETDATA REDIS_PASSWORD_WALLET REDIS_PASSWORD_ADMIN "
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

# The order service consumes no stream (ORDER_CONSUMER_* are not needed).
for svc in MATCHING CLEARING MARKETDATA GATEWAY; do
    [ -n "$(get "${svc}_CONSUMER_NAME")" ] \
        || fail "${svc}_CONSUMER_NAME is not set (a name unique per replica, e.g. $(printf '%s' "$svc" | tr '[:upper:]' '[:lower:]')-\$(hostname)-1)"
done
for svc in MATCHING CLEARING MARKETDATA; do
    [ -n "$(get "${svc}_CONSUMER_GROUP")" ] \
        || warn "${svc}_CONSUMER_GROUP is not set; the service default group is used"
done

# ---- TLS to PostgreSQL and Redis ----------------------------------------------------
# The hosts of a postgres:// or redis(s):// URL, one per line (libpq allows
# a comma list and ?host=; a socket path or an empty host is this machine).
url_hosts() {
    local url="$1" rest authority hostlist h
    rest="${url#*://}"
    authority="${rest%%[/?]*}"
    hostlist="${authority##*@}"
    IFS=',' read -r -a hs <<<"$hostlist"
    [ "${#hs[@]}" -gt 0 ] || hs=("")
    for h in "${hs[@]}"; do
        if [[ "$h" =~ ^\[([^]]*)\] ]]; then h="${BASH_REMATCH[1]}"; else h="${h%%:*}"; fi
        printf '%s\n' "$h"
    done
    if [[ "$url" =~ [?\&]host=([^\&]*) ]]; then printf '%s\n' "${BASH_REMATCH[1]}"; fi
}
is_local_host() {
    local h
    h="$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')"
    case "$h" in
        '' | /* | %2f* | localhost | ::1 | 0:0:0:0:0:0:0:1) return 0 ;;
    esac
    [[ "$h" =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]]
}
all_hosts_local() {
    local h
    while IFS= read -r h; do
        is_local_host "$h" || return 1
    done < <(url_hosts "$1")
}
allow_plaintext=0
is_true "$(get ALLOW_PLAINTEXT_BACKENDS)" && allow_plaintext=1
# plaintext NAME WHAT: a non-TLS URL to another host; refused in prod unless
# ALLOW_PLAINTEXT_BACKENDS=true (Postgres and Redis on a private network of
# their own, such as the local-db profile's compose network).
plaintext() {
    if [ "$app_env" != prod ]; then
        warn "$1 $2"
    elif [ "$allow_plaintext" = 1 ]; then
        warn "$1 $2; allowed by ALLOW_PLAINTEXT_BACKENDS=true (only for a private network of their own, e.g. the local-db profile)"
    else
        fail "$1 $2; with APP_ENV=prod use TLS, or set ALLOW_PLAINTEXT_BACKENDS=true if the server is on a private network of its own (docs/RUNBOOK.md#security-baseline)"
    fi
}
app_env="$(get APP_ENV)"
db_url="$(get DB_URL)"
if [ -z "$db_url" ]; then
    fail "DB_URL is missing (postgres://user:password@host:5432/exchange?sslmode=verify-full&sslrootcert=/path/ca.pem)"
elif [[ ! "$db_url" =~ [?\&]sslmode=(require|verify-ca|verify-full)(\&|$) ]] && ! all_hosts_local "$db_url"; then
    plaintext DB_URL "does not require TLS to a host that is not loopback (add sslmode=verify-full&sslrootcert=/path/ca.pem)"
fi
# The read replica holds the same data as the primary: the same TLS rule.
db_read_url="$(get DB_READ_URL)"
if [ -n "$db_read_url" ]; then
    if [[ "$db_read_url" != postgres://* && "$db_read_url" != postgresql://* ]]; then
        fail "DB_READ_URL must start with postgres:// (a streaming replica of DB_URL)"
    elif [ "$db_read_url" = "$db_url" ]; then
        fail "DB_READ_URL is DB_URL: it must name a streaming replica of it (or be unset)"
    elif [[ ! "$db_read_url" =~ [?\&]sslmode=(require|verify-ca|verify-full)(\&|$) ]] && ! all_hosts_local "$db_read_url"; then
        plaintext DB_READ_URL "does not require TLS to a host that is not loopback (add sslmode=verify-full&sslrootcert=/path/ca.pem)"
    fi
fi
redis_url="$(get REDIS_URL)"
[ -n "$redis_url" ] || fail "REDIS_URL is missing (rediss://user:password@host:6380/0)"
for name in REDIS_URL REDIS_URL_GATEWAY REDIS_URL_ORDER REDIS_URL_MATCHING REDIS_URL_CLEARING REDIS_URL_MARKETDATA \
    REDIS_URL_WALLET REDIS_URL_ADMIN; do
    url="$(get "$name")"
    [ -n "$url" ] || continue
    if [[ "$url" != rediss://* ]] && ! all_hosts_local "$url"; then
        plaintext "$name" "is not TLS (rediss://) to a host that is not loopback"
    fi
done
for key in "${unquoted_dollar[@]}"; do
    fail "$key holds a '\$' outside single quotes: docker compose would expand it; write $key='...' (single quotes), or percent-encode it in a URL (%24)"
done

# ---- TRUSTED_PROXIES --------------------------------------------------------------------
# Only the load balancer's own addresses: a whole range (every private
# network, any prefix shorter than /24 or /64) would let any host in it
# forge X-Forwarded-For and so the client address of rate limits, login
# budgets and API-key IP allow-lists.
allow_ranges=0
is_true "$(get TRUSTED_PROXIES_ALLOW_RANGES)" && allow_ranges=1
ipv4_re='^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$'
proxies="$(get TRUSTED_PROXIES)"
if [ -z "${proxies// /}" ]; then
    warn "TRUSTED_PROXIES is empty: X-Forwarded-For is ignored, so behind a load balancer every client has its address (per-IP limits then hit everyone); set it to the load balancer's address"
fi
IFS=',' read -r -a proxy_list <<<"$proxies"
for entry in "${proxy_list[@]}"; do
    entry="${entry// /}"
    [ -n "$entry" ] || continue
    addr="${entry%%/*}"
    prefix=""
    [[ "$entry" == */* ]] && prefix="${entry#*/}"
    if [[ "$addr" =~ $ipv4_re ]]; then
        family=4 width=32
        octets=("${BASH_REMATCH[@]:1:4}")
        bad=0
        for o in "${octets[@]}"; do [ "$((10#$o))" -le 255 ] || bad=1; done
        [ "$bad" = 0 ] || { fail "TRUSTED_PROXIES entry '$entry' is not an IP address or CIDR network"; continue; }
    elif [[ "$addr" == *:* ]] && [[ "$addr" =~ ^[0-9A-Fa-f:.]+$ ]]; then
        family=6 width=128
    else
        fail "TRUSTED_PROXIES entry '$entry' is not an IP address or CIDR network"
        continue
    fi
    if [ -z "$prefix" ]; then
        prefix="$width"
    elif [[ ! "$prefix" =~ ^[0-9]{1,3}$ ]] || [ "$prefix" -gt "$width" ]; then
        fail "TRUSTED_PROXIES entry '$entry' has an invalid prefix length"
        continue
    fi
    lower="$(printf '%s' "$addr" | tr '[:upper:]' '[:lower:]')"
    # Documentation addresses (RFC 5737, RFC 3849): the example's placeholder.
    if { [ "$family" = 4 ] && [[ "$addr" =~ ^(192\.0\.2|198\.51\.100|203\.0\.113)\. ]]; } \
        || { [ "$family" = 6 ] && [[ "$lower" == 2001:db8:* || "$lower" == 2001:0db8:* ]]; }; then
        fail "TRUSTED_PROXIES holds the placeholder $entry from prod.env.example (a documentation address); replace it with your load balancer's address"
        continue
    fi
    # Loopback is this host (or container) itself.
    if { [ "$family" = 4 ] && [ "${octets[0]}" = 127 ] && [ "$prefix" -ge 8 ]; } || { [ "$family" = 6 ] && [ "$lower" = ::1 ]; }; then
        continue
    fi
    min=24
    [ "$family" = 6 ] && min=64
    if [ "$prefix" -lt "$min" ]; then
        what="a range of 2^$((width - prefix)) addresses"
        case "$family:$prefix:$lower" in
            4:0:* | 6:0:*) what="every address" ;;
            4:8:10.*) what="the whole private range 10.0.0.0/8" ;;
            4:12:172.16.*) what="the whole private range 172.16.0.0/12" ;;
            4:16:192.168.*) what="the whole private range 192.168.0.0/16" ;;
            6:7:fc* | 6:7:fd*) what="the whole private range fc00::/7" ;;
        esac
        if [ "$allow_ranges" = 1 ]; then
            warn "TRUSTED_PROXIES entry $entry trusts $what (allowed by TRUSTED_PROXIES_ALLOW_RANGES=true)"
        else
            fail "TRUSTED_PROXIES entry $entry trusts $what (prefix shorter than /$min): any host there could forge X-Forwarded-For; list your load balancer's addresses, or set TRUSTED_PROXIES_ALLOW_RANGES=true on purpose"
        fi
    fi
done

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
        # The local Redis's ACL users (deploy/prod/redis/users-acl.sh).
        for user in GATEWAY ORDER MATCHING CLEARING MARKETDATA WALLET ADMIN; do
            check_secret "REDIS_PASSWORD_$user" required
            pw="$(get "REDIS_PASSWORD_$user")"
            if [[ "$pw" == *[!A-Za-z0-9._~-]* ]]; then
                fail "REDIS_PASSWORD_$user may hold only A-Z a-z 0-9 . _ ~ - (it goes into a URL): openssl rand -hex 32"
            fi
        done
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
