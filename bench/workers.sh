#!/usr/bin/env bash
# How the proxy example scales from one tokio worker to two on this 2-core machine: the same
# build with TOKIO_WORKER_THREADS=1 and =2, unpinned, with wrk (2 threads, 64 connections) and
# the nginx upstream (2 workers) on the same machine, alternated in each round. Prints medians,
# spread and the ratio two/one for a forwarded GET and a GET answered 304 by the layer.
#
#   bash bench/workers.sh [target/release/examples/proxy]    # ROUNDS=3 DURATION=5
#
# Needs wrk and nginx (`apt-get install wrk nginx-light`).
set -euo pipefail
PROXY=${1:-target/release/examples/proxy}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
mkdir -p "$WORK/www/api" "$WORK/logs"; chmod 755 "$WORK"; printf '{"content":"x"}' > "$WORK/www/api/doc"; chmod -R a+rX "$WORK/www"
UP=$(free)
cat > "$WORK/up.conf" <<NGINX
worker_processes 2; pid $WORK/up.pid; error_log $WORK/logs/e.log warn;
events { worker_connections 4096; }
http { access_log off; default_type application/json;
  server { listen 127.0.0.1:$UP backlog=4096; keepalive_requests 1000000; root $WORK/www; } }
NGINX
nginx -p "$WORK" -c "$WORK/up.conf" -g 'daemon off;' & PIDS+=($!)
declare -A ADDR
for workers in 1 2; do
  TOKIO_WORKER_THREADS=$workers "$PROXY" --listen 127.0.0.1:0 --upstream "http://127.0.0.1:$UP" > "$WORK/$workers.out" 2>/dev/null & PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$WORK/$workers.out" 2>/dev/null && break; sleep 0.1; done
  ADDR[$workers]=$(sed -n 's/^listening on //p' "$WORK/$workers.out")
done
sleep 1.2
for round in $(seq "$ROUNDS"); do
  for workers in 1 2; do
    url="${ADDR[$workers]}/api/doc"
    lm=$(curl -s -D - -o /dev/null "$url" | tr -d '\r' | sed -n 's/^[Ll]ast-[Mm]odified: //p')
    for case in get get_304; do
      H=(); [ $case = get_304 ] && H=(-H "If-Modified-Since: $lm")
      rps=$(wrk -t2 -c64 -d${DURATION}s "${H[@]}" "$url" | awk '/^Requests\/sec/ {print $2}')
      echo -e "$case\t$workers\t$rps"
    done
  done
done | tee "$WORK/r.tsv"
python3 - "$WORK/r.tsv" <<'PY'
import sys, statistics, collections
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    case, workers, rps = line.split('\t'); d[(case, workers)].append(float(rps))
for case in ['get', 'get_304']:
    one, two = statistics.median(d[(case, '1')]), statistics.median(d[(case, '2')])
    spread = lambda v: f"{min(v):.0f}-{max(v):.0f}"
    print(f"{case:8} 1 worker {one:8.0f} ({spread(d[(case, '1')])})  2 workers {two:8.0f} "
          f"({spread(d[(case, '2')])})  x{two / one:.2f}")
PY
