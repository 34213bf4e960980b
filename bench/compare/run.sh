#!/usr/bin/env bash
# Side-by-side prequential comparison of freshet with River and Vowpal Wabbit.
#
#   bench/compare/run.sh [RATINGS_FILE] [--events N] [--dim D] [--batch B] [--repeat R]
#
# RATINGS_FILE is a MovieLens ratings file (u.data, ratings.dat or
# ratings.csv); without it, N events (default 1,000,000) of freshet's
# synthetic planted-factor stream are written to a CSV first and every tool
# replays that file. The peers are installed from PyPI into
# bench/compare/.venv (versions in requirements.txt); freshet is built in
# release mode in CARGO_TARGET_DIR (default ~/.cache/freshet/target, shared
# with the other scripts, so RocksDB is not built twice). Each tool runs R
# times (default 3) after a warm-up run; the table shows the median time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

data=""
events=1000000
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --events) events="$2"; shift 2 ;;
        --dim|--batch|--repeat) extra+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) data="$1"; shift ;;
    esac
done

venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/freshet/target}"
(cd "$root" && cargo build --release --quiet --workspace --bins)
freshet="$CARGO_TARGET_DIR/release/freshet"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ -z "$data" ]]; then
    echo "writing $events synthetic ratings ..." >&2
    "$freshet" eval --synthetic "$events" --export-ratings "$work/synthetic.csv" --json > /dev/null
    data="$work/synthetic.csv"
    format=csv
else
    format=movielens
fi

"$venv/bin/python" "$here/compare.py" --freshet "$freshet" --data "$data" --format "$format" \
    --workdir "$work" ${extra[@]+"${extra[@]}"}
