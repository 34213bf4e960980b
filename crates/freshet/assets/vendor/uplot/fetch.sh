#!/usr/bin/env bash
# Fetches uPlot from the npm registry into this directory and checks the
# digests README.md lists (a mismatch leaves the files as they were).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VERSION=1.6.32
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$VERSION" >/dev/null && tar xzf "uplot-$VERSION.tgz")
for file in uPlot.iife.min.js uPlot.min.css; do cp "$work/package/dist/$file" "$work/$file"; done
cp "$work/package/LICENSE" "$work/LICENSE"
for file in uPlot.iife.min.js uPlot.min.css LICENSE; do
    want=$(grep -F "\`$file\`" README.md | grep -o '[0-9a-f]\{64\}')
    got=$(sha256sum "$work/$file" | cut -d' ' -f1)
    [[ "$want" == "$got" ]] || { echo "fetch.sh: $file is $got, README.md lists $want" >&2; exit 1; }
done
cp "$work/uPlot.iife.min.js" "$work/uPlot.min.css" "$work/LICENSE" .
echo "fetch.sh: uPlot $VERSION checked"
