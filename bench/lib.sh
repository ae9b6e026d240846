# Shell functions shared by bench/run.sh and bench/profile.sh. Expects WORK (a
# scratch dir), OUT (where figures go) and WRK_SECS; sets node_pid, node_url,
# nginx_pid and SITE. Everything listens on 127.0.0.1 only.

# free_port: a port no one listens on now, on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (bounded: 10 s).
wait_port() {
  local _
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# start_node NAME: a fresh node (HTTP and cluster ports picked by the OS) with its
# own data dir; sets node_pid and node_url. Private targets: loopback only.
# Every source of the benchmark is on one host: its gate's in-flight limit is
# raised out of the way (1000) unless BENCH_HOST_MAX_IN_FLIGHT says otherwise
# (BENCH_HOST_MAX_IN_FLIGHT=8 measures the default), so what is measured is
# the gate's cost, not a limit Scrapy is not given either.
start_node() {
  GLEANER_HOST_MAX_IN_FLIGHT="${BENCH_HOST_MAX_IN_FLIGHT:-1000}" GLEANER_CONFIG=/dev/null GLEANER_DATA_DIR="$WORK/$1" GLEANER_HTTP_ADDR=127.0.0.1:0 \
    GLEANER_CLUSTER_PORT=0 GLEANER_ALLOW_PRIVATE_TARGETS=127.0.0.0/8 GLEANER_LOG_FORMAT=json \
    GLEANER_LOG=info GLEANER_NODE_NAME=bench "$WORK/gleaner" node >"$WORK/$1.log" 2>&1 &
  node_pid=$!
  node_url="http://$(python3 bench/gleaner.py listen "$WORK/$1.log" "$node_pid" 60)"
  echo "node $1 (pid $node_pid) at $node_url"
}

# start_cluster NAME N: N fresh nodes n0.. on loopback, each seeded with every
# node's cluster port and sharing a random cookie; sets cluster_pids and
# cluster_urls (comma-separated, node 0 first).
start_cluster() {
  local name=$1 n=$2 i ports=() seeds="" cookie pid url
  cookie=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  for ((i = 0; i < n; i++)); do ports+=("$(free_port)"); done
  for ((i = 0; i < n; i++)); do seeds+="${seeds:+,}127.0.0.1:${ports[$i]}"; done
  cluster_pids="" cluster_urls=""
  for ((i = 0; i < n; i++)); do
    GLEANER_CONFIG=/dev/null GLEANER_DATA_DIR="$WORK/$name-n$i" GLEANER_HTTP_ADDR=127.0.0.1:0 \
      GLEANER_CLUSTER_PORT="${ports[$i]}" GLEANER_SEEDS="$seeds" GLEANER_COOKIE="$cookie" \
      GLEANER_ALLOW_PRIVATE_TARGETS=127.0.0.0/8 GLEANER_LOG_FORMAT=json \
      GLEANER_LOG=info GLEANER_NODE_NAME="n$i" "$WORK/gleaner" node >"$WORK/$name-n$i.log" 2>&1 &
    pid=$!
    cluster_pids+="${cluster_pids:+,}$pid"
  done
  for ((i = 0; i < n; i++)); do
    pid=$(echo "$cluster_pids" | cut -d, -f$((i + 1)))
    url="http://$(python3 bench/gleaner.py listen "$WORK/$name-n$i.log" "$pid" 60)"
    cluster_urls+="${cluster_urls:+,}$url"
  done
  echo "cluster $name: pids $cluster_pids at $cluster_urls"
}

# stop_cluster: every node of start_cluster, as stop_node does one.
stop_cluster() {
  local pid
  for pid in ${cluster_pids//,/ }; do
    node_pid=$pid stop_node
  done
  cluster_pids=""
}

# stop_node: SIGTERM, then up to 20 s for the graceful shutdown, then SIGKILL.
stop_node() {
  local _
  kill -TERM "$node_pid" 2>/dev/null || true
  for _ in $(seq 200); do
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$node_pid" 2>/dev/null || true
  wait "$node_pid" 2>/dev/null || true
  node_pid=""
}

# wrk_json NAME CONNECTIONS THREADS URL PATHS: a wrk run over the listed paths,
# its output kept as NAME.txt and its figures as NAME.json.
wrk_json() {
  wrk -t"$3" -c"$2" -d"${WRK_SECS}s" --timeout 10s --latency -s bench/paths.lua "$4" -- "$5" \
    >"$OUT/$1.txt"
  python3 bench/wrkstat.py <"$OUT/$1.txt" | tee "$OUT/$1.json"
}

# bench_env: no inherited GLEANER_* setting (it would change what is
# measured), and room for many connections.
bench_env() {
  local var
  for var in $(compgen -e); do
    case "$var" in GLEANER_*) unset "$var" ;; esac
  done
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
}

# need_packages PKG...: installs the Debian packages whose command is missing
# (python3-venv: when Python cannot make a virtualenv; linux-perf: perf).
need_packages() {
  local need=() p
  for p in "$@"; do
    case "$p" in
      python3-venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=("$p") ;;
      nginx) command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=("$p") ;;
      linux-perf) command -v perf >/dev/null 2>&1 || need+=("$p") ;;
      *) command -v "$p" >/dev/null 2>&1 || need+=("$p") ;;
    esac
  done
  [ ${#need[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
}

# start_nginx: nginx serving $WORK/site on a free loopback port; sets SITE, and
# SITE_200: the same files on a second port without validators (no ETag, and
# If-Modified-Since ignored), so a second pass gets full answers, never 304.
start_nginx() {
  site_port=$(free_port)
  site_port_200=$(free_port)
  mkdir -p "$WORK/nginx/tmp"
  user_line=""
  [ "$(id -u)" -eq 0 ] && user_line="user root;" # workers must read the private scratch dir
  cat >"$WORK/nginx/nginx.conf" <<EOF
$user_line
daemon off;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  open_file_cache max=20000 inactive=120s;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  types { text/html html; text/plain txt; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$site_port;
    root $WORK/site;
  }
  server {
    listen 127.0.0.1:$site_port_200;
    root $WORK/site;
    etag off;
    if_modified_since off;
  }
}
EOF
  local nginx
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  # (Debian's package may also start the system's nginx on port 80; the bench runs its own.)
  "$nginx" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
  nginx_pid=$!
  wait_port "$site_port"
  wait_port "$site_port_200"
  SITE="http://127.0.0.1:$site_port"
  SITE_200="http://127.0.0.1:$site_port_200"
  echo "nginx (pid $nginx_pid) serves the fixture at $SITE"
}
