#!/usr/bin/env bash
# Serving at catalog scale: publishes a model to a fresh snapshot topic on
# the local broker (synthetic, USERS x ITEMS at dim 32, or trained on a
# MovieLens ratings file), starts `freshet serve` pinned to one core (its
# request thread and the thread that applies snapshots share it; the load
# generator and the publisher run on the other cores), and drives
# /recommend (k = 10) with a closed-loop load on loopback:
# first alone, then in alternating phases of S seconds (3 of each) with
# deltas paused and arriving at 4 per second (one full snapshot among
# them), so that the host's drift over a run falls on both sides of the
# comparison. Prints p50/p99, requests/s, errors, the server's own p50/p99
# in each kind of phase (its request histogram, read at every phase
# change), recall@10 against the exact f32 scan of the same model, and the
# peak RSS of `freshet serve` against the model's parameter bytes.
#
# Usage: bench/serve.sh USERS ITEMS [--ratings FILE] [--requests N] [--connections C] [--seconds S]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
users=${1:?USERS}
items=${2:?ITEMS}
shift 2
ratings="" requests=20000 connections=1 seconds=15
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

# The full snapshot 5 s into the first phase of deltas: published and
# passed over by the subscriber within that phase.
publish_flags=(--start "$work/go" --stop "$work/stop" --pause "$work/pause" --full-after 20)
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
[kafka]
bootstrap = "$bootstrap"
[consumer]
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
echo "load in phases of $seconds s, deltas paused / arriving at 4/s (a full snapshot among them), 3 of each ..." >&2
touch "$work/pause" "$work/go"
load 100000000 --connections "$connections" --seconds $((6 * seconds)) >"$work/deltas.json" &
load_pid=$!
for cycle in 1 2 3; do
    histogram >"$work/off$cycle.a"
    sleep "$seconds"
    histogram >"$work/off$cycle.b"
    rm "$work/pause"
    histogram >"$work/on$cycle.a"
    sleep "$seconds"
    histogram >"$work/on$cycle.b"
    touch "$work/pause"
done
wait "$load_pid"
cat "$work/deltas.json"
touch "$work/stop"
wait "${pids[0]}"
tail -n 1 "$work/publish.json"
curl -fs "http://127.0.0.1:$port/version" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(json.dumps({"served_version": v["info"]["version"], "stats": v["stats"]}))'
echo "recall@10 against the exact f32 scan ..." >&2
taskset -c "$others" "$bin/serve-bench" recall "$bootstrap" "freshet.snapshots.$base" 200 --address "$address" \
    --candidates 64,128,256,512 | tee "$work/recall.json"
peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$serve_pid/status")
python3 - "$work/alone.json" "$work/deltas.json" "$work/recall.json" "$peak_kib" "$work" <<'PY'
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

work = sys.argv[5]
h0, h1 = buckets(f"{work}/h0"), buckets(f"{work}/h1")

def pooled(kind):
    # The phases' bucket counts summed, as (before, after) for `quantile`.
    total = None
    for cycle in (1, 2, 3):
        a, b = buckets(f"{work}/{kind}{cycle}.a"), buckets(f"{work}/{kind}{cycle}.b")
        counts = [(le, n - m) for (le, n), (_, m) in zip(b, a)]
        total = counts if total is None else [(le, n + t) for (le, n), (_, t) in zip(counts, total)]
    return [(le, 0) for le, _ in total], total

params = recall["param_bytes"]
print(f"\n{recall['users']} users, {recall['items']} items, dim {recall['dim']}, version {recall['version']}")
print(f"  alone          p50 {alone['p50_ms']:.3f} ms  p99 {alone['p99_ms']:.3f} ms  {alone['rps']:.0f} req/s  "
      f"{alone['requests']} requests, {alone['errors']} errors; in the server p50 {quantile(h0, h1, 0.5):.3f} ms "
      f"p99 {quantile(h0, h1, 0.99):.3f} ms")
print(f"  phases         p50 {deltas['p50_ms']:.3f} ms  p99 {deltas['p99_ms']:.3f} ms  {deltas['rps']:.0f} req/s  "
      f"{deltas['requests']} requests, {deltas['errors']} errors (both kinds of phase)")
off, on = pooled("off"), pooled("on")
p99_off, p99_on = quantile(*off, 0.99), quantile(*on, 0.99)
print(f"  in the server, deltas paused:   p50 {quantile(*off, 0.5):.3f} ms  p99 {p99_off:.3f} ms  ({off[1][-1][1]} requests)")
print(f"  in the server, deltas applying: p50 {quantile(*on, 0.5):.3f} ms  p99 {p99_on:.3f} ms  ({on[1][-1][1]} requests)")
print(f"  p99 while deltas and a full snapshot apply: {p99_on / p99_off:.2f}x the paused phases (in the server)")
phase = lambda kind, cycle: quantile(buckets(f"{work}/{kind}{cycle}.a"), buckets(f"{work}/{kind}{cycle}.b"), 0.99)
print("  p99 in the server per phase (paused / applying; the full snapshot is in the first applying phase): "
      + ", ".join(f"{phase('off', c):.2f} / {phase('on', c):.2f} ms" for c in (1, 2, 3)))
for r in recall["results"]:
    print(f"  candidates {r['candidates']:4}: recall@10 {r['recall_at_10']:.4f}, top-k p50 {r['top_k_p50_ms']:.3f} ms "
          f"p99 {r['top_k_p99_ms']:.3f} ms (exact scan p50 {r['exact_scan_p50_ms']:.3f} ms)")
print(f"  served answers equal to the library's: {recall['served_answers_equal_of_50']} of 50")
print(f"  peak RSS of freshet serve {peak / 2**20:.0f} MiB = {peak / params:.2f}x the {params / 2**20:.0f} MiB of parameters")
PY
