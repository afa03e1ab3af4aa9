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
source "$(dirname "$0")/lib.sh"
start_upstream taskset -c 1
start_nginx_proxy taskset -c 1
declare -A ADDR
NAMES=(nginx); ADDR[nginx]=$NGINX_ADDR
for spec in "$@"; do
  name=${spec%%=*}; bin=${spec#*=}
  start_proxy "$name" "$bin" taskset -c 1
  ADDR[$name]=$PROXY_ADDR; NAMES+=("$name")
done
sleep 1.2
for round in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    url="${ADDR[$name]}/api/doc"
    lm=$(last_modified "${ADDR[$name]}")
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
