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
source "$(dirname "$0")/lib.sh"
start_upstream taskset -c 1
start_nginx_proxy taskset -c 1
declare -A ADDR PID
NAMES=(nginx); ADDR[nginx]=$NGINX_ADDR; PID[nginx]=$NGINX_PID
for spec in "$@"; do
  name=${spec%%=*}; bin=${spec#*=}
  start_proxy "$name" "$bin" taskset -c 1
  ADDR[$name]=$PROXY_ADDR; PID[$name]=$PROXY_PID; NAMES+=("$name")
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
