#!/usr/bin/env bash
# Click-to-serving freshness: `freshet run` (checkpoint every 250 ms,
# publishing snapshots) and `freshet serve` on the local broker, a steady
# synthetic load, and the time from produce to a served snapshot covering
# sampled events (p50/p99), plus delta vs full snapshot bytes, and what
# `freshet serve` itself measured from snapshot creation to its swap.
# Usage: bench/freshness.sh [RATE=50000] [SECONDS=30]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rate=${1:-50000}
seconds=${2:-30}
source bench/common.sh
base="freshness-$(date +%s)"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

metrics_port=$(free_port)
cat >"$work/freshet.toml" <<TOML
name = "$base"
[kafka]
bootstrap = "$bootstrap"
[consumer]
group_id = "$base"
topics = ["$base.ratings"]
dlq_topic = "$base.dlq"
batch_max_ms = 5
[checkpoint]
dir = "$work/checkpoint"
interval_ms = 250
fsync = true
[publisher]
full_every_deltas = 40
full_interval_ms = 60000
[metrics]
listen = "127.0.0.1:$metrics_port"
TOML

RUST_LOG=info "$bin/freshet" run --config "$work/freshet.toml" 2>"$work/run.log" &
pids+=($!)
wait_assigned "$metrics_port" "$!"
port=$(free_port)
"$bin/freshet" serve --config "$work/freshet.toml" --listen "127.0.0.1:$port" 2>"$work/serve.log" &
pids+=($!)

echo "producing $rate events/s for $seconds s to $base.ratings ..." >&2
"$bin/freshness" "$bootstrap" "$base" "$base.ratings" "$rate" "$seconds"
echo "freshet serve answers: $(curl -s "http://127.0.0.1:$port/recommend?user=u1&k=3")" >&2
# The served process's own view (its histogram's mean; the JSON line above is
# the bench's subscriber, the same library): built to swapped per delta.
curl -s "http://127.0.0.1:$port/metrics" | awk '
    /^freshet_subscriber_publish_to_apply_seconds_sum\{kind="delta"\}/ { sum = $2 }
    /^freshet_subscriber_publish_to_apply_seconds_count\{kind="delta"\}/ { count = $2 }
    /^freshet_subscriber_read_ahead_applied_total / { ahead = $2 }
    END { if (count > 0) printf "freshet serve: %d deltas swapped (%d from the read-ahead), built to swapped mean %.0f ms\n", count, ahead, sum / count * 1000 }' >&2
