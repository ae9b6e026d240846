#!/usr/bin/env bash
# Profiles one gleaner node under one phase of the benchmark, on loopback only,
# with `perf record` (the cpu-clock software event, so it works where hardware
# counters are not exposed), and prints where the node's CPU time goes.
#
# Usage: bench/profile.sh e2e|again|query|sched [SIZE]
#   e2e     SIZE sources x 100 catalogue pages (default 50), through the API
#   again   the same first pass unprofiled, then the second pass profiled
#           (the catalogue unchanged: every page answered 304)
#   query   fills the collection as e2e does, then profiles wrk on item pages
#   sched   SIZE tiny sources every 10 s (default 10000), 30 s observed
# Writes bench/out/profile-PHASE.txt (flat, by symbol) and
# bench/out/profile-PHASE.data (for `perf report -i`).
# BENCH_BIN=path profiles that executable instead of building one (to set two
# builds side by side in one sitting).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/lib.sh
. bench/lib.sh

phase=${1:-}
case "$phase" in
  e2e | again | query) SOURCES=${2:-50} ;;
  sched) SCHED_SOURCES=${2:-10000} ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
PAGES=100
WRK_SECS=10
DEADLINE=600

need_packages nginx wrk linux-perf
bench_env

OUT=bench/out
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gleaner-profile.XXXXXX")
nginx_pid="" node_pid="" perf_pid=""
cleanup() {
  [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null
  [ -n "$node_pid" ] && kill -KILL "$node_pid" 2>/dev/null
  [ -n "$nginx_pid" ] && kill -TERM "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${BENCH_BIN:-}" ]; then
  cp "$BENCH_BIN" "$WORK/gleaner"
else
  cargo build --release --locked
  cp target/release/gleaner "$WORK/gleaner"
fi
GLEANER_ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export GLEANER_ADMIN_TOKEN

# perf_start / perf_stop: record the node's threads, with call graphs.
perf_start() {
  perf record -e cpu-clock -F "${PERF_HZ:-999}" --call-graph "${PERF_CALLGRAPH:-fp}" -p "$node_pid" -o "$OUT/profile-$phase.data" 2>"$WORK/perf.log" &
  perf_pid=$!
  sleep 0.5 # perf attaches asynchronously; this only trims the profile's start
}
perf_stop() {
  kill -INT "$perf_pid"
  wait "$perf_pid" || true
  perf_pid=""
}

case "$phase" in
  e2e | again | query)
    python3 bench/fixture.py "$WORK/site" "$((SOURCES * PAGES))" 0 >/dev/null
    start_nginx
    start_node "$phase"
    [ "$phase" = e2e ] && perf_start
    python3 bench/gleaner.py e2e "$node_url" "$SITE" "$node_pid" "$SOURCES" "$PAGES" "$DEADLINE"
    if [ "$phase" = again ]; then
      perf_start
      python3 bench/gleaner.py again "$node_url" "$node_pid" "$SOURCES" "$PAGES" "$DEADLINE"
    fi
    if [ "$phase" = query ]; then
      python3 bench/gleaner.py cursors "$node_url" catalogue "$((SOURCES * PAGES * 20 / 100))" "$WORK" >/dev/null
      perf_start
      wrk_json query-profile 32 1 "$node_url" "$WORK/query-plain.txt"
    fi
    perf_stop
    ;;
  sched)
    python3 bench/fixture.py "$WORK/site" 0 "$SCHED_SOURCES" >/dev/null
    start_nginx
    start_node sched
    perf_start
    python3 bench/gleaner.py sched "$node_url" "$SITE" "$node_pid" "$SCHED_SOURCES" \
      "$((SCHED_SOURCES / 100))" 10 30 "$DEADLINE"
    perf_stop
    ;;
esac

perf report -i "$OUT/profile-$phase.data" --no-children --sort symbol --stdio -g none \
  --percent-limit 0.5 2>/dev/null | grep -v '^$' >"$OUT/profile-$phase.txt"
head -n 60 "$OUT/profile-$phase.txt"
echo "full report: $OUT/profile-$phase.txt; perf report -i $OUT/profile-$phase.data"
