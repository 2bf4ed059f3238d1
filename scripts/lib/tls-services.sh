# shellcheck shell=bash
# Provides a PostgreSQL and a Redis that speak only TLS, for the tests of
# the backends' TLS (exchange/tests/tls.rs). Source scripts/lib/local-services.sh
# first (log, die, apt_install, pg_bindir, as_pg).
#
# When TLS_DB_URL, TLS_REDIS_URL and TLS_CA_FILE are all set, they are used as
# they are. Otherwise `tls_services_up REPO_ROOT`, with data under
# .local/tls/:
#   - makes a CA on the fly with openssl, a server certificate for
#     `localhost` and 127.0.0.1 signed by it, a client certificate signed by
#     it, and a second, unrelated CA (the "wrong" one);
#   - starts a private PostgreSQL cluster (port EXCHANGE_TLS_PG_PORT, default
#     54349) with ssl=on that accepts TCP only over TLS (hostssl) and only
#     with a password (scram-sha-256);
#   - starts a Redis that listens only on a TLS port (EXCHANGE_TLS_REDIS_PORT,
#     default 63819, `--port 0`), requires a client certificate signed by
#     the CA, and an ACL user with a password (the default user is off);
# and exports
#   TLS_DB_URL         postgres://postgres:PASSWORD@localhost:PORT/postgres?sslmode=verify-full&sslrootcert=CA
#   TLS_REDIS_URL      rediss://exchange:PASSWORD@localhost:PORT/0
#   TLS_CA_FILE        the CA both servers' certificate chains to
#   TLS_WRONG_CA_FILE  a CA that signed neither
#   TLS_CLIENT_CERT_FILE, TLS_CLIENT_KEY_FILE   Redis' client certificate (key 0600)
#   EXCHANGE_TLS_SERVICES=1   so the tests fail, rather than skip, without them
# `tls_services_down REPO_ROOT` stops only the servers `tls_services_up`
# started in this shell (EXCHANGE_TLS_PG_STARTED, EXCHANGE_TLS_REDIS_STARTED),
# never ones it found already running.
# PostgreSQL's password is kept with its data directory (the cluster's own
# copy, exchange-tls.password), so a new .local/tls never meets an older
# cluster with another password (the data may be outside .local: see tls_pg_up).

EXCHANGE_TLS_PG_PORT="${EXCHANGE_TLS_PG_PORT:-54349}"
EXCHANGE_TLS_REDIS_PORT="${EXCHANGE_TLS_REDIS_PORT:-63819}"
# Set to 1 by tls_services_up for each server it starts (not exported: a
# child shell's tls_services_down must not stop this shell's servers).
EXCHANGE_TLS_PG_STARTED=0
EXCHANGE_TLS_REDIS_STARTED=0

# tls_make_certs DIR: the CAs and certificates (kept while still valid).
tls_make_certs() {
    local dir="$1" ext
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    if [ -f "$dir/server.pem" ] && [ -f "$dir/client.pem" ] && [ -f "$dir/wrong-ca.pem" ] &&
        openssl x509 -checkend 86400 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
        return 0
    fi
    log "making a test CA and certificates in $dir"
    mkdir -p "$dir"
    ext="$(mktemp)"
    (
        set -e
        umask 077
        cd "$dir"
        ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        # shellcheck disable=SC2086 # $ec is several options on purpose
        openssl req -x509 $ec -keyout ca.key -out ca.pem -days 3650 -subj "/CN=exchange test CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        # shellcheck disable=SC2086
        openssl req -x509 $ec -keyout wrong-ca.key -out wrong-ca.pem -days 3650 -subj "/CN=some other CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$ext"
        # shellcheck disable=SC2086
        openssl req $ec -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
            -extfile "$ext" -out server.pem 2>/dev/null
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=clientAuth" >"$ext"
        # shellcheck disable=SC2086
        openssl req $ec -keyout client.key -out client.csr -subj "/CN=exchange-client" 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
            -extfile "$ext" -out client.pem 2>/dev/null
        rm -f server.csr client.csr ca.srl
        chmod 644 ca.pem wrong-ca.pem server.pem client.pem
        chmod 600 ca.key wrong-ca.key server.key client.key
    ) || { rm -f "$ext"; die "openssl could not make the test certificates in $dir"; }
    rm -f "$ext"
}

# A password made once per checkout (hex: nothing to escape in a URL).
tls_password() {
    local file="$1"
    if [ ! -s "$file" ]; then
        (umask 077 && openssl rand -hex 16 >"$file") || die "cannot write $file"
    fi
    cat "$file"
}

# tls_pg_up ROOT DIR: the cluster, its password in tls_pg_password.
tls_pg_up() {
    local root="$1" dir="$2" bindir data pwfile keep running=0 found_running=0
    bindir=$(pg_bindir)
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    data="$root/.local/pg-tls"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data" && chmod 700 "$data"
    if ! as_pg test -w "$data"; then
        data="${TMPDIR:-/tmp}/exchange-pg-tls-$(printf '%s' "$root" | cksum | cut -d' ' -f1)"
        mkdir -p "$data"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$data" && chmod 700 "$data"
        log "postgres cannot write under $root/.local; using $data"
    fi
    # The password lives with the cluster: the data directory may be the
    # /tmp fallback above, which outlives .local/tls (and its pg.password).
    keep="$data/exchange-tls.password"
    as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1 && running=1 found_running=1
    if [ ! -f "$data/PG_VERSION" ]; then
        log "initdb $data (TLS only, password auth)"
        tls_pg_password="$(tls_password "$dir/pg.password")"
        pwfile="$(mktemp)"
        printf '%s\n' "$tls_pg_password" >"$pwfile"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$pwfile"
        as_pg "$bindir/initdb" -D "$data" -U postgres --pwfile="$pwfile" --auth-local=trust \
            --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null ||
            { rm -f "$pwfile"; die "initdb failed in $data"; }
        rm -f "$pwfile"
        tls_keep_password "$keep" "$tls_pg_password"
        # TCP only over TLS, only with the password.
        as_pg sh -c "cat >'$data/pg_hba.conf'" <<'EOF'
local     all all              trust
hostssl   all all 127.0.0.1/32 scram-sha-256
hostssl   all all ::1/128      scram-sha-256
hostnossl all all 0.0.0.0/0    reject
hostnossl all all ::/0         reject
EOF
    elif [ -s "$keep" ]; then
        tls_pg_password="$(cat "$keep")"
    else
        # A cluster made before its password was kept with it: the password
        # is unknown, so set a new one in single-user mode (server stopped).
        tls_pg_password="$(tls_password "$dir/pg.password")"
        log "setting the password of the existing cluster $data"
        if [ "$running" = 1 ]; then
            as_pg "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null || die "cannot stop PostgreSQL (TLS) in $data"
            running=0
        fi
        printf "ALTER ROLE postgres PASSWORD '%s';\n" "$tls_pg_password" |
            as_pg "$bindir/postgres" --single -D "$data" postgres >/dev/null ||
            die "cannot set the password of the cluster in $data (remove it to start afresh)"
        tls_keep_password "$keep" "$tls_pg_password"
    fi
    # .local/tls/pg.password always says the cluster's password.
    (umask 077 && printf '%s\n' "$tls_pg_password" >"$dir/pg.password") || die "cannot write $dir/pg.password"
    # PostgreSQL wants its key owned by itself and private.
    install -m 600 "$dir/server.key" "$data/server.key"
    install -m 644 "$dir/server.pem" "$data/server.crt"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data/server.key" "$data/server.crt"
    if [ "$running" = 1 ]; then
        # Already running (not started here): it re-reads the certificates,
        # which a new .local/tls may have replaced.
        as_pg "$bindir/pg_ctl" -D "$data" reload >/dev/null 2>&1 || true
    else
        log "starting PostgreSQL (TLS only) on 127.0.0.1:$EXCHANGE_TLS_PG_PORT ($data)"
        as_pg "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
            -o "-p $EXCHANGE_TLS_PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=100 -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null || { tail -n 20 "$data/server.log" >&2; die "PostgreSQL (TLS) did not start"; }
        # Restarted after setting its password: it was running before, so
        # tls_services_down leaves it running.
        [ "$found_running" = 1 ] || EXCHANGE_TLS_PG_STARTED=1
    fi
    export EXCHANGE_TLS_PG_DATA="$data" EXCHANGE_TLS_PG_BINDIR="$bindir"
}

# tls_keep_password FILE PASSWORD: the cluster's copy of its password.
tls_keep_password() {
    (umask 077 && printf '%s\n' "$2" >"$1") || die "cannot write $1"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$1"
    return 0
}

# A value for redis.conf: double-quoted, \ and " escaped (a path may hold spaces).
tls_conf_quote() {
    local v="${1//\\/\\\\}"
    printf '"%s"' "${v//\"/\\\"}"
}

# redis-cli against the TLS Redis, authenticated.
tls_redis_cli() {
    local dir="$1"
    shift
    REDISCLI_AUTH="$(cat "$dir/redis.password")" redis-cli --tls --cacert "$dir/ca.pem" \
        --cert "$dir/client.pem" --key "$dir/client.key" -h localhost -p "$EXCHANGE_TLS_REDIS_PORT" \
        --user exchange --no-auth-warning "$@"
}

tls_redis_up() {
    local root="$1" dir="$2" password="$3" rdir
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
    rdir="$root/.local/redis-tls"
    mkdir -p "$rdir"
    if tls_redis_cli "$dir" ping >/dev/null 2>&1; then
        return 0
    fi
    log "starting Redis (TLS only, ACL user) on 127.0.0.1:$EXCHANGE_TLS_REDIS_PORT ($rdir)"
    (
        umask 077
        cat >"$rdir/redis.conf" <<EOF
port 0
bind 127.0.0.1
tls-port $EXCHANGE_TLS_REDIS_PORT
tls-cert-file $(tls_conf_quote "$dir/server.pem")
tls-key-file $(tls_conf_quote "$dir/server.key")
tls-ca-cert-file $(tls_conf_quote "$dir/ca.pem")
tls-auth-clients yes
user default off
user exchange on >$password ~* &* +@all
daemonize yes
dir $(tls_conf_quote "$rdir")
pidfile $(tls_conf_quote "$rdir/redis.pid")
logfile $(tls_conf_quote "$rdir/redis.log")
save ""
appendonly no
EOF
    )
    if ! redis-server "$rdir/redis.conf" >/dev/null 2>&1; then
        tail -n 20 "$rdir/redis.log" >&2 2>/dev/null
        die "Redis (TLS) did not start: this redis-server may be built without TLS (redis-server --version; Debian's is built with it)"
    fi
    for _ in $(seq 50); do
        tls_redis_cli "$dir" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    tls_redis_cli "$dir" ping >/dev/null 2>&1 || {
        tail -n 20 "$rdir/redis.log" >&2 2>/dev/null
        die "Redis (TLS) is not answering on $EXCHANGE_TLS_REDIS_PORT"
    }
    EXCHANGE_TLS_REDIS_STARTED=1
}

# tls_services_up REPO_ROOT: exports TLS_DB_URL, TLS_REDIS_URL, TLS_CA_FILE,
# TLS_WRONG_CA_FILE, TLS_CLIENT_CERT_FILE, TLS_CLIENT_KEY_FILE.
tls_services_up() {
    local root="$1" dir redis_password
    export EXCHANGE_TLS_SERVICES=1
    if [ -n "${TLS_DB_URL:-}" ] && [ -n "${TLS_REDIS_URL:-}" ] && [ -n "${TLS_CA_FILE:-}" ]; then
        log "using the configured TLS_DB_URL, TLS_REDIS_URL and TLS_CA_FILE"
        return 0
    fi
    dir="$root/.local/tls"
    tls_make_certs "$dir"
    tls_pg_up "$root" "$dir"
    redis_password="$(tls_password "$dir/redis.password")"
    tls_redis_up "$root" "$dir" "$redis_password"
    export TLS_DB_URL="postgres://postgres:$tls_pg_password@localhost:$EXCHANGE_TLS_PG_PORT/postgres?sslmode=verify-full&sslrootcert=$dir/ca.pem"
    export TLS_REDIS_URL="rediss://exchange:$redis_password@localhost:$EXCHANGE_TLS_REDIS_PORT/0"
    export TLS_CA_FILE="$dir/ca.pem" TLS_WRONG_CA_FILE="$dir/wrong-ca.pem"
    export TLS_CLIENT_CERT_FILE="$dir/client.pem" TLS_CLIENT_KEY_FILE="$dir/client.key"
    export EXCHANGE_TLS_DIR="$dir"
}

# tls_services_down REPO_ROOT: stops what tls_services_up started in this
# shell; a server it found running is left running.
tls_services_down() {
    local root="$1" bindir
    if [ "${EXCHANGE_TLS_PG_STARTED:-0}" = 1 ] && [ -n "${EXCHANGE_TLS_PG_DATA:-}" ]; then
        bindir="${EXCHANGE_TLS_PG_BINDIR:-$(pg_bindir)}"
        as_pg "$bindir/pg_ctl" -D "$EXCHANGE_TLS_PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
        EXCHANGE_TLS_PG_STARTED=0
    fi
    if [ "${EXCHANGE_TLS_REDIS_STARTED:-0}" = 1 ] && [ -n "${EXCHANGE_TLS_DIR:-}" ]; then
        tls_redis_cli "$EXCHANGE_TLS_DIR" shutdown nosave >/dev/null 2>&1 || true
        EXCHANGE_TLS_REDIS_STARTED=0
    fi
    : "$root"
}
