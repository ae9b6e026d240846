#!/usr/bin/env bash
# What an operator asks of `render: browser`, measured on this machine's Docker
# engine with the images scripts/image.sh builds:
#   1. image sizes: the base, the node image, the Chromium base, the browser
#      variant (`docker image inspect`);
#   2. cold start: from the POST of a browser source to its first rendered
#      items (a worker container started, Chromium launched, a page rendered);
#   3. rendered pages/s of one browser worker: a paginated source whose pages
#      build their 20 products with JavaScript from a JSON endpoint, first run
#      (cold browser) and a second run of the same worker (browser warm);
#   4. the worker's memory (`docker stats --no-stream`): idle after its first
#      page (its browser kept), and the highest sampled during the two runs.
#
# Usage: bench/browser.sh [--pages N] [NODE_IMAGE [BROWSER_IMAGE]]
#   --pages N      pages of the paginated source (default 30)
#   NODE_IMAGE     default gleaner:dev        (scripts/image.sh)
#   BROWSER_IMAGE  default gleaner-browser:dev (scripts/image.sh --browser)
#
# Everything runs in containers on a network of its own (the fixture site is
# `busybox httpd` from the base image); the node's API is published on
# 127.0.0.1 only. Each wait is bounded, and the containers and the network are
# removed on exit, also on failure. Builds nothing: run scripts/image.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."

pages=30
while [ $# -gt 0 ]; do
  case "$1" in
    --pages) pages=${2:?--pages needs a number}; shift ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
node_image=${1:-gleaner:dev}
browser_image=${2:-gleaner-browser:dev}
base_image=${GLEANER_BASE_IMAGE:-gleaner-base:bookworm}
browser_base=${GLEANER_BROWSER_BASE:-gleaner-browser-base:bookworm}
for i in "$node_image" "$browser_image" "$base_image"; do
  docker image inspect "$i" >/dev/null 2>&1 || { echo "no image $i: build it with scripts/image.sh" >&2; exit 1; }
done

tag="gleaner-bench-browser-$$"
net="$tag-net"
site="$tag-site"
node="$tag-n0"
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
cookie=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
work=$(mktemp -d)
cleanup() {
  local ids _
  # The node first, so that it starts no more workers; then what is left on
  # the network (its workers, the site), then the network (bounded retries:
  # a container being removed may still hold it).
  docker rm -f -v "$node" >/dev/null 2>&1 || true
  for _ in $(seq 20); do
    ids=$(docker ps -aq --filter "network=$net" 2>/dev/null || true)
    # shellcheck disable=SC2086 # one id per word
    if [ -n "$ids" ]; then docker rm -f -v $ids >/dev/null 2>&1 || true; fi
    docker network rm "$net" >/dev/null 2>&1 && break
    docker network inspect "$net" >/dev/null 2>&1 || break
    sleep 0.5
  done
  rm -rf "$work"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
say() { printf '==> %s\n' "$*" >&2; }
# api METHOD PATH [BODY]: the node's answer body (curl fails on a 4xx/5xx).
api() {
  curl -sS -f --max-time 10 -X "$1" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' ${3:+--data "$3"} "http://$addr$2"
}
# until_true SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds.
until_true() {
  local deadline=$(($(date +%s) + $1)); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out: $*" >&2; return 1; }
    sleep 0.2
  done
}
items() {
  api GET /api/v1/collections | python3 -c '
import json, sys
cs = json.load(sys.stdin)["collections"]
print(next((c["items"] for c in cs if c["name"] == sys.argv[1]), 0))' "$1"
}
has_items() { [ "$(items "$1")" -ge "$2" ]; }
# last_run ID: the source's last run as JSON ("null" before the first).
last_run() { api GET "/api/v1/sources/$1" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["status"]["last_run"]))'; }
run_after() { # run_after ID ISO: a run that started after ISO has finished
  last_run "$1" | python3 -c '
import json, sys
r = json.load(sys.stdin)
sys.exit(0 if r and r["started_at"] > sys.argv[1] else 1)' "$2"
}
worker_id() { api GET "/api/v1/sources/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["container"]["id"] or "")' 2>/dev/null; }
# mem ID: the container's memory use in MiB, from `docker stats --no-stream`.
mem() {
  docker stats --no-stream --format '{{.MemUsage}}' "$1" | python3 -c '
import re, sys
v, unit = re.match(r"([\d.]+)\s*([KMG]i?B)", sys.stdin.read().split("/")[0].strip()).groups()
print(round(float(v) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "kB": 1 / 1000, "MB": 1, "GB": 1000}[unit], 1))'
}

# ---- 1. image sizes -------------------------------------------------------------
size() { docker image inspect -f '{{.Size}}' "$1" 2>/dev/null | awk '{printf "%.0f MB", $1 / 1e6}'; }
echo "image sizes (docker image inspect):"
echo "  base $base_image: $(size "$base_image")"
echo "  node $node_image: $(size "$node_image")"
echo "  Chromium base $browser_base: $(size "$browser_base")"
echo "  browser variant $browser_image: $(size "$browser_image")"

# ---- the fixture: PAGES pages built by JavaScript, linked by "next" ---------------
mkdir -p "$work/srv/app"
# The page is the browser tests' own (tests/fixtures/rendered-page.html).
python3 - "$work/srv/app" "$pages" tests/fixtures/rendered-page.html <<'EOF'
import json, os, sys
out, pages = sys.argv[1], int(sys.argv[2])
with open(sys.argv[3]) as f:
    template = f.read()
for n in range(1, pages + 1):
    nxt = n + 1 if n < pages else 0
    with open(os.path.join(out, f"products-{n}.json"), "w") as f:
        json.dump([{"title": f"Rendered {n}-{i}", "price": f"{n * 10 + i}.{i:02d}",
                    "url": f"/app/item-{n}-{i}.html"} for i in range(1, 21)], f)
    page = (template.replace("__EXTRA_SCRIPT__", "").replace("__NEXT__", str(nxt))
            .replace("__N__", str(n)))
    with open(os.path.join(out, f"page-{n}.html"), "w") as f:
        f.write(page)
EOF
chmod -R a+rX "$work/srv"

docker network create "$net" >/dev/null
subnet=$(docker network inspect "$net" -f '{{(index .IPAM.Config 0).Subnet}}')
docker run -d --name "$site" --network "$net" -v "$work/srv:/srv:ro" "$base_image" \
  busybox httpd -f -p 8000 -h /srv >/dev/null
docker run -d --name "$node" --hostname "$node" --network "$net" -p 127.0.0.1::8080 --user 0 \
  -v /var/run/docker.sock:/var/run/docker.sock \
  -e GLEANER_NODE_NAME=n0 -e "GLEANER_COOKIE=$cookie" -e "GLEANER_ADMIN_TOKEN=$token" \
  -e "GLEANER_ALLOW_PRIVATE_TARGETS=$subnet" -e GLEANER_LOG_FORMAT=json \
  -e "GLEANER_CLUSTER_ADVERTISE=$node" -e "GLEANER_WORKER_IMAGE=$node_image" \
  -e "GLEANER_BROWSER_IMAGE=$browser_image" -e "GLEANER_WORKER_NETWORK=$net" \
  "$node_image" >/dev/null
until_true 30 docker port "$node" 8080/tcp >/dev/null 2>&1
addr=$(docker port "$node" 8080/tcp | head -n1)
until_true 60 api GET /readyz >/dev/null 2>&1

spec() { # spec ID MAX_PAGES
  cat <<EOF
{"id": "$1", "url": "http://$site:8000/app/page-1.html", "collection": "$1",
 "schedule": {"every_secs": 3600}, "isolated": true, "render": "browser",
 "extract": {"scope": "article.product",
   "fields": {"title": "h3 a", "price": {"css": ".price", "type": "number"},
              "url": {"css": "h3 a", "attr": "href", "type": "url"}},
   "next_page": {"css": "a.next", "max_pages": $2}, "wait_for": "#ready"},
 "key": ["url"]}
EOF
}

# ---- 2. cold start ----------------------------------------------------------------
say "cold start: POST of a one-page browser source to its 20 items"
posted=$(now_ms)
api POST /api/v1/sources "$(spec cold 1)" >/dev/null
until_true 120 has_items cold 20
cold=$(( $(now_ms) - posted ))
echo "cold start (POST to the first 20 rendered items): $cold ms"
sleep 2 # the run's record written, the worker idle with its browser
echo "worker memory (docker stats), idle after one rendered page, browser kept: $(mem "$(worker_id cold)") MiB"
api DELETE /api/v1/sources/cold >/dev/null

# ---- 3. and 4. rendered pages/s of one worker, and its memory ---------------------
# An isolated source runs only on its schedule: every 5 s here, so the worker
# runs it again at once after the first run (its browser then warm).
say "a $pages-page browser source, two runs by one worker"
peak=0
sample() { # the worker's memory now, kept when it is the highest
  local id m
  id=$(worker_id walk) || return 0
  [ -n "$id" ] || return 0
  m=$(mem "$id" 2>/dev/null) || return 0
  peak=$(python3 -c "print(max($peak, $m))")
}
report_run() { # report_run LABEL: the last run's pages/s, from its record
  last_run walk | python3 -c '
import json, sys
r = json.load(sys.stdin)
pages, secs, items, error = r["pages"], r["duration_ms"] / 1000, r["items"], r["error"]
print(f"{sys.argv[1]}: {pages} pages in {secs:.2f} s = {pages / secs:.2f} pages/s ({items} items; error: {error})")' "$1"
}
wait_run_after() { # wait_run_after ISO: sampling memory until a run started after ISO has finished
  local deadline=$(($(date +%s) + 60 + pages * 5))
  until run_after walk "$1" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "no run after $1 finished in time" >&2; return 1; }
    sample
    sleep 0.5
  done
}
walk_spec=$(spec walk "$pages" | sed 's/"every_secs": 3600/"every_secs": 5/')
posted_iso=$(date -u +%Y-%m-%dT%H:%M:%S)
api POST /api/v1/sources "$walk_spec" >/dev/null
wait_run_after "$posted_iso"
report_run "first run (its Chromium started by the run)"
first_end=$(last_run walk | python3 -c 'import json,sys; print(json.load(sys.stdin)["finished_at"])')
wait_run_after "$first_end"
report_run "second run (same worker, browser warm)"
echo "worker memory (docker stats): highest sampled during the two runs $peak MiB"
api DELETE /api/v1/sources/walk >/dev/null
