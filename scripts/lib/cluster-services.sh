# shellcheck shell=bash
# Provides a real Redis Cluster for the tests that run the exchange on one
# (exchange/tests/redis_cluster.rs). Source scripts/lib/local-services.sh
# first (log, die, apt_install).
#
# When CLUSTER_REDIS_URL and CLUSTER_REDIS_NODES are both set, they are used
# as they are. Otherwise `cluster_services_up REPO_ROOT` starts three
# redis-server in cluster mode, masters only, on 127.0.0.1 ports
# EXCHANGE_CLUSTER_PORTS (default "46379 46380 46381"; each node's cluster
# bus is its port + 10000, so the ports stay below 55536), with data under
# .local/redis-cluster/<port>/, joins them with
# `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`
# (every slot assigned: 0-5460, 5461-10922, 10923-16383), waits for
# `cluster_state:ok`, and exports
#   CLUSTER_REDIS_URL    redis://127.0.0.1:46379  (the exchange's REDIS_URL)
#   CLUSTER_REDIS_NODES  127.0.0.1:46380,127.0.0.1:46381  (its REDIS_CLUSTER_NODES)
#   EXCHANGE_CLUSTER_SERVICES=1   so the tests fail, rather than skip, without them
# `cluster_services_down REPO_ROOT` stops only the nodes `cluster_services_up`
# started in this shell, never ones it found already running.

EXCHANGE_CLUSTER_PORTS="${EXCHANGE_CLUSTER_PORTS:-46379 46380 46381}"
# The ports of the nodes started here (not exported: a child shell's
# cluster_services_down must not stop this shell's nodes).
EXCHANGE_CLUSTER_STARTED=""

# cluster_node_up ROOT PORT: one empty cluster-mode node (a fresh node
# each run: a node keeps its identity and slots in nodes.conf, which a
# previous run's cluster may have left inconsistent).
cluster_node_up() {
    local root="$1" port="$2" dir
    dir="$root/.local/redis-cluster/$port"
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
        --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 5000 \
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --save "" --appendonly no >/dev/null || die "Redis Cluster node on $port did not start"
    for _ in $(seq 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -p "$port" ping >/dev/null 2>&1 || {
        tail -n 20 "$dir/redis.log" >&2 2>/dev/null
        die "Redis Cluster node is not answering on $port"
    }
    EXCHANGE_CLUSTER_STARTED="$EXCHANGE_CLUSTER_STARTED $port"
}

# cluster_services_up REPO_ROOT: exports CLUSTER_REDIS_URL and CLUSTER_REDIS_NODES.
cluster_services_up() {
    local root="$1" port first="" others="" addrs=() state=""
    export EXCHANGE_CLUSTER_SERVICES=1
    if [ -n "${CLUSTER_REDIS_URL:-}" ] && [ -n "${CLUSTER_REDIS_NODES:-}" ]; then
        log "using the configured CLUSTER_REDIS_URL and CLUSTER_REDIS_NODES"
        return 0
    fi
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
    for port in $EXCHANGE_CLUSTER_PORTS; do
        [ "$port" -lt 55536 ] || die "EXCHANGE_CLUSTER_PORTS: $port + 10000 (its cluster bus) is not a port"
        cluster_node_up "$root" "$port"
        addrs+=("127.0.0.1:$port")
        if [ -z "$first" ]; then first="$port"; else others="${others:+$others,}127.0.0.1:$port"; fi
    done
    [ "${#addrs[@]}" -ge 3 ] || die "EXCHANGE_CLUSTER_PORTS: a Redis Cluster needs at least 3 masters"
    state="$(redis-cli -p "$first" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_state://p')"
    if [ "$state" != ok ]; then
        log "creating a Redis Cluster of ${#addrs[@]} masters on ${addrs[*]} (.local/redis-cluster)"
        redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >/dev/null ||
            die "redis-cli --cluster create failed (a node already in another cluster? stop it and remove .local/redis-cluster)"
        for _ in $(seq 100); do
            state=ok
            for port in $EXCHANGE_CLUSTER_PORTS; do
                redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok' || state=""
            done
            [ "$state" = ok ] && break
            sleep 0.1
        done
        [ "$state" = ok ] || die "the Redis Cluster on ${addrs[*]} did not reach cluster_state:ok"
    fi
    export CLUSTER_REDIS_URL="redis://127.0.0.1:$first"
    export CLUSTER_REDIS_NODES="$others"
}

# cluster_services_down REPO_ROOT: stops the nodes cluster_services_up
# started in this shell; nodes it found running are left running.
cluster_services_down() {
    local root="$1" port
    for port in $EXCHANGE_CLUSTER_STARTED; do
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    EXCHANGE_CLUSTER_STARTED=""
    : "$root"
}
