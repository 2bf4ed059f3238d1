#!/usr/bin/env bash
# Deploys (or rolls back) the exchange with docker compose, stopping at the
# first failure with a message that says what to do:
#
#   1. preflight   exchange-common/scripts/prod-preflight.sh on the env file
#   2. image       uses $EXCHANGE_IMAGE:$APP_VERSION when this host has it;
#                  PULL=1 pulls it from your registry; otherwise builds it, but
#                  only when this checkout IS that version (a git tag v$APP_VERSION
#                  or $APP_VERSION at HEAD, or `git describe --tags --always
#                  --abbrev=12` of HEAD): a rollback never builds an old
#                  version from newer code. FORCE_BUILD=1 rebuilds (same rule).
#   3. local-db    with COMPOSE_PROFILES=local-db: starts postgres and redis, waits
#   4. migrate     when DB_URL is set: `exchange migrate` in a one-shot container
#                  (MIGRATE_WITH=psql runs exchange-common/scripts/migrate.sh here)
#   5. up          docker compose up -d (recreates what changed)
#   6. ready       waits until every service answers /ready 200 (READY_TIMEOUT s)
#
# Usage (from anywhere):
#   deploy/prod/deploy.sh                       deploy what prod.env says
#   APP_VERSION=1.4.1 deploy/prod/deploy.sh     roll back / forward to a version
#                                               (its image must be on this host,
#                                               or PULL=1, or check out v1.4.1)
#   DEPLOY_DRY_RUN=1 deploy/prod/deploy.sh      print the docker commands only
#
# Environment: PROD_ENV_FILE (default deploy/prod/prod.env), APP_VERSION
# (overrides the file), READY_TIMEOUT (default 180), FORCE_BUILD, PULL,
# MIGRATE_WITH (image|psql), DOCKER_COMPOSE (default: `docker compose`, or a
# `docker-compose` that is Compose v2), DEPLOY_DRY_RUN.
# The resolved settings are written to deploy/prod/.env (mode 600), so plain
# `docker compose -f deploy/prod/docker-compose.yml ps|logs` work (the
# project name, exchange, is fixed in that file).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
    printf '\ndeploy: FAILED at step "%s": %s\n' "${current_step:-start}" "$1" >&2
    shift
    for hint in "$@"; do printf '    %s\n' "$hint" >&2; done
    exit 1
}

case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    '') ;;
    *) echo "deploy: unknown argument $1 (see --help)" >&2; exit 64 ;;
esac

dry_run="${DEPLOY_DRY_RUN:-0}"
ready_timeout="${READY_TIMEOUT:-180}"
[[ "$ready_timeout" =~ ^[0-9]+$ ]] || { echo "deploy: READY_TIMEOUT must be seconds" >&2; exit 64; }

env_file="${PROD_ENV_FILE:-$root/deploy/prod/prod.env}"
case "$env_file" in
    /*) ;;
    *) [ -e "$env_file" ] || env_file="$root/$env_file" ;;
esac
[ -e "$env_file" ] && env_file="$(cd "$(dirname "$env_file")" && pwd)/$(basename "$env_file")"

# ---- 1. preflight ------------------------------------------------------------------
current_step=preflight
step "preflight: $env_file"
"$root/exchange-common/scripts/prod-preflight.sh" "$env_file" \
    || die "the env file is not fit for production (problems listed above); nothing was changed" \
        "fix them in $env_file, then run deploy/prod/deploy.sh again"

# Reads KEY from the env file the way preflight and compose do (never sourced).
env_value() {
    local key="$1" line value=""
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%$'\r'}"
        line="${line#"${line%%[![:space:]]*}"}"
        line="${line#export }"
        if [[ "$line" == "$key="* ]]; then
            value="${line#"$key="}"
            value="${value%"${value##*[![:space:]]}"}"
            if [[ "$value" =~ ^\"(.*)\"$ ]] || [[ "$value" =~ ^\'(.*)\'$ ]]; then
                value="${BASH_REMATCH[1]}"
            fi
        fi
    done <"$env_file"
    printf '%s' "$value"
}

file_version="$(env_value APP_VERSION)"
APP_VERSION="${APP_VERSION:-$file_version}"
if [ "$APP_VERSION" != "$file_version" ]; then
    info "APP_VERSION=$APP_VERSION from the environment overrides $file_version in the env file"
fi
EXCHANGE_IMAGE="$(env_value EXCHANGE_IMAGE)"
EXCHANGE_IMAGE="${EXCHANGE_IMAGE:-exchange}"
PUBLISH_ADDR="$(env_value PUBLISH_ADDR)"
PUBLISH_ADDR="${PUBLISH_ADDR:-0.0.0.0}"
ADMIN_PUBLISH_ADDR="$(env_value ADMIN_PUBLISH_ADDR)"
ADMIN_PUBLISH_ADDR="${ADMIN_PUBLISH_ADDR:-127.0.0.1}"
COMPOSE_PROFILES="$(env_value COMPOSE_PROFILES)"
LOCAL_DB_PASSWORD="$(env_value LOCAL_DB_PASSWORD)"
VCS_REF="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
PROD_ENV_FILE="$env_file"
# The local-db backups' secrets (preflight checks it with that profile).
BACKUP_ENV_FILE="$(cd "$(dirname "$env_file")" && pwd)/backup.env"
export APP_VERSION EXCHANGE_IMAGE PUBLISH_ADDR ADMIN_PUBLISH_ADDR COMPOSE_PROFILES LOCAL_DB_PASSWORD VCS_REF PROD_ENV_FILE \
    BACKUP_ENV_FILE
image="$EXCHANGE_IMAGE:$APP_VERSION"
local_db=0
case ",$COMPOSE_PROFILES," in *,local-db,*) local_db=1 ;; esac

# Each service's Redis URL (its own ACL user): REDIS_URL_<SERVICE> from the env
# file; else, with local-db, the local Redis as that service's user (password
# REDIS_PASSWORD_<SERVICE>, deploy/prod/redis/users-acl.sh); else REDIS_URL.
redis_users=(gateway order matching clearing marketdata wallet admin)
for user in "${redis_users[@]}"; do
    upper="$(printf '%s' "$user" | tr '[:lower:]' '[:upper:]')"
    url="$(env_value "REDIS_URL_$upper")"
    password="$(env_value "REDIS_PASSWORD_$upper")"
    if [ -z "$url" ] && [ "$local_db" = 1 ]; then
        url="redis://$user:$password@redis:6379/0"
    fi
    [ -n "$url" ] || url="$(env_value REDIS_URL)"
    printf -v "REDIS_URL_$upper" '%s' "$url"
    printf -v "REDIS_PASSWORD_$upper" '%s' "$password"
    export "REDIS_URL_$upper" "REDIS_PASSWORD_$upper"
done
REDIS_KEY_PREFIX="$(env_value REDIS_KEY_PREFIX)"
REDIS_KEY_PREFIX="${REDIS_KEY_PREFIX:-exchange}"
export REDIS_KEY_PREFIX

compose_files=(-f "$here/docker-compose.yml")
case "$(env_value EXPOSE_MARKETDATA | tr '[:upper:]' '[:lower:]')" in
    1 | true | yes | on)
        compose_files+=(-f "$here/docker-compose.public-marketdata.yml")
        info "EXPOSE_MARKETDATA: marketdata publishes :8094"
        ;;
esac
case "$(env_value ADMIN_ON_PUBLIC_PORT | tr '[:upper:]' '[:lower:]')" in
    1 | true | yes | on)
        compose_files+=(-f "$here/docker-compose.admin-on-public-port.yml")
        info "ADMIN_ON_PUBLIC_PORT: the admin API is served on the public port 8080"
        ;;
esac

# Compose v2: the files use `name:` (the fixed project name), which
# docker-compose 1.x refuses.
if [ -n "${DOCKER_COMPOSE:-}" ]; then
    read -r -a compose_cmd <<<"$DOCKER_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif docker-compose version --short 2>/dev/null | grep -qE '^v?2\.'; then
    compose_cmd=(docker-compose)
elif [ "$dry_run" = 1 ]; then
    compose_cmd=(docker compose)
else
    die "Docker Compose v2 is not installed (docker-compose 1.x cannot read these files)" \
        "install Docker Engine with the compose plugin (docker-compose-plugin): \`docker compose version\` must work"
fi
compose=("${compose_cmd[@]}" "${compose_files[@]}")

run() {
    printf '    + %s\n' "$*"
    [ "$dry_run" = 1 ] && return 0
    "$@"
}

# literal NAME VALUE: adds NAME='VALUE' to literal_lines (for deploy/prod/.env),
# single-quoted so compose takes it literally (no $ expansion). Runs in this
# shell, never in a $(...), so its die stops the deploy.
literal_lines=()
literal() {
    case "$2" in
        *"'"*) die "$1 contains a single quote, which deploy/prod/.env cannot hold; percent-encode it (%27) in a URL" ;;
    esac
    literal_lines+=("$1='$2'")
}

# Records what is deployed; compose reads deploy/prod/.env for interpolation.
# Every value is checked before the file is touched; it is written whole
# (a temporary file renamed over it) or not at all.
write_state() {
    local previous="" user upper var
    literal_lines=()
    literal LOCAL_DB_PASSWORD "$LOCAL_DB_PASSWORD"
    for user in "${redis_users[@]}"; do
        upper="$(printf '%s' "$user" | tr '[:lower:]' '[:upper:]')"
        var="REDIS_URL_$upper"
        literal "$var" "${!var}"
        var="REDIS_PASSWORD_$upper"
        literal "$var" "${!var}"
    done
    if [ -f "$here/.env" ]; then
        previous="$(sed -n 's/^APP_VERSION=//p' "$here/.env" | tail -n 1)"
    fi
    [ "$previous" = "$APP_VERSION" ] && previous="$(sed -n 's/^PREVIOUS_APP_VERSION=//p' "$here/.env" | tail -n 1)"
    if [ "$dry_run" = 1 ]; then
        info "(dry run) would write $here/.env with APP_VERSION=$APP_VERSION"
        return 0
    fi
    (
        umask 077
        cat >"$here/.new.env" <<EOF
# Written by deploy/prod/deploy.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ); do not edit.
APP_VERSION=$APP_VERSION
PREVIOUS_APP_VERSION=$previous
EXCHANGE_IMAGE=$EXCHANGE_IMAGE
PROD_ENV_FILE=$PROD_ENV_FILE
BACKUP_ENV_FILE=$BACKUP_ENV_FILE
PUBLISH_ADDR=$PUBLISH_ADDR
ADMIN_PUBLISH_ADDR=$ADMIN_PUBLISH_ADDR
COMPOSE_PROFILES=$COMPOSE_PROFILES
VCS_REF=$VCS_REF
REDIS_KEY_PREFIX=$REDIS_KEY_PREFIX
EOF
        printf '%s\n' "${literal_lines[@]}" >>"$here/.new.env"
        mv -f "$here/.new.env" "$here/.env"
    ) || die "cannot write $here/.env"
}

# ---- 2. image ------------------------------------------------------------------------
current_step=image
step "image $image"
docker_ok=0
if [ "$dry_run" != 1 ]; then
    command -v docker >/dev/null 2>&1 || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon" "is it running, and may this user use it (docker group)?"
    docker_ok=1
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    docker_ok=1 # a dry run still looks (read only) for the image
fi
have_image=unknown
if [ "$docker_ok" = 1 ]; then
    if docker image inspect "$image" >/dev/null 2>&1; then have_image=1; else have_image=0; fi
fi

# The tracked files that go into the image and differ from HEAD: everything
# but deploy/, tests/ops/ and .ci/ (.dockerignore keeps them out of the build
# context), and deploy/prod/Dockerfile, which says how the image is built.
image_changes() {
    git -C "$root" status --porcelain --untracked-files=no -- . \
        ':(exclude)deploy' ':(exclude)tests/ops' ':(exclude).ci' 2>/dev/null
    git -C "$root" status --porcelain --untracked-files=no -- deploy/prod/Dockerfile 2>/dev/null
}

# Which versions this checkout is: the version tags at HEAD (without a
# leading v) and `git describe --tags --always --abbrev=12` of HEAD. Empty
# when it is no git checkout, or when it has image_changes.
checkout_versions() {
    git -C "$root" rev-parse -q --verify HEAD >/dev/null 2>&1 || return 0
    if [ -n "$(image_changes)" ]; then
        return 0
    fi
    { git -C "$root" tag --points-at HEAD; git -C "$root" describe --tags --always --abbrev=12 HEAD; } 2>/dev/null |
        sed 's/^v\([0-9]\)/\1/'
}
build_refusal="" # why this checkout may not be built as $APP_VERSION (empty: it may)
if ! checkout_versions | grep -qxF -- "$APP_VERSION"; then
    described="$(git -C "$root" describe --tags --always --abbrev=12 HEAD 2>/dev/null || echo 'no git checkout')"
    if [ -n "$(image_changes)" ]; then
        described="$described with uncommitted changes"
    fi
    build_refusal="this checkout ($described) is not version $APP_VERSION: building it would label other code as $APP_VERSION"
fi

if [ "${PULL:-0}" = 1 ]; then
    run docker pull "$image" \
        || die "cannot pull $image" "is the tag pushed, and is this host logged in (docker login)?"
elif [ "$have_image" = 1 ] && [ "${FORCE_BUILD:-0}" != 1 ]; then
    info "$image exists on this host: using it, nothing is built (FORCE_BUILD=1 rebuilds from this checkout, if it is $APP_VERSION)"
elif [ "$have_image" = unknown ]; then
    # Dry run without a Docker daemon: say what a real run would do.
    if [ -n "$build_refusal" ]; then
        info "(dry run) a real run uses $image if this host has it; else it refuses to build: $build_refusal"
    else
        info "(dry run) a real run uses $image if this host has it; else it builds it from this checkout:"
        run docker build -f "$here/Dockerfile" --build-arg "APP_VERSION=$APP_VERSION" --build-arg "VCS_REF=$VCS_REF" -t "$image" "$root"
    fi
else
    if [ -n "$build_refusal" ]; then
        if [ "$have_image" = 1 ]; then
            die "FORCE_BUILD=1, but $build_refusal; nothing was changed" \
                "deploy the existing image: unset FORCE_BUILD" \
                "or rebuild from the release: git checkout v$APP_VERSION && FORCE_BUILD=1 deploy/prod/deploy.sh"
        fi
        die "$image is not on this host, and $build_refusal; nothing was changed" \
            "PULL=1 APP_VERSION=$APP_VERSION deploy/prod/deploy.sh   (the image from your registry: EXCHANGE_IMAGE)" \
            "or build it from its release: git checkout v$APP_VERSION && APP_VERSION=$APP_VERSION deploy/prod/deploy.sh" \
            "(docker image ls ${EXCHANGE_IMAGE} lists the versions this host has)"
    fi
    info "building $image from $root at $VCS_REF (a release build takes several minutes)"
    run docker build -f "$here/Dockerfile" --build-arg "APP_VERSION=$APP_VERSION" --build-arg "VCS_REF=$VCS_REF" -t "$image" "$root" \
        || die "docker build failed (output above)" \
            "fix the build, or deploy a version whose image exists: APP_VERSION=<previous> deploy/prod/deploy.sh"
fi
write_state

# ---- 3. local databases ------------------------------------------------------------
wait_healthy() {
    local service="$1" deadline=$((SECONDS + ready_timeout)) id status
    [ "$dry_run" = 1 ] && return 0
    while :; do
        id="$("${compose[@]}" ps -q "$service" 2>/dev/null || true)"
        status="$( [ -n "$id" ] && docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)"
        [ "$status" = healthy ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 2
    done
}
case ",$COMPOSE_PROFILES," in
    *,local-db,*)
        current_step=local-db
        step "local PostgreSQL and Redis (profile local-db)"
        run "${compose[@]}" up -d postgres redis || die "cannot start the local postgres/redis containers"
        for svc in postgres redis; do
            wait_healthy "$svc" || die "$svc is not healthy after ${ready_timeout}s" \
                "docker compose -f deploy/prod/docker-compose.yml logs --tail=50 $svc"
        done
        ;;
esac

# ---- 4. migrations ---------------------------------------------------------------------
current_step=migrate
if [ -n "$(env_value DB_URL)" ]; then
    step "migrate"
    if [ "${MIGRATE_WITH:-image}" = psql ]; then
        run env DB_URL="$(env_value DB_URL)" "$root/exchange-common/scripts/migrate.sh" \
            || die "migrations failed; the running services were not touched" \
                "a failed file is rolled back whole; fix it or the database, then deploy again"
    else
        run "${compose[@]}" run --rm --no-deps migrate \
            || die "migrations failed; the running services were not touched" \
                "see the output above; a failed file is rolled back whole" \
                "or apply them from a host with psql: DB_URL=... exchange-common/scripts/migrate.sh"
    fi
else
    step "migrate: skipped (DB_URL is not set in the env file)"
fi

# ---- 5. up ---------------------------------------------------------------------------------
current_step=up
step "start $image"
run "${compose[@]}" up -d gateway order matching clearing marketdata wallet \
    || die "docker compose up failed (output above)" \
        "roll back: APP_VERSION=<previous> deploy/prod/deploy.sh"

# ---- 6. ready ------------------------------------------------------------------------------
current_step=ready
step "waiting up to ${ready_timeout}s for /ready"
declare -A ports=([gateway]=8080 [order]=8091 [matching]=8092 [clearing]=8093 [marketdata]=8094 [wallet]=8095)
if [ "$dry_run" = 1 ]; then
    for svc in gateway order matching clearing marketdata wallet; do
        info "(dry run) would wait for $svc /ready on :${ports[$svc]}"
    done
    step "dry run complete: nothing was changed"
    exit 0
fi
deadline=$((SECONDS + ready_timeout))
for svc in gateway order matching clearing marketdata wallet; do
    url="http://127.0.0.1:${ports[$svc]}/ready"
    while :; do
        if body="$("${compose[@]}" exec -T "$svc" curl -fsS --max-time 3 "$url" 2>/dev/null)"; then
            info "$svc ready: $body"
            break
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            body="$("${compose[@]}" exec -T "$svc" curl -sS --max-time 3 "$url" 2>&1 || true)"
            "${compose[@]}" logs --tail=40 "$svc" >&2 || true
            die "$svc is not ready after ${ready_timeout}s: ${body:-no answer}" \
                "its /ready names the failing dependency; logs are above" \
                "docs/RUNBOOK.md#service-not-ready; roll back: APP_VERSION=<previous> deploy/prod/deploy.sh"
        fi
        sleep 2
    done
done

step "deployed $image ($VCS_REF)"
info "verify end to end: ADMIN_TOKEN=... scripts/smoke.sh   (docs/RUNBOOK.md#verify)"
