#!/usr/bin/env bash
# A throwaway three-master Redis Cluster on loopback, for the cluster-mode tests.
#   scripts/redis-cluster.sh start DIR   # starts it (data and logs under DIR), prints its URL
#   scripts/redis-cluster.sh stop DIR    # stops it and removes DIR
# Ports: PGNM_CLUSTER_PORTS (default "7101 7102 7103").
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?a directory for the cluster files}
read -r -a ports <<< "${PGNM_CLUSTER_PORTS:-7101 7102 7103}"

stop() {
    for port in "${ports[@]}"; do
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
}

case "$cmd" in
start)
    stop
    mkdir -p "$dir"
    for port in "${ports[@]}"; do
        redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 2000 \
            --save "" --appendonly no --dir "$dir" --logfile "$dir/redis-$port.log" --daemonize yes
    done
    for port in "${ports[@]}"; do
        for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    nodes=()
    for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
        || { cat "$dir/create.log" >&2; exit 1; }
    for _ in $(seq 100); do
        redis-cli -p "${ports[0]}" cluster info | grep -q '^cluster_state:ok' && break
        sleep 0.1
    done
    redis-cli -p "${ports[0]}" cluster info | grep -q '^cluster_state:ok' || { echo "cluster not ok" >&2; exit 1; }
    query=""
    for port in "${ports[@]:1}"; do query+="${query:+&}node=127.0.0.1:$port"; done
    echo "redis-cluster://127.0.0.1:${ports[0]}?$query"
    ;;
stop) stop ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
