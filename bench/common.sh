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
