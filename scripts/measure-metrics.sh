#!/usr/bin/env bash
# Measures GET /metrics (size, latency) with N sources on one node (10
# collections). Loopback only: a local static server serves the page every
# source scrapes.
# Usage: scripts/measure-metrics.sh [N=1000] [path to a gleaner binary]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
N=${1:-1000}
BIN=${2:-target/release/gleaner}
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
site_port=18766
http_port=18798
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cp tests/fixtures/catalogue.html "$work/"
serve_static "$work" "$site_port"
start_node "$BIN" "$work/data" "$http_port"
add_catalogue_sources "$N" "$site_port" "$http_port"
# Let the first runs finish (bounded wait).
for _ in $(seq 600); do
  runs=$(curl -sf "http://127.0.0.1:$http_port/metrics" | awk '/^gleaner_runs_total/ {s += $2} END {print s + 0}')
  [ "$runs" -ge "$N" ] && break
  sleep 0.5
done
size=$(curl -sf -o /dev/null -w '%{size_download}' "http://127.0.0.1:$http_port/metrics")
series=$(curl -sf "http://127.0.0.1:$http_port/metrics" | grep -c '^gleaner_')
times=$(for _ in $(seq 20); do curl -sf -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$http_port/metrics"; done | sort -n)
echo "sources: $N (runs finished: $runs)"
echo "/metrics: $size bytes, $series gleaner_* samples"
echo "/metrics latency over 20 requests: median $(echo "$times" | sed -n 10p) s, max $(echo "$times" | tail -1) s"
