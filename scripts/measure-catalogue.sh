#!/usr/bin/env bash
# Measures one node collecting a 20-page x 20-item catalogue from a local
# static server: wall time from POST to the finished run (and the run's own
# duration), and the node's RSS idle and after. Loopback only.
# Usage: scripts/measure-catalogue.sh [path to a gleaner binary]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
BIN=${1:-target/release/gleaner}
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d)
site_port=18766
http_port=18798
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/site/catalogue"
python3 - "$work/site/catalogue" <<'PY'
import sys
out = sys.argv[1]
for n in range(1, 21):
    items = []
    for k in range(1, 21):
        i = (n - 1) * 20 + k
        items.append(f'<article class="product"><h3><a href="/catalogue/item-{i}.html" title="Book {i}">Book {i}</a></h3>'
                     f'<p class="price">£{i}.99</p><span class="tag">t{i % 3}</span><span class="tag">all</span></article>')
    pager = f'<ul class="pager"><li class="next"><a href="page-{n + 1}.html">next</a></li></ul>' if n < 20 else ""
    open(f"{out}/page-{n}.html", "w").write(f"<!DOCTYPE html><html><body>{''.join(items)}{pager}</body></html>")
PY
serve_static "$work/site" "$site_port"
start_node "$BIN" "$work/data" "$http_port"
sleep 1
idle_kib=$(rss_kib "$node_pid")
start=$(date +%s.%N)
curl -sf -o /dev/null -X POST "http://127.0.0.1:$http_port/api/v1/sources" -d "{
  \"id\": \"books\", \"url\": \"http://127.0.0.1:$site_port/catalogue/page-1.html\", \"collection\": \"books\",
  \"schedule\": {\"every_secs\": 3600},
  \"extract\": {\"scope\": \"article.product\", \"fields\": {
     \"title\": {\"css\": \"h3 a\", \"attr\": \"title\"}, \"price\": {\"css\": \".price\", \"type\": \"number\"},
     \"url\": {\"css\": \"h3 a\", \"attr\": \"href\", \"type\": \"url\"}, \"tags\": {\"css\": \".tag\", \"all\": true}},
     \"next_page\": {\"css\": \"li.next a\", \"max_pages\": 50}},
  \"key\": [\"url\"]}"
run=""
for _ in $(seq 2000); do
  run=$(curl -sf "http://127.0.0.1:$http_port/api/v1/sources/books" | python3 -c 'import json,sys; r=json.load(sys.stdin)["status"]["last_run"]; print("" if not r else "%s %s %s" % (r["pages"], r["items"], r["duration_ms"]))')
  [ -n "$run" ] && break
  sleep 0.01
done
end=$(date +%s.%N)
after_kib=$(rss_kib "$node_pid")
count=$(curl -sf "http://127.0.0.1:$http_port/api/v1/collections" | python3 -c 'import json,sys; print(json.load(sys.stdin)["collections"][0]["items"])')
read -r pages items duration_ms <<<"$run"
echo "collected $count items from $pages pages ($items extracted) in a ${duration_ms} ms run; POST to finished run seen: $(python3 -c "print(round(($end - $start) * 1000))") ms"
echo "node RSS: idle $idle_kib KiB, after the run $after_kib KiB"
