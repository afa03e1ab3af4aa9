#!/usr/bin/env bash
# What the `metrics` feature costs the layer in process: the `overhead` bench built without and
# with the feature (a Prometheus recorder installed, as in the proxy), run alternately in one go
# so both see the same machine, each first every other round.
#
#   bash bench/metrics_overhead.sh             # ROUNDS=5 MEASURE=3, the 304 path and the counter
#   FILTER=. bash bench/metrics_overhead.sh    # every path
#
# `metrics_record` (feature on only) isolates what the 304 path adds: one increment through a
# cached counter handle, beside a per-request lookup of the labelled counter for contrast.
#
# Prints one line per bench, round and build (criterion's bencher format: the median, ± the
# spread); compare the `layered` lines.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
MEASURE=${MEASURE:-3}
FILTER=${FILTER:-^(not_modified_304|metrics_record)/}

# The path of the bench binary cargo builds with the given features.
binary() {
  cargo bench --bench overhead --no-run --message-format=json "$@" 2>/dev/null |
    grep '"target":{[^}]*"name":"overhead"' | grep -o '"executable":"[^"]*"' | tail -1 |
    cut -d'"' -f4
}
off=$(binary)
on=$(binary --features metrics)
[ -x "$off" ] && [ -x "$on" ] || { echo "bench binaries not built" >&2; exit 1; }

for round in $(seq 1 "$ROUNDS"); do
  # Each build goes first every other round: the order does not favour one.
  order="off on"
  [ $((round % 2)) -eq 0 ] && order="on off"
  for build in $order; do
    bin=$off
    [ "$build" = on ] && bin=$on
    echo "== round $round, metrics $build"
    "$bin" --bench "$FILTER" --warm-up-time 1 --measurement-time "$MEASURE" \
      --output-format bencher 2>/dev/null | grep '^test' | sed "s/\$/ (metrics $build)/"
  done
done
