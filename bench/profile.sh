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
source "$(dirname "$0")/lib.sh"
start_upstream taskset -c 1
start_proxy proxy "$PROXY" taskset -c 1
PP=$PROXY_PID; ADDR=$PROXY_ADDR
curl -s -o /dev/null "$ADDR/api/doc"; sleep 1.1
curl -s -o /dev/null "$ADDR/api/doc"; sleep 1.1
H=()
if [ "$CASE" = get_304 ]; then H=(-H "If-Modified-Since: $(last_modified "$ADDR")"); fi
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
