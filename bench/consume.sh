#!/usr/bin/env bash
# Consume throughput through decode + validate: produces N synthetic JSON
# events to fresh topics on the local broker, then reads them with
# `freshet consume` and prints the figures. Usage: bench/consume.sh [N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
events=${1:-1000000}
source bench/common.sh
freshet="$bin/freshet"
base="bench-$(date +%s)"

echo "producing $events JSON events to $base.* ..." >&2
"$freshet" produce synth --bootstrap "$bootstrap" --events "$events" --partitions 4 \
    --clicks-topic "$base.clicks" --ratings-topic "$base.ratings" >"/tmp/$base.produce.json"

echo "consuming ..." >&2
/usr/bin/time -f '%M' -o "/tmp/$base.rss" \
    "$freshet" consume --bootstrap "$bootstrap" --group "$base" --start-from earliest \
    --idle-exit-ms 1500 --json --topics "$base.clicks,$base.ratings" --dlq-topic "$base.dlq" \
    >"/tmp/$base.consume.json"

python3 - "/tmp/$base.produce.json" "/tmp/$base.consume.json" "/tmp/$base.rss" <<'PY'
import json, sys
produced = json.load(open(sys.argv[1]))
consumed = json.load(open(sys.argv[2]))
rss_mib = int(open(sys.argv[3]).read().split()[-1]) / 1024
print(f"produced       {produced['sent']:>10} events  {produced['events_per_s']:>12,.0f} events/s")
print(f"consumed       {consumed['valid'] + consumed['invalid']:>10} events  "
      f"{consumed['messages_per_s']:>12,.0f} events/s (decode + validate, first to last batch)")
print(f"consumer peak RSS {rss_mib:,.0f} MiB")
assert consumed["valid"] == produced["valid"], "consumed count differs from produced"
PY
rm -f "/tmp/$base".*
