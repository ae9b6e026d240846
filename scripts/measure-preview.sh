#!/usr/bin/env bash
# Measures POST /api/v1/preview on the sample catalogue page
# (tests/fixtures/catalogue.html, 20 items, ~31 KB): N previews one after
# another, the median and the slowest as curl sees them. Loopback only: a
# local static server serves the page.
# Usage: scripts/measure-preview.sh [N=50] [path to a gleaner binary]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
N=${1:-50}
BIN=${2:-target/release/gleaner}
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
site_port=18767
http_port=18799
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cp tests/fixtures/catalogue.html "$work/"
serve_static "$work" "$site_port"
start_node "$BIN" "$work/data" "$http_port"
spec=$(printf '{"url":"http://127.0.0.1:%d/catalogue.html","extract":{"scope":"article.product","fields":{"title":{"css":"h3 a","attr":"title"},"price":{"css":".price","type":"number"},"url":{"css":"h3 a","attr":"href","type":"url"},"tags":{"css":".tag","all":true}}}}' "$site_port")
items=$(curl -sf -X POST "http://127.0.0.1:$http_port/api/v1/preview" -d "$spec" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["pages"][0]["items"]))')
times=$(for _ in $(seq "$N"); do
  curl -sf -o /dev/null -w '%{time_total}\n' -X POST "http://127.0.0.1:$http_port/api/v1/preview" -d "$spec"
done | sort -n)
echo "binary: $BIN; previews: $N of one page ($items items each)"
echo "preview latency: median $(echo "$times" | sed -n "$(( (N + 1) / 2 ))p") s, fastest $(echo "$times" | head -1) s, slowest $(echo "$times" | tail -1) s"
