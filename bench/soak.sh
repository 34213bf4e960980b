#!/usr/bin/env bash
# Soak: `freshet run` and `freshet serve` for MINUTES under a steady stream
# (1 % malformed), with SIGKILLs of run every 20–60 s, of serve now and then,
# and one broker SIGKILL and restart, on a broker of its own; then checks the
# counts, the DLQ and bit-for-bit serving, and reports memory growth
# (tests/bin/soak.rs). From 10 minutes on, memory growth over 10 % in the
# second half of the longest life is a failed check too; a shorter soak (CI's)
# only prints it, as a figure. Prints one JSON object; exits non-zero when a
# check fails.
# Usage: bench/soak.sh MINUTES [EVENTS_PER_S]   (CI runs it for 2 minutes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes=${1:?usage: bench/soak.sh MINUTES [EVENTS_PER_S]}
rate=${2:-2000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
# The debug build the tests use (the same package selection: no rebuild of RocksDB).
cargo build -q --workspace --locked
limit=()
if awk -v m="$minutes" 'BEGIN { exit !(m >= 10) }'; then
    limit=(--memory-growth-limit 10)
fi
"$CARGO_TARGET_DIR/debug/soak" --freshet "$CARGO_TARGET_DIR/debug/freshet" --minutes "$minutes" --rate "$rate" "${limit[@]}"
