# Sourced by the bench scripts (from the repository root): the shared build
# cache, the local broker and a release build. Sets `bootstrap` and `bin`
# (the directory of the release binaries). FRESHET_BIN_DIR names a directory
# of binaries built before (e.g. another commit's, for a before/after run)
# and skips the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
bootstrap=$(bash deploy/kafka/kafka.sh start)
if [[ -n "${FRESHET_BIN_DIR:-}" ]]; then
    bin="$FRESHET_BIN_DIR"
else
    cargo build --release -q --workspace --bins
    bin="$CARGO_TARGET_DIR/release"
fi

# A TCP port nothing listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until the `freshet run` whose /metrics listen on 127.0.0.1:PORT reads
# some source partitions (the group assigned them), or until PID exits.
wait_assigned() {
    local port=$1 pid=$2 assigned
    while :; do
        assigned=$(curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null |
            awk '/^freshet_source_partitions_assigned / {print $2}' || true)
        [[ "${assigned:-0}" != 0 ]] && return 0
        kill -0 "$pid" 2>/dev/null || { echo "freshet run exited before it was assigned partitions" >&2; return 1; }
        sleep 0.05
    done
}
