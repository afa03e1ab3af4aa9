#!/usr/bin/env bash
# Several builds of the proxy example against nginx `proxy_pass`, in one run, alternating: a
# forwarded GET and a GET answered 304 (by the layer; by the upstream through nginx). Servers on
# core 1, wrk on core 0, one tokio worker each, loopback only. Prints medians, spread and ratios.
#
#   bash bench/ab.sh A=target/release/examples/proxy B=/other/build/proxy   # ROUNDS=5 DURATION=4
#
# Needs wrk and nginx (`apt-get install wrk nginx-light`).
set -euo pipefail
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-4}
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
mkdir -p "$WORK/www/api" "$WORK/logs"; chmod 755 "$WORK"; printf '{"content":"x"}' > "$WORK/www/api/doc"; chmod -R a+rX "$WORK/www"
UP=$(free); NG=$(free)
cat > "$WORK/up.conf" <<NGINX
worker_processes 1; pid $WORK/up.pid; error_log $WORK/logs/e.log warn;
events { worker_connections 4096; }
http { access_log off; default_type application/json;
  server { listen 127.0.0.1:$UP backlog=4096; keepalive_requests 1000000; root $WORK/www; } }
NGINX
cat > "$WORK/ng.conf" <<NGINX
worker_processes 1; pid $WORK/ng.pid; error_log $WORK/logs/e2.log warn;
events { worker_connections 4096; }
http { access_log off; upstream backend { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NG backlog=4096; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
taskset -c 1 nginx -p "$WORK" -c "$WORK/up.conf" -g 'daemon off;' & PIDS+=($!)
taskset -c 1 nginx -p "$WORK" -c "$WORK/ng.conf" -g 'daemon off;' & PIDS+=($!)
declare -A ADDR
NAMES=(nginx); ADDR[nginx]="http://127.0.0.1:$NG"
for spec in "$@"; do
  name=${spec%%=*}; bin=${spec#*=}
  TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin" --listen 127.0.0.1:0 --upstream "http://127.0.0.1:$UP" > "$WORK/$name.out" 2>/dev/null & PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
  ADDR[$name]=$(sed -n 's/^listening on //p' "$WORK/$name.out"); NAMES+=("$name")
done
sleep 1.2
for round in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    url="${ADDR[$name]}/api/doc"
    lm=$(curl -s -D - -o /dev/null "$url" | tr -d '\r' | sed -n 's/^[Ll]ast-[Mm]odified: //p')
    for case in get get_304; do
      H=(); [ $case = get_304 ] && H=(-H "If-Modified-Since: $lm")
      out=$(taskset -c 0 wrk --latency -t1 -c32 -d${DURATION}s "${H[@]}" "$url")
      echo -e "$case\t$name\t$(awk '/^Requests\/sec/ {print $2}' <<<"$out")\t$(awk '$1=="99%" {print $2}' <<<"$out")"
    done
  done
done | tee "$WORK/r.tsv"
python3 - "$WORK/r.tsv" <<'PY'
import sys,statistics,collections
def micros(latency):  # wrk prints 980.00us, 1.02ms, 1.10s
    for unit, scale in (("us", 1), ("ms", 1e3), ("s", 1e6)):
        if latency.endswith(unit):
            return float(latency[:-len(unit)]) * scale
d=collections.defaultdict(list); p=collections.defaultdict(list)
for l in open(sys.argv[1]):
    c,n,r,p99=l.split('\t'); d[(c,n)].append(float(r)); p[(c,n)].append(micros(p99.strip()))
for c in ['get','get_304']:
    base=statistics.median(d[(c,'nginx')])
    for (cc,n),v in d.items():
        if cc!=c: continue
        m=statistics.median(v)
        print(f"{c:8}{n:12}{m:10.0f}  {min(v):.0f}-{max(v):.0f}  vs nginx {m/base:.2f}  p99 {statistics.median(p[(c,n)]):.0f} µs")
PY
