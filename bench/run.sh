#!/usr/bin/env bash
# End-to-end `freshet run` throughput against the broker's raw fetch rate,
# from one run: for each format, produces N synthetic events (JSON or
# bincode) to fresh topics on the local broker (4 partitions each), fetches
# them once with kcat (librdkafka, no decoding: the yardstick), then trains
# on them with `freshet run` (checkpoint every second, publishing
# snapshots) until the checkpoint holds all of them, and prints both rates
# and their ratio.
#
# Usage: bench/run.sh [N=2000000] [json|bincode|both=both]
#
# The raw fetch reads each input topic with one kcat process (both at once,
# as freshet reads both), from the beginning to the end, with freshet's own
# fetch size and isolation level; its rate is the events over the wall time
# of the slower of the two, fetched three times (the ratio is against the
# median; all three rates are printed). freshet's rate counts from its partition
# assignment (after the group join) to the checkpoint that holds every event.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
events=${1:-2000000}
formats=${2:-both}
[[ "$formats" == both ]] && formats="json bincode"
command -v kcat >/dev/null || { echo "bench/run.sh needs kcat (apt-get install kcat)" >&2; exit 2; }
source bench/common.sh
freshet="$bin/freshet"
work=$(mktemp -d)
pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

now() { date +%s.%N; }

# kcat over every partition of topic $1, to its end; prints nothing per message.
fetch() {
    kcat -C -q -e -o beginning -f '' -b "$bootstrap" -t "$1" \
        -X max.partition.fetch.bytes=4194304 -X isolation.level=read_committed
}

for format in $formats; do
    case "$format" in
        json) share=0 ;;
        bincode) share=1 ;;
        *) echo "unknown format $format (json, bincode, both)" >&2; exit 2 ;;
    esac
    base="benchrun-$format-$(date +%s)"
    echo "producing $events $format events to $base.* ..." >&2
    "$freshet" produce synth --bootstrap "$bootstrap" --events "$events" --partitions 4 --users 100000 \
        --items 20000 --bincode-share "$share" --clicks-topic "$base.clicks" --ratings-topic "$base.ratings" \
        >"$work/produce.json"
    valid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["valid"])' "$work/produce.json")

    # The yardstick three times: one fetch's rate moved 4x between runs of
    # this script on a shared host; the ratio is taken against the median.
    fetch_times=()
    for attempt in 1 2 3; do
        echo "raw fetch (kcat) $attempt/3 ..." >&2
        started=$(now)
        fetch "$base.clicks" & clicks=$!
        fetch "$base.ratings" & ratings=$!
        wait "$clicks" "$ratings"
        fetch_times+=("$(python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$started" "$(now)")")
    done

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
dir = "$work/checkpoint-$format"
interval_ms = 1000
[metrics]
listen = "127.0.0.1:$port"
TOML
    echo "freshet run ..." >&2
    RUST_LOG=info "$freshet" run --config "$work/freshet.toml" 2>"$work/run.log" &
    pid=$!
    wait_assigned "$port" "$pid"
    run_started=$(now)
    while :; do
        # Events in the newest durable checkpoint, from /metrics: polling is
        # cheap there (an `inspect` per poll would replay RocksDB's log and
        # take CPU from the run it measures).
        applied=$(curl -fsS "http://127.0.0.1:$port/metrics" 2>/dev/null |
            awk '/^freshet_events_trained_total/ {sum += $2} END {printf "%d", sum}')
        applied=${applied:-0}
        run_ended=$(now)
        printf '\r  applied %s / %s' "$applied" "$valid" >&2
        [[ "$applied" -ge "$valid" ]] && break
        sleep 0.05
    done
    echo >&2
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    # The process's CPU seconds (user + system) since it started: steadier
    # than its rate on a shared host, where neighbours take the cores.
    cpu=$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$pid/stat")
    # Where the trainer thread's time went: training, checkpoints, hand-offs.
    curl -fsS "http://127.0.0.1:$port/metrics" >"$work/metrics.txt" || : >"$work/metrics.txt"
    kill -TERM "$pid"
    wait "$pid" || true
    pid=""
    python3 - "$format" "$events" "${fetch_times[*]}" "$valid" "$run_started" "$run_ended" "$rss" "$work/metrics.txt" "$cpu" <<'PY'
import re, sys
fmt, events = sys.argv[1], int(sys.argv[2])
fetches = sorted(float(t) for t in sys.argv[3].split())
fetch_s = fetches[len(fetches) // 2]
valid, run_s = int(sys.argv[4]), float(sys.argv[6]) - float(sys.argv[5])
rss_mib = int(sys.argv[7]) / 1024
raw, mine = events / fetch_s, valid / run_s
spread = ", ".join(f"{events / t:,.0f}" for t in reversed(fetches))
print(f"{fmt:<8} raw fetch (kcat, median of 3: {spread}): {raw:>9,.0f} events/s ({events} in {fetch_s:.2f} s); "
      f"freshet run: {mine:>9,.0f} events/s ({valid} trained and checkpointed in {run_s:.2f} s, "
      f"checkpoint every 1 s, dim 32, peak RSS {rss_mib:,.0f} MiB); ratio {mine / raw:.2f}")
sums = {}
for line in open(sys.argv[8]):
    m = re.match(r'freshet_(batch|checkpoint|trainer_handoff)_seconds_(sum|count)(\{step="(\w+)"\})? (\S+)', line)
    if m:
        key = (m.group(4) or m.group(1), m.group(2))
        sums[key] = sums.get(key, 0.0) + float(m.group(5))
steps = [name for name in ("batch", "checkpoint", "delta", "full", "retain") if (name, "count") in sums]
busy = sum(sums[(name, "sum")] for name in steps)
cpu_s = float(sys.argv[9])
print(f"{'':<8} freshet CPU (user + system, whole process): {cpu_s:.2f} s, {cpu_s / valid * 1e6:.2f} us an event")
print(f"{'':<8} trainer thread over the run's {run_s:.2f} s: "
      + "; ".join(f"{name} {sums[(name, 'sum')]:.2f} s in {sums[(name, 'count')]:,.0f}" for name in steps)
      + f" (busy {busy / run_s:.0%})")
PY
done
