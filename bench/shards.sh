#!/usr/bin/env bash
# Scale-out through the broker (docs/scaling.md): the same N synthetic JSON
# events (4 partitions per topic, Kafka's own partitioner, so about
# (S - 1) / S of them are expected on a partition of a shard that does not
# own their user, and are forwarded) trained by one `freshet run` and by S
# `freshet run --shard k` processes on this machine, each checkpointing
# every second. Prints, for each setup, the events/s from its first trained
# event to the checkpoints holding every event (start-up and the group join
# left out) and the peak RSS of each process; one process runs before and
# after the shards. USERS defaults to 1,000,000 so that user rows dominate
# the model, the case sharding splits.
# Usage: bench/shards.sh [N] [S] [USERS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
events=${1:-2000000}
shards=${2:-2}
users=${3:-1000000}
source bench/common.sh
freshet="$bin/freshet"
base="benchshards-$(date +%s)"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

echo "producing $events JSON events ($users users) to $base.* ..." >&2
"$freshet" produce synth --bootstrap "$bootstrap" --events "$events" --partitions 4 --users "$users" --items 20000 \
    --clicks-topic "$base.clicks" --ratings-topic "$base.ratings" >"$work/produce.json"
valid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["valid"])' "$work/produce.json")

# The events every process of a setup trained, summed from their /metrics.
trained() {
    local sum=0 port n
    for port in "$@"; do
        n=$(curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null |
            awk '/^freshet_events_trained_total/ {sum += $2} END {printf "%d", sum}')
        sum=$((sum + ${n:-0}))
    done
    echo "$sum"
}

# Runs setup $1 (a model of $2 shards) to the end; prints one JSON line.
run_setup() {
    local name=$1 count=$2 model="$base-$1" ports=() k
    pids=()
    cat >"$work/$name.toml" <<TOML
name = "$model"
[kafka]
bootstrap = "$bootstrap"
[consumer]
group_id = "$model"
topics = ["$base.clicks", "$base.ratings"]
dlq_topic = "$base.dlq"
[model]
shards = $count
[checkpoint]
interval_ms = 1000
TOML
    for ((k = 0; k < count; k++)); do
        ports+=("$(free_port)")
        local shard_args=()
        ((count > 1)) && shard_args=(--shard "$k")
        FRESHET_METRICS__LISTEN="127.0.0.1:${ports[$k]}" RUST_LOG=warn "$freshet" run --config "$work/$name.toml" \
            --checkpoint-dir "$work/$name-checkpoint-$k" "${shard_args[@]}" 2>"$work/$name-$k.log" &
        pids+=($!)
    done
    local first=0 started="" now applied
    while :; do
        applied=$(trained "${ports[@]}")
        now=$(date +%s.%N)
        if [[ -z "$started" && "$applied" -gt 0 ]]; then
            started=$now
            first=$applied
        fi
        printf '\r  %s: trained %s / %s' "$name" "$applied" "$valid" >&2
        [[ "$applied" -ge "$valid" ]] && break
        for pid in "${pids[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                echo " a process of $name exited:" >&2
                tail -n 20 "$work/$name"-*.log >&2
                exit 1
            fi
        done
        sleep 0.2
    done
    echo >&2
    local rss=()
    for pid in "${pids[@]}"; do
        rss+=("$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")")
    done
    kill -TERM "${pids[@]}"
    wait "${pids[@]}" || true
    python3 - "$name" "$count" "$started" "$now" "$first" "$applied" "${rss[@]}" <<'PY'
import json, sys
name, count, start, end, first, applied = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rss = [round(int(kib) / 1024) for kib in sys.argv[7:]]
rate = (applied - first) / (end - start) if end > start else float("nan")
print(json.dumps({"setup": name, "shards": count, "events": applied, "events_per_s": round(rate), "peak_rss_mib": rss}))
PY
}

# One process before and after the shards, so that a warmer broker (its
# page cache) or a drifting host shows as a difference between the two.
before=$(run_setup single-before 1)
many=$(run_setup sharded "$shards")
after=$(run_setup single-after 1)
printf '%s\n' "$before" "$many" "$after"
python3 - "$before" "$many" "$after" <<'PY'
import json, sys
before, many, after = (json.loads(arg) for arg in sys.argv[1:])
rate = (before["events_per_s"] + after["events_per_s"]) / 2
singles = [before["peak_rss_mib"][0], after["peak_rss_mib"][0]]
largest = max(many["peak_rss_mib"])
print(f"{many['shards']} shard processes: {many['events_per_s']:,} events/s against one process's "
      f"{before['events_per_s']:,} before and {after['events_per_s']:,} after ({many['events_per_s'] / rate:.2f}x their mean); "
      f"peak RSS per shard {', '.join(f'{r:,}' for r in many['peak_rss_mib'])} MiB against one process's "
      f"{singles[0]:,} before and {singles[1]:,} MiB after (largest shard {largest / singles[0]:.2f}x and "
      f"{largest / singles[1]:.2f}x)")
PY
