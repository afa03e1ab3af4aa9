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
source "$(dirname "$0")/lib.sh"
UPSTREAM_WORKERS=2 start_upstream
declare -A ADDR
for workers in 1 2; do
  TOKIO_WORKER_THREADS=$workers start_proxy "$workers" "$PROXY"
  ADDR[$workers]=$PROXY_ADDR
done
sleep 1.2
for round in $(seq "$ROUNDS"); do
  for workers in 1 2; do
    url="${ADDR[$workers]}/api/doc"
    lm=$(last_modified "${ADDR[$workers]}")
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
