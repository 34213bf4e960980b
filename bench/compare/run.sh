#!/usr/bin/env bash
# Prequential comparison of freshet with Vowpal Wabbit and River, each
# timed as a whole process, on two streams of a million events or more.
#
#   bench/compare/run.sh [RATINGS_FILE] [--events N] [--streams ratings,clicks]
#                        [--dim D] [--batch B] [--repeat R] [--skip-river]
#
# The ratings stream is RATINGS_FILE (a MovieLens u.data, ratings.dat or
# ratings.csv) repeated until it holds N ratings (default 1,000,000), each
# copy's timestamps shifted past the previous copy's; without a file, N
# synthetic planted-factor ratings. The clicks stream is N synthetic clicks
# with three context features. Both are written by this script into a temp
# directory. The peers are installed from PyPI into bench/compare/.venv
# (versions in requirements.txt); freshet is built in release mode in
# CARGO_TARGET_DIR (default ~/.cache/freshet/target, shared with the other
# scripts, so RocksDB is not built twice). Each tool runs R times (default 3)
# after a warm-up run; the tables show the median wall time of the whole
# process. See compare.py for what is measured and how.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

data=""
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --events|--streams|--dim|--batch|--repeat) extra+=("$1" "$2"); shift 2 ;;
        --skip-river) extra+=("$1"); shift ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
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

movielens=()
[[ -n "$data" ]] && movielens=(--movielens "$data")
"$venv/bin/python" "$here/compare.py" --freshet "$freshet" --workdir "$work" \
    ${movielens[@]+"${movielens[@]}"} ${extra[@]+"${extra[@]}"}
