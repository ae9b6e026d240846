#!/usr/bin/env bash
# The schedule phase of bench/run.sh alone, for the memory of idle sources:
# SOURCES tiny sources (default 10,000) every 10 s on one fresh release-built
# node, a short window, and RSS per idle source as run.sh computes it
# ((VmRSS once every source has run once and the node has had 15 s without
# requests - VmRSS before the first POST) / sources). With a long period
# (EVERY_SECS 600) RSS hardly depends on the machine's load; with run.sh's 10 s
# a busy machine reads 1.5 to 2 KiB a source more (slower runs overlap), so
# compare builds on an otherwise idle machine.
#
# Usage: bench/idle.sh [SOURCES] [WINDOW_SECS] [EVERY_SECS]
#   EVERY_SECS (default 10, as run.sh): a long period (600) leaves every source
#   truly idle after its first run even when a loaded machine makes runs slow.
#   BENCH_BIN=path measures that executable instead of building one.
# Writes bench/out/idle.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

SCHED_SOURCES=${1:-10000}
WINDOW=${2:-5}
EVERY=${3:-10}
WRK_SECS=1
need_packages nginx
bench_env
OUT=bench/out
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gleaner-idle.XXXXXX")
nginx_pid="" node_pid=""
cleanup() {
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
python3 bench/fixture.py "$WORK/site" 0 "$SCHED_SOURCES" >/dev/null
start_nginx
start_node sched
python3 bench/gleaner.py sched "$node_url" "$SITE" "$node_pid" "$SCHED_SOURCES" \
  "$((SCHED_SOURCES / 100))" "$EVERY" "$WINDOW" 600 | tee "$OUT/idle.json"
python3 - "$OUT/idle.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("RSS per idle source: %s KiB (%s sources, first runs done %s, node idle %s KiB, with them %s KiB %s s later, %s KiB right after the last poll: %s KiB a source; run mean %s ms)" % (
    d["rss_per_idle_source_kib"], d["registered"], d["first_runs_done"], d["idle_rss_kib"],
    d["rss_ran_once_kib"], d["settle_seconds"], d["rss_first_runs_done_kib"],
    d["rss_per_source_unsettled_kib"], d["run_ms_mean"]))
PY
