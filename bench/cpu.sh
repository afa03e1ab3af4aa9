#!/usr/bin/env bash
# CPU per forwarded GET of each front process, user and kernel apart, from /proc/PID/stat: nginx
# `proxy_pass` (one worker) and the given proxy builds, each under `wrk -t1 -c32` in turn, servers
# on core 1 with the nginx upstream, wrk on core 0, one tokio worker. The kernel's part is what
# any proxy making the same syscalls (2 recv, 2 writev per request) pays.
#
#   bash bench/cpu.sh ours=target/release/examples/proxy [bare=…]    # ROUNDS=2 DURATION=5
#
# Needs wrk and nginx (`apt-get install wrk nginx-light`).
set -euo pipefail
ROUNDS=${ROUNDS:-2}; DURATION=${DURATION:-5}
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
worker_processes 1; master_process off; pid $WORK/ng.pid; error_log $WORK/logs/e2.log warn;
events { worker_connections 4096; }
http { access_log off; upstream backend { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NG backlog=4096; keepalive_requests 1000000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
taskset -c 1 nginx -p "$WORK" -c "$WORK/up.conf" -g 'daemon off;' & PIDS+=($!)
taskset -c 1 nginx -p "$WORK" -c "$WORK/ng.conf" -g 'daemon off;' & NGP=$!; PIDS+=($NGP)
declare -A ADDR PID
NAMES=(nginx); ADDR[nginx]="http://127.0.0.1:$NG"; PID[nginx]=$NGP
for spec in "$@"; do
  name=${spec%%=*}; bin=${spec#*=}
  TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin" --listen 127.0.0.1:0 --upstream "http://127.0.0.1:$UP" > "$WORK/$name.out" 2>/dev/null & PID[$name]=$!; PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
  ADDR[$name]=$(sed -n 's/^listening on //p' "$WORK/$name.out"); NAMES+=("$name")
done
sleep 1.2
cpu() { awk '{print $14, $15}' /proc/$1/stat; }  # utime stime in ticks (1/100 s)
for round in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    read u0 s0 < <(cpu ${PID[$name]})
    out=$(taskset -c 0 wrk -t1 -c32 -d${DURATION}s "${ADDR[$name]}/api/doc")
    read u1 s1 < <(cpu ${PID[$name]})
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    python3 -c "n=$n;u=($u1-$u0)*1e4/n;s=($s1-$s0)*1e4/n;print(f'$name\trps {n/$DURATION:8.0f}\tuser {u:5.1f} µs\tsys {s:5.1f} µs\ttotal {u+s:5.1f} µs')"
  done
done
