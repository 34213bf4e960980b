#!/usr/bin/env bash
# Serving at catalog scale: publishes a model to a fresh snapshot topic on
# the local broker (synthetic, USERS x ITEMS at dim 32, or trained on a
# MovieLens ratings file), starts `freshet serve` pinned to one core (its
# request thread and the thread that applies snapshots share it; the load
# generator and the publisher run on the other cores), and drives
# /recommend (k = 10) with a closed-loop load on loopback:
# first alone, then while deltas arrive at 4 per second and one full
# snapshot is applied. Prints p50/p99, requests/s, errors, recall@10
# against the exact f32 scan of the same model, and the peak RSS of
# `freshet serve` against the model's parameter bytes.
#
# Usage: bench/serve.sh USERS ITEMS [--ratings FILE] [--requests N] [--connections C] [--seconds S]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
users=${1:?USERS}
items=${2:?ITEMS}
shift 2
ratings="" requests=20000 connections=1 seconds=40
while (($#)); do
    case "$1" in
    --ratings) ratings=$2 ;;
    --requests) requests=$2 ;;
    --connections) connections=$2 ;;
    --seconds) seconds=$2 ;;
    *) echo "unknown option $1" >&2 && exit 2 ;;
    esac
    shift 2
done
source bench/common.sh
cpus=$(nproc)
serve_cpu=$((cpus - 1))
others="0-$((cpus > 1 ? cpus - 2 : 0))"
base="serve-bench-$(date +%s)"
work=$(mktemp -d)
pids=()
trap 'touch "$work/stop"; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

publish_flags=(--start "$work/go" --stop "$work/stop")
[[ -n "$ratings" ]] && publish_flags+=(--ratings "$ratings")
echo "publishing a model of $users users and $items items${ratings:+ trained on $ratings} ..." >&2
taskset -c "$others" "$bin/serve-bench" publish "$bootstrap" "$base" "$users" "$items" "${publish_flags[@]}" \
    >"$work/publish.json" &
pids+=($!)
until [[ -s "$work/publish.json" ]]; do sleep 0.2; done
cat "$work/publish.json"

port=$(free_port)
cat >"$work/freshet.toml" <<TOML
name = "$base"
[consumer]
bootstrap = "$bootstrap"
TOML
taskset -c "$serve_cpu" "$bin/freshet" serve --config "$work/freshet.toml" --listen "127.0.0.1:$port" --threads 1 \
    2>"$work/serve.log" &
serve_pid=$!
pids+=($serve_pid)
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.2; done
echo "freshet serve holds version 1; RSS $(awk '/VmRSS/ {print $2 / 1024 " MiB"}' "/proc/$serve_pid/status")" >&2
address="127.0.0.1:$port"
load() { taskset -c "$others" "$bin/serve-bench" load "$address" "$users" "$@"; }
# The server's own /recommend latency histogram (cumulative bucket counts).
histogram() { curl -fs "http://$address/metrics" | grep '^freshet_serve_request_seconds_bucket{endpoint="recommend"' || true; }
load 500 >/dev/null # warm-up

echo "load alone: $requests requests on $connections connection(s) ..." >&2
histogram >"$work/h0"
load "$requests" --connections "$connections" | tee "$work/alone.json"
histogram >"$work/h1"
echo "load while deltas arrive (4/s) and a full snapshot is applied, $seconds s ..." >&2
touch "$work/go"
load 100000000 --connections "$connections" --seconds "$seconds" | tee "$work/deltas.json"
histogram >"$work/h2"
touch "$work/stop"
wait "${pids[0]}"
tail -n 1 "$work/publish.json"
curl -fs "http://127.0.0.1:$port/version" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(json.dumps({"served_version": v["info"]["version"], "stats": v["stats"]}))'
echo "recall@10 against the exact f32 scan ..." >&2
taskset -c "$others" "$bin/serve-bench" recall "$bootstrap" "freshet.snapshots.$base" 200 --address "$address" \
    --candidates 64,128,256,512 | tee "$work/recall.json"
peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$serve_pid/status")
python3 - "$work/alone.json" "$work/deltas.json" "$work/recall.json" "$peak_kib" "$work/h0" "$work/h1" "$work/h2" <<'PY'
import json, re, sys
alone, deltas, recall = (json.load(open(p)) for p in sys.argv[1:4])
peak = int(sys.argv[4]) * 1024

def buckets(path):
    found = re.findall(r'le="([^"]+)"\} (\d+)', open(path).read())
    return [(float("inf") if le == "+Inf" else float(le), int(n)) for le, n in found]

def quantile(before, after, q):
    # Linear within the bucket, like Prometheus' histogram_quantile.
    counts = [(le, n - m) for (le, n), (_, m) in zip(after, before)]
    total = counts[-1][1] if counts else 0
    lower, below = 0.0, 0
    for le, n in counts:
        if n >= q * total and total:
            return 1e3 * (lower + (le - lower) * (q * total - below) / max(n - below, 1))
        lower, below = le, n
    return float("nan")

h0, h1, h2 = (buckets(p) for p in sys.argv[5:8])
params = recall["param_bytes"]
default = next(r for r in recall["results"] if r["candidates"] == 256)
print(f"\n{recall['users']} users, {recall['items']} items, dim {recall['dim']}, version {recall['version']}")
server = {"alone": (h0, h1), "deltas + full": (h1, h2)}
for name, run in (("alone", alone), ("deltas + full", deltas)):
    before, after = server[name]
    print(f"  {name:14} p50 {run['p50_ms']:.3f} ms  p99 {run['p99_ms']:.3f} ms  {run['rps']:.0f} req/s  "
          f"{run['requests']} requests, {run['errors']} errors; in the server p50 {quantile(before, after, 0.5):.3f} ms "
          f"p99 {quantile(before, after, 0.99):.3f} ms")
print(f"  p99 while deltas and a full snapshot apply: {deltas['p99_ms'] / alone['p99_ms']:.2f}x alone "
      f"(in the server {quantile(h1, h2, 0.99) / quantile(h0, h1, 0.99):.2f}x)")
for r in recall["results"]:
    print(f"  candidates {r['candidates']:4}: recall@10 {r['recall_at_10']:.4f}, top-k p50 {r['top_k_p50_ms']:.3f} ms "
          f"p99 {r['top_k_p99_ms']:.3f} ms (exact scan p50 {r['exact_scan_p50_ms']:.3f} ms)")
print(f"  served answers equal to the library's: {recall['served_answers_equal_of_50']} of 50")
print(f"  peak RSS of freshet serve {peak / 2**20:.0f} MiB = {peak / params:.2f}x the {params / 2**20:.0f} MiB of parameters")
PY
