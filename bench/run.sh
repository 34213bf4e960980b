#!/usr/bin/env bash
# End-to-end `freshet run` throughput: produces N synthetic JSON events to
# fresh topics on the local broker, then trains on them with a checkpoint
# every second until the checkpoint holds all of them, and prints the
# sustained rate. Usage: bench/run.sh [N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
events=${1:-2000000}
source bench/common.sh
freshet="$bin/freshet"
base="benchrun-$(date +%s)"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

echo "producing $events JSON events to $base.* ..." >&2
"$freshet" produce synth --bootstrap "$bootstrap" --events "$events" --partitions 4 --users 100000 --items 20000 \
    --clicks-topic "$base.clicks" --ratings-topic "$base.ratings" >"$work/produce.json"
valid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["valid"])' "$work/produce.json")

port=$(free_port)
cat >"$work/freshet.toml" <<TOML
name = "$base"
[kafka]
bootstrap = "$bootstrap"
[consumer]
group_id = "$base"
topics = ["$base.clicks", "$base.ratings"]
dlq_topic = "$base.dlq"
[checkpoint]
dir = "$work/checkpoint"
interval_ms = 1000
[metrics]
listen = "127.0.0.1:$port"
TOML

RUST_LOG=info "$freshet" run --config "$work/freshet.toml" 2>"$work/run.log" &
pid=$!
# The rate counts from the partition assignment (after the group join) to
# the checkpoint that holds every event.
until grep -q "partitions assigned" "$work/run.log"; do sleep 0.1; done
started=$(date +%s.%N)
first=0
while :; do
    # Events in the newest durable checkpoint, from /metrics: polling is
    # cheap there (an `inspect` per poll would replay RocksDB's log and
    # take CPU from the run it measures).
    applied=$(curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null |
        awk '/^freshet_events_trained_total/ {sum += $2} END {printf "%d", sum}')
    applied=${applied:-0}
    now=$(date +%s.%N)
    printf '\r  applied %s / %s' "$applied" "$valid" >&2
    [[ "$applied" -ge "$valid" ]] && break
    sleep 0.5
done
echo >&2
grep VmHWM "/proc/$pid/status" | awk '{print $2}' >"$work/rss"
kill -TERM "$pid"
wait "$pid" || true
python3 - "$started" "$now" "$first" "$applied" "$work/rss" <<'PY'
import sys
start, end, first, applied = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rss = int(open(sys.argv[5]).read().split()[-1]) / 1024
rate = (applied - first) / (end - start) if end > start else float("nan")
print(f"freshet run: {applied} events trained and checkpointed, {rate:,.0f} events/s sustained "
      f"(checkpoint every 1 s, JSON, dim 32), peak RSS {rss:,.0f} MiB")
PY
