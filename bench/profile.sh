#!/usr/bin/env bash
# A flame graph of the proxy example under load: `perf record` (cpu-clock sampling, call graphs
# by frame pointers) of the proxy forwarding GETs (CASE=get) or answering 304s (CASE=get_304) to
# `wrk -t1 -c32`, one tokio worker, servers on core 1 and wrk on core 0; writes $OUT.svg.
#
#   CARGO_TARGET_DIR=target/profiling RUSTFLAGS="-C force-frame-pointers=yes" \
#     CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --example proxy
#   PROXY=target/profiling/release/examples/proxy OUT=bench/flame-get bash bench/profile.sh
#
# Needs wrk, nginx, perf (Debian's linux-perf) and inferno (`cargo install inferno`).
set -euo pipefail
PROXY=${PROXY:?proxy binary}
OUT=${OUT:-flame}
CASE=${CASE:-get}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/www/api" "$WORK/logs"; chmod 755 "$WORK"
printf '{"content":"x"}' > "$WORK/www/api/doc"; chmod -R a+rX "$WORK/www"
UP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > "$WORK/up.conf" <<NGINX
worker_processes 1; pid $WORK/up.pid; error_log $WORK/logs/e.log warn;
events { worker_connections 4096; }
http { access_log off; default_type application/json;
  server { listen 127.0.0.1:$UP backlog=4096; keepalive_requests 1000000; root $WORK/www; } }
NGINX
taskset -c 1 nginx -p "$WORK" -c "$WORK/up.conf" -g 'daemon off;' & PIDS+=($!)
TOKIO_WORKER_THREADS=1 taskset -c 1 "$PROXY" --listen 127.0.0.1:0 --upstream "http://127.0.0.1:$UP" > "$WORK/proxy.out" & PP=$!; PIDS+=($PP)
for _ in $(seq 100); do grep -q listening "$WORK/proxy.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening on //p' "$WORK/proxy.out")
curl -s -o /dev/null "$ADDR/api/doc"; sleep 1.1
H=()
if [ "$CASE" = get_304 ]; then LM=$(curl -s -D - -o /dev/null "$ADDR/api/doc" | tr -d '\r' | sed -n 's/^[Ll]ast-[Mm]odified: //p'); H=(-H "If-Modified-Since: $LM"); fi
taskset -c 0 wrk -t1 -c32 -d2s "${H[@]}" "$ADDR/api/doc" >/dev/null
taskset -c 0 wrk -t1 -c32 -d8s --latency "${H[@]}" "$ADDR/api/doc" > "$WORK/wrk.out" &
WRK=$!
sleep 1
perf record -e cpu-clock -F 2999 -g -p "$PP" -o "$WORK/perf.data" -- sleep 5 2>/dev/null >/dev/null
wait $WRK
grep -E "Requests/sec|99%" "$WORK/wrk.out"
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT.folded"
inferno-flamegraph --title "proxy example, $CASE" < "$OUT.folded" > "$OUT.svg"
echo "wrote $OUT.svg"
