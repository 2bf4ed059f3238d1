# shellcheck shell=bash
# Provides PostgreSQL and Redis for the local run and the test suite.
#
# When DB_URL and REDIS_URL are both set, they are used as they are.
# Otherwise a private PostgreSQL and Redis are started on their own ports
# (EXCHANGE_PG_PORT, default 54329; EXCHANGE_REDIS_PORT, default 63799) with
# data under .local/ in the repository, installing the Debian packages first
# when they are missing. Sourcing this file and calling `local_services_up`
# exports DB_URL (superuser URL of the `postgres` database) and REDIS_URL.

EXCHANGE_PG_PORT="${EXCHANGE_PG_PORT:-54329}"
EXCHANGE_REDIS_PORT="${EXCHANGE_REDIS_PORT:-63799}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing $*, and apt-get is not available to install it"
    [ "$(id -u)" -eq 0 ] || die "missing $*: install it (sudo apt-get install $*) or run as root"
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
}

# The newest PostgreSQL server binaries on the machine, installing them if none.
pg_bindir() {
    local dir
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$dir" ]; then
        apt_install postgresql postgresql-client >/dev/null
        dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
    fi
    [ -x "$dir/pg_ctl" ] || die "no PostgreSQL server binaries found under /usr/lib/postgresql"
    echo "$dir"
}

# Runs a command as the unprivileged `postgres` user when we are root
# (PostgreSQL refuses to run as root), as ourselves otherwise.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

local_pg_up() {
    local root="$1" bindir data
    bindir=$(pg_bindir)
    command -v psql >/dev/null 2>&1 || apt_install postgresql-client
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    data="$root/.local/pg"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data" && chmod 700 "$data"
    # The postgres user must be able to reach the data folder; a checkout
    # under a private home folder is not reachable, so fall back to /tmp.
    if ! as_pg test -w "$data"; then
        data="${TMPDIR:-/tmp}/exchange-pg-$(printf '%s' "$root" | cksum | cut -d' ' -f1)"
        mkdir -p "$data"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$data" && chmod 700 "$data"
        log "postgres cannot write under $root/.local; using $data"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        log "initdb $data"
        as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null \
            || die "initdb failed in $data"
    fi
    if ! as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "starting PostgreSQL on 127.0.0.1:$EXCHANGE_PG_PORT ($data)"
        # wal_level and max_wal_senders (PostgreSQL's defaults, said here so
        # that no EXCHANGE_PG_EXTRA_OPTS lowers them): the read replica of
        # scripts/lib/replica-services.sh streams from this server, over
        # initdb's `host replication all 127.0.0.1/32 trust` line.
        as_pg "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
            -o "-p $EXCHANGE_PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=400 -c shared_buffers=256MB ${EXCHANGE_PG_EXTRA_OPTS:-} -c wal_level=replica -c max_wal_senders=4" \
            start >/dev/null || { tail -n 20 "$data/server.log" >&2; die "PostgreSQL did not start"; }
    fi
    export EXCHANGE_PG_DATA="$data" EXCHANGE_PG_BINDIR="$bindir"
    export DB_URL="postgres://postgres@127.0.0.1:$EXCHANGE_PG_PORT/postgres"
}

local_redis_up() {
    local root="$1" dir
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
    dir="$root/.local/redis"
    mkdir -p "$dir"
    if ! redis-cli -p "$EXCHANGE_REDIS_PORT" ping >/dev/null 2>&1; then
        log "starting Redis on 127.0.0.1:$EXCHANGE_REDIS_PORT ($dir)"
        redis-server --port "$EXCHANGE_REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
            --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
            --save "" --appendonly no >/dev/null || die "Redis did not start"
        for _ in $(seq 50); do
            redis-cli -p "$EXCHANGE_REDIS_PORT" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
        redis-cli -p "$EXCHANGE_REDIS_PORT" ping >/dev/null 2>&1 || die "Redis is not answering on $EXCHANGE_REDIS_PORT"
    fi
    export REDIS_URL="redis://127.0.0.1:$EXCHANGE_REDIS_PORT"
}

# local_services_up REPO_ROOT: exports DB_URL and REDIS_URL.
local_services_up() {
    local root="$1"
    if [ -n "${DB_URL:-}" ] && [ -n "${REDIS_URL:-}" ]; then
        log "using the configured DB_URL and REDIS_URL"
        command -v psql >/dev/null 2>&1 || apt_install postgresql-client
        return 0
    fi
    [ -z "${DB_URL:-}" ] && local_pg_up "$root"
    [ -z "${REDIS_URL:-}" ] && local_redis_up "$root"
    return 0
}

# drop_run_data ADMIN_URL NAME: drops a benchmark run's database NAME and
# its Redis keys (all under the prefix NAME; REDIS_URL). Best effort.
drop_run_data() {
    local admin_url="$1" name="$2"
    psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $name" >/dev/null 2>&1 || true
    if command -v redis-cli >/dev/null 2>&1; then
        redis-cli -u "$REDIS_URL" --scan --pattern "$name:*" | xargs -r redis-cli -u "$REDIS_URL" DEL >/dev/null 2>&1 || true
    fi
}

# local_services_down REPO_ROOT: stops what local_services_up started.
local_services_down() {
    local root="$1" bindir
    if [ -n "${EXCHANGE_PG_DATA:-}" ]; then
        bindir="${EXCHANGE_PG_BINDIR:-$(pg_bindir)}"
        as_pg "$bindir/pg_ctl" -D "$EXCHANGE_PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    redis-cli -p "$EXCHANGE_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    : "$root"
}
