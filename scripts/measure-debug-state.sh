#!/usr/bin/env bash
# Measures /debug/state (size, latency) and node RSS with N sources on one node.
# Loopback only: a local static server serves the page every source scrapes.
# Usage: scripts/measure-debug-state.sh [N=1000] [path to a gleaner binary]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
N=${1:-1000}
BIN=${2:-target/release/gleaner}
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
site_port=18765
http_port=18799
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cp tests/fixtures/catalogue.html "$work/"
serve_static "$work" "$site_port"
start_node "$BIN" "$work/data" "$http_port"
idle_kib=$(rss_kib "$node_pid")
add_catalogue_sources "$N" "$site_port" "$http_port"
# Let the first runs finish: every source has a last run (bounded wait).
for _ in $(seq 600); do
  done_runs=$(curl -sf "http://127.0.0.1:$http_port/api/v1/sources" | python3 -c 'import json,sys; print(sum(1 for s in json.load(sys.stdin)["sources"] if s["status"]["last_run"]))')
  [ "$done_runs" -ge "$N" ] && break
  sleep 0.5
done
size=$(curl -sf -o /dev/null -w '%{size_download}' "http://127.0.0.1:$http_port/debug/state")
gz=$(curl -sf -o /dev/null -H 'Accept-Encoding: gzip' -w '%{size_download}' "http://127.0.0.1:$http_port/debug/state")
times=$(for _ in $(seq 20); do curl -sf -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$http_port/debug/state"; done | sort -n)
busy_kib=$(rss_kib "$node_pid")
failed=$(curl -sf "http://127.0.0.1:$http_port/api/v1/sources" | python3 -c 'import json,sys; print(sum(1 for s in json.load(sys.stdin)["sources"] if s["status"]["last_error"]))')
echo "sources: $N (runs finished: $done_runs, with an error: $failed)"
echo "/debug/state: $size bytes ($gz gzipped)"
echo "/debug/state latency over 20 requests: median $(echo "$times" | sed -n 10p) s, max $(echo "$times" | tail -1) s"
echo "node RSS: idle $idle_kib KiB, with $N sources $busy_kib KiB"
