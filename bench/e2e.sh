#!/usr/bin/env bash
# End-to-end load: the proxy example against nginx `proxy_pass` and against the upstream itself,
# side by side in one run, on loopback only.
#
#   bash bench/e2e.sh            # ROUNDS=3 DURATION=5 CONNECTIONS=32 by default
#
# Starts an upstream (nginx, one worker, a small static JSON file per resource and `return 200`
# for writes), nginx as a plain reverse proxy with upstream keepalive, and the proxy example
# (`--release`, as the README runs it: fat LTO, one tokio worker) in front of the same upstream. The load generator (wrk) is
# pinned to core 0, every server to core 1, the same for every target. Each round runs every case
# against every target in turn; the script prints requests/s and p50/p99 latency per run, then
# medians, spread (min-max) and the ratios ours/nginx and ours/direct. Everything it starts stops
# when it exits. Needs wrk and nginx (installed from the distribution's packages if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
WRITERS=${WRITERS:-8} # one connection and one resource per wrk thread for the write cases
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}
NGINX_PORT=${NGINX_PORT:-18082}
OURS_PORT=${OURS_PORT:-18083}
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null
fi
cargo build --quiet --release --example proxy
PROXY=target/release/examples/proxy

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/www/api/storage" "$WORK/logs"
chmod 755 "$WORK" # nginx workers run as an unprivileged user when started by root
printf '{"content":"x"}' > "$WORK/www/api/storage/index.json"
for i in $(seq 0 $((WRITERS - 1))); do printf '{"content":"%s"}' "$i" > "$WORK/www/api/storage/$i"; done
cp "$WORK/www/api/storage/index.json" "$WORK/www/api/doc"
chmod -R a+rX "$WORK/www"

cat > "$WORK/upstream.conf" <<NGINX
worker_processes 1;
pid $WORK/upstream.pid;
error_log $WORK/logs/upstream.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/json;
  server {
    listen 127.0.0.1:$UPSTREAM_PORT reuseport backlog=4096;
    keepalive_requests 1000000;
    root $WORK/www;
    location /api/ {
      if (\$request_method = POST) { return 200 '{"saved":true}'; }
    }
  }
}
NGINX
cat > "$WORK/proxy.conf" <<NGINX
worker_processes 1;
pid $WORK/proxy.pid;
error_log $WORK/logs/proxy.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGINX_PORT reuseport backlog=4096;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX

start() { taskset -c "$SERVER_CPU" "$@" & PIDS+=($!); }
start nginx -p "$WORK" -c "$WORK/upstream.conf" -g 'daemon off;'
start nginx -p "$WORK" -c "$WORK/proxy.conf" -g 'daemon off;'
TOKIO_WORKER_THREADS=1 start "$PROXY" --listen "127.0.0.1:$OURS_PORT" --upstream "http://127.0.0.1:$UPSTREAM_PORT" > "$WORK/logs/ours.out"
for port in $UPSTREAM_PORT $NGINX_PORT $OURS_PORT; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/api/doc" && break; sleep 0.1; done
done

# Validators: the upstream's own Last-Modified, and ours. The layer dates a resource it has not
# seen at its start second, which never validates; a read one second later dates it afresh.
sleep 1.1
last_modified() { curl -s -D - -o /dev/null "$1" | tr -d '\r' | sed -n 's/^[Ll]ast-[Mm]odified: //p'; }
UPSTREAM_LM=$(last_modified "http://127.0.0.1:$UPSTREAM_PORT/api/doc")
OURS_LM=$(last_modified "http://127.0.0.1:$OURS_PORT/api/doc")
check() { # expected status, url, header
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' -H "$3" "$2")
  [ "$got" = "$1" ] || { echo "setup check failed: $2 with '$3' gave $got, expected $1" >&2; exit 1; }
}
check 304 "http://127.0.0.1:$UPSTREAM_PORT/api/doc" "If-Modified-Since: $UPSTREAM_LM"
check 304 "http://127.0.0.1:$OURS_PORT/api/doc" "If-Modified-Since: $OURS_LM"

# Writes follow the ETag each response carries, one resource per wrk thread (one connection
# each), so every write is a valid conditional write that bumps its resource.
cat > "$WORK/write.lua" <<'LUA'
local threads = {}
function setup(thread) thread:set("id", #threads); table.insert(threads, thread) end
function init(args)
  path = "/api/storage/" .. id
  tag = "*"
  writes = tonumber(args[1] or "1") -- 1 in `writes` requests is a write, the rest reads
  n = 0
end
function request()
  n = n + 1
  if n % writes == 0 then
    return wrk.format("POST", path, { ["If-Match"] = tag, ["Content-Type"] = "application/json" }, '{"content":"y"}')
  end
  return wrk.format("GET", path)
end
function response(status, headers, body)
  if headers["ETag"] or headers["etag"] then tag = headers["ETag"] or headers["etag"] end
  if status ~= 200 then failures = (failures or 0) + 1 end
end
LUA

RESULTS="$WORK/results.tsv"
run() { # case target url [wrk options...] [-- script args...]
  local case=$1 target=$2 url=$3; shift 3
  local options=() out
  while [ $# -gt 0 ] && [ "$1" != -- ]; do options+=("$1"); shift; done
  out=$(taskset -c "$LOAD_CPU" wrk --latency -d "${DURATION}s" "${options[@]}" "$url" "$@")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  if grep -q "Non-2xx or 3xx responses" <<<"$out"; then
    echo "warning: $case/$target had non-2xx/3xx responses: $(grep 'Non-2xx' <<<"$out")" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$case" "$target" "$rps" "$p50" "$p99" | tee -a "$RESULTS"
}

declare -A URL=([direct]=$UPSTREAM_PORT [nginx]=$NGINX_PORT [ours]=$OURS_PORT)
printf 'case\ttarget\trps\tp50\tp99\n'
for round in $(seq "$ROUNDS"); do
  for target in direct nginx ours; do
    base="http://127.0.0.1:${URL[$target]}"
    run get "$target" "$base/api/doc" -t1 -c "$CONNECTIONS"
    lm=$UPSTREAM_LM; [ "$target" = ours ] && lm=$OURS_LM
    run get_304 "$target" "$base/api/doc" -t1 -c "$CONNECTIONS" -H "If-Modified-Since: $lm"
    run post_if_match "$target" "$base/api/storage" -t "$WRITERS" -c "$WRITERS" -s "$WORK/write.lua" -- 1
    run mixed_90_10 "$target" "$base/api/storage" -t "$WRITERS" -c "$WRITERS" -s "$WORK/write.lua" -- 10
  done
done

echo
echo "medians over $ROUNDS rounds (spread = min-max of rps), $(nproc) cores, $(date -u +%F)"
python3 - "$RESULTS" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    case, target, rps, p50, p99 = line.split("\t")
    rows[(case, target)].append((float(rps), p50, p99.strip()))
cases = list(dict.fromkeys(c for c, _ in rows))
print(f"{'case':<14}{'target':<8}{'rps median':>12}{'spread':>20}{'p50':>10}{'p99':>10}")
med = {}
for case in cases:
    for target in ("direct", "nginx", "ours"):
        runs = rows.get((case, target))
        if not runs:
            continue
        rps = [r[0] for r in runs]
        m = statistics.median(rps)
        med[(case, target)] = m
        middle = sorted(runs)[len(runs) // 2]
        print(f"{case:<14}{target:<8}{m:>12.0f}{f'{min(rps):.0f}-{max(rps):.0f}':>20}{middle[1]:>10}{middle[2]:>10}")
print()
for case in cases:
    ours, nginx, direct = (med.get((case, t)) for t in ("ours", "nginx", "direct"))
    if ours and nginx and direct:
        print(f"{case:<14} ours/nginx {ours / nginx:5.2f}   ours/direct {ours / direct:5.2f}")
PY
