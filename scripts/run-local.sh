#!/usr/bin/env bash
# `make run`: the whole system on this machine, in the foreground; Ctrl-C stops it.
#
# Redis and PostgreSQL: PGNM_REDIS_URL / PGNM_DATABASE_URL when set; otherwise the
# servers answering on the default ports; otherwise throwaway servers started from
# this machine's redis-server / initdb binaries under .run/ (removed on exit).
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR="$PWD/.run"
mkdir -p "$RUN_DIR/logs"
PIDS=()
CLEANUP=()

say() { printf 'run: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

cleanup() {
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for cmd in "${CLEANUP[@]}"; do eval "$cmd" || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- Redis -------------------------------------------------------------------
if [[ -n "${PGNM_REDIS_URL:-}" ]]; then
    say "Redis: using PGNM_REDIS_URL"
elif command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    export PGNM_REDIS_URL="redis://127.0.0.1:6379"
    say "Redis: using the server on 127.0.0.1:6379"
elif command -v redis-server >/dev/null; then
    port=$(free_port)
    mkdir -p "$RUN_DIR/redis"
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$RUN_DIR/redis" \
        --logfile "$RUN_DIR/logs/redis.log" &
    PIDS+=($!)
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    export PGNM_REDIS_URL="redis://127.0.0.1:$port"
    say "Redis: started a throwaway server on 127.0.0.1:$port"
else
    die "Redis is missing: nothing answers on 127.0.0.1:6379 and redis-server is not installed (apt install redis-server), or set PGNM_REDIS_URL"
fi

# --- PostgreSQL --------------------------------------------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [[ -n "${PGNM_DATABASE_URL:-}" ]]; then
    say "PostgreSQL: using PGNM_DATABASE_URL"
elif command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
    export PGNM_DATABASE_URL="postgres://postgres@127.0.0.1:5432/pgnm"
    if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname = 'pgnm'" | grep -q 1; then
        psql -h 127.0.0.1 -U postgres -d postgres -qc "create database pgnm" \
            || die "PostgreSQL on 127.0.0.1:5432 answers but database pgnm cannot be created; set PGNM_DATABASE_URL"
    fi
    say "PostgreSQL: using database pgnm on 127.0.0.1:5432"
elif [[ -n "$pg_bin" && -x "$pg_bin/initdb" ]]; then
    port=$(free_port)
    data=$(mktemp -d /tmp/pgnm-pg.XXXXXX)
    as=()
    if [[ $(id -u) -eq 0 ]]; then  # PostgreSQL refuses to run as root
        id postgres >/dev/null 2>&1 || die "PostgreSQL cannot run as root and there is no postgres user"
        chown postgres "$data"
        as=(runuser -u postgres --)
    fi
    "${as[@]}" "$pg_bin/initdb" -D "$data/db" -U postgres --auth=trust >"$RUN_DIR/logs/initdb.log" 2>&1
    "${as[@]}" "$pg_bin/postgres" -D "$data/db" -p "$port" -k "$data" -c listen_addresses=127.0.0.1 \
        >"$RUN_DIR/logs/postgres.log" 2>&1 &
    PIDS+=($!)
    CLEANUP+=("rm -rf '$data'")
    for _ in $(seq 100); do "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
    "$pg_bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "create database pgnm"
    export PGNM_DATABASE_URL="postgres://postgres@127.0.0.1:$port/pgnm"
    say "PostgreSQL: started a throwaway server on 127.0.0.1:$port"
else
    die "PostgreSQL is missing: nothing answers on 127.0.0.1:5432 and initdb is not installed (apt install postgresql), or set PGNM_DATABASE_URL"
fi

# --- The services ------------------------------------------------------------
export PGNM_PREFIX="${PGNM_PREFIX:-pgnm-local}"
export PGNM_LOG="${PGNM_LOG:-info}"
export PGNM_NODES_FILE="${PGNM_NODES_FILE:-$PWD/deploy/nodes.example.yaml}"
export PGNM_ALLOW_SECRET_REVEAL="${PGNM_ALLOW_SECRET_REVEAL:-true}"
# The example nodes file references these; real deployments set them from a Secret.
export BTC_RPC_PASSWORD="${BTC_RPC_PASSWORD:-pgnm-local}"
export ETH_PROVIDER_KEY="${ETH_PROVIDER_KEY:-local-placeholder-key}"
cargo build --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/debug"

"$bin/pgnm-checker" migrate

# The demo fleet: simulated nodes that deploy/nodes.example.yaml points at.
(PGNM_SIM_NODES="$PWD/deploy/sim-nodes.json" exec "$bin/pgnm-sim" --listen 127.0.0.1:8600) > >(sed -u "s/^/[sim] /") 2>&1 &
PIDS+=($!)
# Admin servers (/healthz, /readyz, /metrics) on 127.0.0.1:9101..9104.
admin_port=9101
for svc in router checker scheduler jrpc-proxy; do
    (PGNM_INSTANCE="$svc-1" PGNM_ADMIN_ADDR="127.0.0.1:$admin_port" exec "$bin/pgnm-$svc") > >(sed -u "s/^/[$svc] /") 2>&1 &
    PIDS+=($!)
    admin_port=$((admin_port + 1))
done

say "pgnm is running under prefix $PGNM_PREFIX; logs below, Ctrl-C stops everything."
say "try, in another shell:  export PGNM_REDIS_URL=$PGNM_REDIS_URL PGNM_PREFIX=$PGNM_PREFIX"
say "                         $bin/pgnm status;  $bin/pgnm best evm-dev;  $bin/pgnm tasks list"
say "metrics and readiness:  curl 127.0.0.1:9102/metrics;  curl 127.0.0.1:9101/readyz"
wait -n "${PIDS[@]}" || true
say "a process exited; stopping the rest"
