#!/usr/bin/env bash
# The benchmark of one gleaner node, in one command, on loopback only:
#   1. the limits: nginx serving the fixture to wrk (raw fetch), and html5ever
#      parsing the same page in memory (`cargo bench --bench extract`);
#   2. gleaner end to end (fetch, extract, aggregate, store) through its API,
#      then a second pass over the unchanged catalogue (304s; then, on a fresh
#      node, full 200 answers), and the first pass on a 3-node cluster;
#   3. Scrapy on the same pages, one process and one process per core;
#   4. the query API under wrk on the collection that step 2 filled;
#   5. many tiny sources on a short schedule: schedule lag and RSS per source.
# Then writes the report (a Markdown table and a PNG chart).
#
# Usage: bench/run.sh [--quick] [--out DIR]
#   --quick   small sizes, a couple of minutes; writes to bench/out/ unless --out
#   --out     where benchmarks.md and benchmarks.png go (default: docs/), from
#             the repository's root
# Installs nginx, wrk and python3-venv with apt-get if missing, and Scrapy and
# matplotlib from PyPI into bench/.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/lib.sh
. bench/lib.sh

usage() { sed -n '2,16p' "$ROOT/bench/run.sh" | sed 's/^# \{0,1\}//'; }

quick=0
report_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) report_dir=${2:?--out needs a directory}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# Sizes. SOURCES x PAGES catalogue pages of 20 items each; the same pages feed
# every throughput figure and fill the collection the query API is measured on.
if [ "$quick" = 1 ]; then
  mode=quick SOURCES=20 PAGES=50 SCHED_SOURCES=1000 SCHED_WINDOW=30 WRK_SECS=3
  report_dir=${report_dir:-bench/out}
else
  mode=full SOURCES=50 PAGES=100 SCHED_SOURCES=10000 SCHED_WINDOW=60 WRK_SECS=10
  report_dir=${report_dir:-docs}
fi
SCHED_EVERY=10           # seconds between runs of each schedule-test source
SCHED_COLLECTIONS=$((SCHED_SOURCES / 100)) # ...spread over collections of 100 sources
QUERY_CONNECTIONS=32     # wrk connections against the query API
DEADLINE=600             # seconds a phase may wait for the node (the schedule test: to
                         # register its sources and see their first runs; it then goes on
                         # with what it got, and the report says so)
TOTAL_PAGES=$((SOURCES * PAGES))

say() { printf '\n==> %s\n' "$*"; }

# --- packages -------------------------------------------------------------
need_packages nginx wrk python3-venv

VENV=bench/.venv
PY=$VENV/bin/python
if ! "$PY" -c 'import scrapy, matplotlib' >/dev/null 2>&1; then
  say "Python packages into $VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -r bench/requirements.txt
fi

bench_env

# --- scratch space and cleanup ---------------------------------------------
OUT=bench/out
rm -rf "$OUT"
mkdir -p "$OUT" "$report_dir"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gleaner-bench.XXXXXX")
nginx_pid=""
node_pid=""
watch_pid=""
cluster_pids=""
cleanup() {
  [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null
  [ -n "$node_pid" ] && kill -KILL "$node_pid" 2>/dev/null
  for p in ${cluster_pids//,/ }; do kill -KILL "$p" 2>/dev/null; done
  [ -n "$nginx_pid" ] && kill -TERM "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- build -----------------------------------------------------------------
say "build (cargo build --release --locked, and benches/extract.rs)"
cargo build --release --locked
# The extraction bench's executable, built now and run later as it is.
extract_bench=$(cargo bench --locked --bench extract --no-run --message-format=json 2>"$OUT/extract.log" |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "extract" and m.get("executable"):
        print(m["executable"])') || true
if [ -z "$extract_bench" ]; then
  tail -n 20 "$OUT/extract.log" >&2
  echo "cargo bench --bench extract did not build" >&2
  exit 1
fi
# The bench runs its own copies, so a rebuild meanwhile cannot change what is measured.
cp "$extract_bench" "$WORK/extract-bench"
cp target/release/gleaner "$WORK/gleaner"
if [ -z "${BENCH_COMMIT:-}" ] && git rev-parse --git-dir >/dev/null 2>&1; then
  BENCH_COMMIT=$(git rev-parse --short HEAD)
  [ -n "$(git status --porcelain -- src benches Cargo.toml Cargo.lock)" ] &&
    BENCH_COMMIT="$BENCH_COMMIT with uncommitted changes"
fi
export BENCH_COMMIT=${BENCH_COMMIT:-unknown}

# --- the fixture site and nginx ---------------------------------------------
say "fixture: $TOTAL_PAGES catalogue pages, $SCHED_SOURCES tiny pages"
python3 bench/fixture.py "$WORK/site" "$TOTAL_PAGES" "$SCHED_SOURCES" | tee "$OUT/fixture.json"

# Before the measurements: is the machine otherwise idle?
say "machine"
python3 bench/machine.py | tee "$OUT/machine.json"
# ...and while it runs: the CPU that other processes take, second by second.
python3 bench/cpuwatch.py $$ "$OUT/cpu.txt" 7200 &
watch_pid=$!

# mark NAME: a phase starts now (the report splits the CPU watch by phase).
mark() { echo "$(date +%s.%N) $1" >>"$OUT/phases.txt"; }

start_nginx

# --- 1. the limits -----------------------------------------------------------
say "raw parse and extraction in memory (cargo bench --bench extract)"
mark extract
"$WORK/extract-bench" --bench | tee "$OUT/extract.txt"

say "raw fetch: wrk over every catalogue page, $SOURCES connections"
mark fetch
wrk_json fetch "$SOURCES" 2 "$SITE" "$WORK/site/paths.txt"

# --- 2. gleaner end to end, then 4. the query API on what it collected --------
GLEANER_ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export GLEANER_ADMIN_TOKEN

say "gleaner end to end: $SOURCES sources x $PAGES pages"
start_node e2e
mark e2e
python3 bench/gleaner.py e2e "$node_url" "$SITE" "$node_pid" "$SOURCES" "$PAGES" "$DEADLINE" \
  | tee "$OUT/e2e.json"

say "second pass: the same sources again, the catalogue unchanged (nginx answers 304)"
mark again
python3 bench/gleaner.py again "$node_url" "$node_pid" "$SOURCES" "$PAGES" "$DEADLINE" \
  | tee "$OUT/again-304.json"

say "query API: wrk, $QUERY_CONNECTIONS connections"
mark query
python3 bench/gleaner.py cursors "$node_url" catalogue "$((TOTAL_PAGES * 20 / 100))" "$WORK" \
  | tee "$OUT/walk.json"
for q in plain common rare; do
  echo "-- $q: $(head -1 "$WORK/query-$q.txt")"
  # A full scan per request: fewer connections, or requests queue past wrk's timeout.
  conns=$QUERY_CONNECTIONS
  [ "$q" = rare ] && conns=4
  wrk_json "query-$q" "$conns" 1 "$node_url" "$WORK/query-$q.txt"
done
stop_node
say "query API without the query cache: the same data, the node restarted"
GLEANER_QUERY_CACHE_MB=0 start_node e2e
for q in plain common; do
  wrk_json "query-$q-uncached" "$QUERY_CONNECTIONS" 1 "$node_url" "$WORK/query-$q.txt"
done
stop_node

say "second pass with full answers: a fresh node, a first pass and a second over $SITE_200"
start_node e2e200
mark e2e200
python3 bench/gleaner.py e2e "$node_url" "$SITE_200" "$node_pid" "$SOURCES" "$PAGES" "$DEADLINE" \
  | tee "$OUT/e2e-200.json"
python3 bench/gleaner.py again "$node_url" "$node_pid" "$SOURCES" "$PAGES" "$DEADLINE" \
  | tee "$OUT/again-200.json"
stop_node

say "3-node cluster on loopback: $SOURCES sources x $PAGES pages, replicated to every node"
start_cluster cluster 3
mark cluster
python3 bench/gleaner.py cluster "$cluster_urls" "$cluster_pids" "$SITE" "$SOURCES" "$PAGES" "$DEADLINE" \
  | tee "$OUT/cluster.json"
stop_cluster

# --- 3. Scrapy -----------------------------------------------------------------
# scrapy_run NAME CONCURRENCY PROCESSES: the sources split evenly over PROCESSES
# Scrapy processes run at once; each writes NAME-K.json (its own timings).
scrapy_run() {
  local name=$1 conc=$2 procs=$3 k first count pids=()
  for ((k = 0; k < procs; k++)); do
    first=$((SOURCES * k / procs))
    count=$((SOURCES * (k + 1) / procs - first))
    (cd "$WORK" && exec timeout "$DEADLINE" "$ROOT/$PY" -m scrapy runspider \
      "$ROOT/bench/scrapy_spider.py" -a site="$SITE" -a first="$first" -a count="$count" \
      -a pages="$PAGES" -a stats="$ROOT/$OUT/$name-$k.json" -O "$WORK/$name-$k.jsonl:jsonlines" \
      -s CONCURRENT_REQUESTS="$conc" -s CONCURRENT_REQUESTS_PER_DOMAIN="$conc" \
      -s DOWNLOAD_DELAY=0 -s AUTOTHROTTLE_ENABLED=False -s ROBOTSTXT_OBEY=False \
      -s COOKIES_ENABLED=False -s TELNETCONSOLE_ENABLED=False -s REMOTE_CONTROL_ENABLED=False \
      -s LOG_LEVEL=WARNING) &
    pids+=($!)
  done
  for k in "${pids[@]}"; do wait "$k"; done
  local items
  items=$(cat "$WORK/$name"-*.jsonl | wc -l)
  echo "$name: $items items written"
  if [ "$items" -ne $((TOTAL_PAGES * 20)) ]; then
    echo "Scrapy wrote $items items, not $((TOTAL_PAGES * 20))" >&2
    return 1
  fi
}
say "Scrapy: one process, CONCURRENT_REQUESTS 32 and 64; then $(nproc) processes"
mark scrapy
scrapy_run scrapy-c32-p1 32 1
scrapy_run scrapy-c64-p1 64 1
scrapy_run "scrapy-c64-p$(nproc)" 64 "$(nproc)"

# --- 5. many sources on a schedule --------------------------------------------------
say "schedule: $SCHED_SOURCES sources in $SCHED_COLLECTIONS collections every ${SCHED_EVERY}s, a ${SCHED_WINDOW}s window"
start_node sched
mark sched
python3 bench/gleaner.py sched "$node_url" "$SITE" "$node_pid" "$SCHED_SOURCES" "$SCHED_COLLECTIONS" \
  "$SCHED_EVERY" "$SCHED_WINDOW" "$DEADLINE" | tee "$OUT/sched.json"
stop_node
mark end

# --- the report ----------------------------------------------------------------------
say "report"
cmd="bench/run.sh"
[ "$quick" = 1 ] && cmd="bench/run.sh --quick"
"$PY" bench/report.py "$OUT" "$report_dir" "$mode" "$cmd"
echo "wrote $report_dir/benchmarks.md and $report_dir/benchmarks.png"
