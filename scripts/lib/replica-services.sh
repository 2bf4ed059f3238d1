# shellcheck shell=bash
# Provides a streaming read replica of the private PostgreSQL that
# scripts/lib/local-services.sh starts, for the read-replica tests
# (exchange/tests/read_replica.rs). Source local-services.sh first (log,
# die, pg_bindir, as_pg) and call local_services_up before this.
#
# When REPLICA_DB_URL is set, it is used as it is (a streaming replica of
# DB_URL's server). Otherwise, when local-services.sh started the primary
# (EXCHANGE_PG_DATA set), `replica_services_up REPO_ROOT`:
#   - makes the replica with `pg_basebackup -R` (streaming, standby.signal
#     and primary_conninfo written) into .local/pg-replica, afresh whenever
#     it is not running, so it never meets a primary it does not follow;
#   - starts it on 127.0.0.1:EXCHANGE_REPLICA_PG_PORT (default 54359) and
#     waits until it streams;
# and exports
#   REPLICA_DB_URL     postgres://postgres@127.0.0.1:PORT/postgres (superuser:
#                      the tests pause and resume its replay)
#   EXCHANGE_REPLICA_PG_DATA, EXCHANGE_REPLICA_PG_BINDIR   so a test can stop
#                      and start it (replica_pg_stop / replica_pg_start)
#   EXCHANGE_REPLICA_SERVICES=1   so the tests fail, rather than skip, without it
# With an external DB_URL and no REPLICA_DB_URL there is no primary to copy:
# nothing is started, and the replica tests say they were skipped.
# `replica_services_down REPO_ROOT` stops only a replica started here.

export EXCHANGE_REPLICA_PG_PORT="${EXCHANGE_REPLICA_PG_PORT:-54359}"
# The primary keeps the WAL this slot has not received, so a replica a test
# stopped for a while catches up when started again; dropped when the
# replica is (a slot nobody reads would keep WAL for ever).
EXCHANGE_REPLICA_SLOT=exchange_test_replica
# Not exported: a child shell's replica_services_down must not stop ours.
EXCHANGE_REPLICA_PG_STARTED=0

# The replica's start options: what local_pg_up gives the primary (a hot
# standby needs max_connections at least the primary's), on its own port.
replica_pg_start() {
    local data="${EXCHANGE_REPLICA_PG_DATA:?}" bindir="${EXCHANGE_REPLICA_PG_BINDIR:?}"
    as_pg "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
        -o "-p $EXCHANGE_REPLICA_PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=400 -c hot_standby=on -c fsync=off" \
        start >/dev/null || { tail -n 20 "$data/server.log" >&2; die "PostgreSQL replica did not start"; }
}

# Stops the replica at once (as a crash would look to its clients).
replica_pg_stop() {
    as_pg "${EXCHANGE_REPLICA_PG_BINDIR:?}/pg_ctl" -D "${EXCHANGE_REPLICA_PG_DATA:?}" -m immediate -w stop >/dev/null
}

# Drops the primary's slot for the replica, unless a replica streams from it.
replica_drop_slot() {
    psql "$DB_URL" -X -q -At -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
        WHERE slot_name = '$EXCHANGE_REPLICA_SLOT' AND NOT active" >/dev/null 2>&1 || true
}

replica_pg_up() {
    local root="$1" bindir data url
    bindir="${EXCHANGE_PG_BINDIR:-$(pg_bindir)}"
    data="$root/.local/pg-replica"
    # The same place rule as the primary's (local_pg_up): the postgres
    # user must reach it, else a folder under /tmp.
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
    if ! as_pg test -w "$data"; then
        data="${TMPDIR:-/tmp}/exchange-pg-replica-$(printf '%s' "$root" | cksum | cut -d' ' -f1)"
        mkdir -p "$data"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
        log "postgres cannot write under $root/.local; using $data"
    fi
    export EXCHANGE_REPLICA_PG_DATA="$data" EXCHANGE_REPLICA_PG_BINDIR="$bindir"
    url="postgres://postgres@127.0.0.1:$EXCHANGE_REPLICA_PG_PORT/postgres"
    if ! as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        # A copy made now follows this primary; an older one may follow a
        # primary since re-initialised, or miss WAL it recycled.
        log "pg_basebackup -R of 127.0.0.1:$EXCHANGE_PG_PORT into $data"
        find "$data" -mindepth 1 -delete
        replica_drop_slot
        as_pg "$bindir/pg_basebackup" -h 127.0.0.1 -p "$EXCHANGE_PG_PORT" -U postgres -D "$data" \
            -R -X stream -C -S "$EXCHANGE_REPLICA_SLOT" -c fast >/dev/null ||
            die "pg_basebackup from 127.0.0.1:$EXCHANGE_PG_PORT failed"
        chmod 700 "$data"
        log "starting the PostgreSQL replica on 127.0.0.1:$EXCHANGE_REPLICA_PG_PORT ($data)"
        replica_pg_start
        EXCHANGE_REPLICA_PG_STARTED=1
    fi
    # Streaming, not only started: the tests compare it with the primary.
    for _ in $(seq 100); do
        [ "$(psql "$url" -X -q -At -c "SELECT status FROM pg_stat_wal_receiver" 2>/dev/null)" = streaming ] && break
        sleep 0.1
    done
    [ "$(psql "$url" -X -q -At -c "SELECT status FROM pg_stat_wal_receiver" 2>/dev/null)" = streaming ] ||
        { tail -n 20 "$data/server.log" >&2; die "the PostgreSQL replica on $EXCHANGE_REPLICA_PG_PORT is not streaming from the primary"; }
    # A replay paused by an interrupted test would look like lag forever.
    psql "$url" -X -q -At -c "SELECT pg_wal_replay_resume()" >/dev/null
    export REPLICA_DB_URL="$url"
}

# replica_services_up REPO_ROOT: exports REPLICA_DB_URL (see above).
replica_services_up() {
    local root="$1"
    if [ -n "${REPLICA_DB_URL:-}" ]; then
        log "using the configured REPLICA_DB_URL"
        export EXCHANGE_REPLICA_SERVICES=1
        return 0
    fi
    if [ -z "${EXCHANGE_PG_DATA:-}" ]; then
        log "no read replica: DB_URL is a server this script did not start (set REPLICA_DB_URL to a streaming replica of it); the read-replica tests will be skipped"
        return 0
    fi
    replica_pg_up "$root"
    export EXCHANGE_REPLICA_SERVICES=1
}

# replica_services_down REPO_ROOT: stops the replica replica_services_up started.
replica_services_down() {
    if [ "${EXCHANGE_REPLICA_PG_STARTED:-0}" = 1 ] && [ -n "${EXCHANGE_REPLICA_PG_DATA:-}" ]; then
        as_pg "$EXCHANGE_REPLICA_PG_BINDIR/pg_ctl" -D "$EXCHANGE_REPLICA_PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
        replica_drop_slot
        EXCHANGE_REPLICA_PG_STARTED=0
    fi
    : "$1"
}
