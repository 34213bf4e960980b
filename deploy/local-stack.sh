#!/usr/bin/env bash
# The docker-compose stack as plain processes (no Docker engine needed): the
# local Kafka broker (deploy/kafka/kafka.sh), then the trainers (one per
# shard of the model: trainer-0, trainer-1, ...), the synthetic producer and
# the serving endpoint with the same command lines and the same
# deploy/freshet.toml as docker-compose.yml's services.
#
#   local-stack.sh start     start everything; waits until serve answers /readyz
#   local-stack.sh stop      stop the freshet processes (SIGTERM, then SIGKILL);
#                            the broker keeps running (deploy/kafka/kafka.sh stop)
#   local-stack.sh status    which processes run, and their logs
#   local-stack.sh commands  the service command lines (CONFIG and LISTEN stand
#                            for the config path and serve's address)
#
# Environment:
#   FRESHET_BIN                the freshet binary (default: cargo build --release)
#   FRESHET_STACK_DIR          pids, logs, checkpoint   (default $FRESHET_CACHE_DIR/stack)
#   FRESHET_STACK_SERVE_PORT   serve's port             (default 8080)
#   FRESHET_STACK_METRICS_PORT trainer-0's metrics; trainer-k's on the port k above (default 9464)
#   FRESHET_STACK_SHARDS       shards of the model, one trainer each (default 2, as docker-compose.yml)
#   FRESHET_* configuration overrides pass through (e.g. FRESHET_MODEL).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${FRESHET_CACHE_DIR:-$HOME/.cache/freshet}
dir=${FRESHET_STACK_DIR:-$cache/stack}
serve_port=${FRESHET_STACK_SERVE_PORT:-8080}
metrics_port=${FRESHET_STACK_METRICS_PORT:-9464}
config="$repo/deploy/freshet.toml"
shards=${FRESHET_STACK_SHARDS:-2}
if ! [[ "$shards" =~ ^[1-9][0-9]*$ ]]; then
    echo "local-stack.sh: FRESHET_STACK_SHARDS must be a positive number, got '$shards'" >&2
    exit 2
fi
services=()
for ((k = 0; k < shards; k++)); do services+=("trainer-$k"); done
services+=(producer serve)

# docker-compose.yml's `command:` of each service, word for word.
command_of() {
    case "$1" in
    trainer-*) echo "run --config CONFIG --shard ${1#trainer-}" ;;
    producer) echo "produce synth --events 1000000000 --rate 2000 --invalid-rate 0.01" ;;
    serve) echo "serve --config CONFIG --listen LISTEN" ;;
    esac
}

say() { echo "local-stack.sh: $*" >&2; }
# shellcheck source=lib/process.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/process.sh"

pid_of() {
    local file="$dir/$1.pid"
    [[ -f "$file" ]] && kill -0 "$(cat "$file")" 2>/dev/null && cat "$file"
}

freshet_bin() {
    if [[ -n "${FRESHET_BIN:-}" ]]; then
        echo "$FRESHET_BIN"
        return
    fi
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
    (cd "$repo" && cargo build --release -q --workspace --bins) >&2
    echo "$CARGO_TARGET_DIR/release/freshet"
}

start() {
    local bootstrap bin words
    bootstrap=$(bash "$repo/deploy/kafka/kafka.sh" start)
    bin=$(freshet_bin)
    mkdir -p "$dir"
    export FRESHET_BOOTSTRAP="$bootstrap"
    export FRESHET_MODEL__SHARDS="$shards"
    for service in "${services[@]}"; do
        if pid=$(pid_of "$service"); then
            say "$service already runs (pid $pid)"
            continue
        fi
        words=$(command_of "$service")
        words=${words//CONFIG/$config}
        words=${words//LISTEN/127.0.0.1:$serve_port}
        local own=()
        if [[ "$service" == trainer-* ]]; then
            # Each shard: a checkpoint directory and a metrics port of its own.
            local k=${service#trainer-}
            own=("FRESHET_CHECKPOINT_DIR=$dir/checkpoint-$k" "FRESHET_METRICS__LISTEN=127.0.0.1:$((metrics_port + k))")
        fi
        # shellcheck disable=SC2086 # the command line is split into words on purpose
        env "${own[@]}" nohup "$bin" $words >"$dir/$service.log" 2>&1 &
        echo $! >"$dir/$service.pid"
        say "$service started (pid $!): freshet $words"
        if [[ "$service" == "trainer-$((shards - 1))" ]]; then
            # The trainers create the topics (partitions a multiple of the shards) before the producer runs.
            for ((k = 0; k < shards; k++)); do
                wait_for "http://127.0.0.1:$((metrics_port + k))/readyz" "trainer-$k"
            done
        fi
    done
    wait_for "http://127.0.0.1:$serve_port/readyz" serve
    say "ready: curl 'http://127.0.0.1:$serve_port/recommend?user=u1&k=10'; metrics on :$metrics_port"
}

# Waits until `url` answers 200, or fails showing the service's log.
wait_for() {
    local url=$1 service=$2
    for _ in $(seq 1 240); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return; fi
        if ! pid_of "$service" >/dev/null; then
            say "$service exited; last lines of $dir/$service.log:"
            tail -n 20 "$dir/$service.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    say "$service did not answer $url within 120 s"
    exit 1
}

stop() {
    local pid
    local services_now=(serve producer)
    for pidfile in "$dir"/trainer-*.pid; do
        [[ -e "$pidfile" ]] && services_now+=("$(basename "$pidfile" .pid)")
    done
    for service in "${services_now[@]}"; do
        pid=$(pid_of "$service") || continue
        stop_process "$pid" "$service" 60
        rm -f "$dir/$service.pid"
        say "$service stopped"
    done
}

status() {
    for service in "${services[@]}"; do
        if pid=$(pid_of "$service"); then
            echo "$service: running (pid $pid), log $dir/$service.log"
        else
            echo "$service: stopped"
        fi
    done
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
commands) for service in "${services[@]}"; do echo "$service: $(command_of "$service")"; done ;;
*)
    echo "usage: $0 start | stop | status | commands" >&2
    exit 2
    ;;
esac
