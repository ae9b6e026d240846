# Shared by the measurement scripts: a local static server and a node, both on
# loopback, both stopped by the caller's EXIT trap (they are its jobs).

# serve_static DIR PORT: a threaded static server with a deep listen backlog
# (http.server's default of 5 refuses connections when many sources start at once).
serve_static() {
  (cd "$1" && exec python3 -c '
import functools, http.server, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=".")
handler.log_message = lambda *a: None
Server(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
' "$2" >/dev/null 2>&1) &
}

# start_node BIN DATA_DIR HTTP_PORT: a node allowed to fetch 127.0.0.1 only;
# sets node_pid and waits (bounded) until it is ready.
start_node() {
  GLEANER_CONFIG=/dev/null GLEANER_DATA_DIR="$2" GLEANER_HTTP_ADDR="127.0.0.1:$3" \
    GLEANER_ALLOW_PRIVATE_TARGETS=127.0.0.1/32 GLEANER_LOG=error "$1" node &
  node_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$3/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "the node did not become ready" >&2
  return 1
}

# rss_kib PID: resident memory in KiB.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# add_catalogue_sources N SITE_PORT HTTP_PORT: N sources on the static site's
# catalogue page, spread over 10 collections, hourly with jitter; PARALLEL
# (default 1) requests at a time.
add_catalogue_sources() {
  for i in $(seq 1 "$1"); do
    printf '{"id":"s%d","url":"http://127.0.0.1:%d/catalogue.html","collection":"c%d","schedule":{"every_secs":3600,"jitter_secs":600},"extract":{"scope":"article.product","fields":{"title":{"css":"h3 a","attr":"title"}}},"key":["title"]}' \
      "$i" "$2" "$((i % 10))"
    echo
  done | xargs -d '\n' -P "${PARALLEL:-1}" -I{} \
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$3/api/v1/sources" -d {}
}
