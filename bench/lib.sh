# Shared by the bench scripts (sourced, not run): a work directory removed on exit together
# with every process started, free loopback ports, an nginx upstream, nginx as a reverse proxy,
# and builds of the proxy example in front of the upstream.

WORK=$(mktemp -d)
PIDS=()
# SIGTERM, not SIGKILL: nginx's master then stops its workers, which would hold our stdout open.
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# nginx serving a small JSON document at /api/doc on a free port ($UP), with
# $UPSTREAM_WORKERS workers (1); the arguments, if any, prefix the command (e.g. taskset -c 1).
start_upstream() {
  UP=$(free_port)
  mkdir -p "$WORK/www/api" "$WORK/logs"; chmod 755 "$WORK"
  printf '{"content":"x"}' > "$WORK/www/api/doc"; chmod -R a+rX "$WORK/www"
  cat > "$WORK/up.conf" <<NGINX
worker_processes ${UPSTREAM_WORKERS:-1}; pid $WORK/up.pid; error_log $WORK/logs/e.log warn;
events { worker_connections 4096; }
http { access_log off; default_type application/json;
  server { listen 127.0.0.1:$UP backlog=4096; keepalive_requests 1000000; root $WORK/www; } }
NGINX
  "$@" nginx -p "$WORK" -c "$WORK/up.conf" -g 'daemon off;' & PIDS+=($!)
}

# nginx `proxy_pass` with upstream keepalive in front of $UP, one worker and no master (so
# $NGINX_PID is the process doing the work), on a free port: $NGINX_ADDR. Arguments as above.
start_nginx_proxy() {
  local port; port=$(free_port)
  cat > "$WORK/ng.conf" <<NGINX
worker_processes 1; master_process off; pid $WORK/ng.pid; error_log $WORK/logs/e2.log warn;
events { worker_connections 4096; }
http { access_log off; upstream backend { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$port backlog=4096; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
  "$@" nginx -p "$WORK" -c "$WORK/ng.conf" -g 'daemon off;' & NGINX_PID=$!; PIDS+=($!)
  NGINX_ADDR="http://127.0.0.1:$port"
}

# The proxy build $2, named $1, in front of $UP on a free port, with $TOKIO_WORKER_THREADS
# workers (1); the other arguments prefix the command. Sets $PROXY_PID and $PROXY_ADDR.
start_proxy() {
  local name=$1 bin=$2; shift 2
  TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1} "$@" "$bin" --listen 127.0.0.1:0 \
    --upstream "http://127.0.0.1:$UP" > "$WORK/$name.out" 2>/dev/null & PROXY_PID=$!; PIDS+=($!)
  for _ in $(seq 300); do grep -q listening "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
  PROXY_ADDR=$(sed -n 's/^listening on //p' "$WORK/$name.out")
}

# The Last-Modified $1 serves for /api/doc, for If-Modified-Since.
last_modified() { curl -s -D - -o /dev/null "$1/api/doc" | tr -d '\r' | sed -n 's/^[Ll]ast-[Mm]odified: //p'; }
