#!/usr/bin/env bash
# User-space instructions per request of one or more proxy builds, counted by callgrind: unlike
# requests per second, the count hardly moves with the machine's load, so two builds can be
# compared on a busy 2-core machine. Kernel time (the syscalls, most of a forwarded request) is
# not counted: it is the same for every build that makes the same syscalls.
#
#   bash bench/instructions.sh A=target/release/examples/proxy B=/other/build/proxy  # N=3000
#   CASE=get_304 bash bench/instructions.sh A=…   # a GET answered 304 by the layer
#
# Each build runs under callgrind with one tokio worker in front of an nginx upstream on
# loopback; after 400 warm-up requests the counters are zeroed, N requests are sent over 4
# keep-alive connections, and the counters dumped. Needs valgrind and nginx
# (`apt-get install valgrind nginx-light`).
set -euo pipefail
N=${N:-3000}; CASE=${CASE:-get}
source "$(dirname "$0")/lib.sh"
start_upstream
# N GETs over 4 keep-alive connections; with CASE=get_304, each carries the Last-Modified first seen.
cat > "$WORK/client.py" <<'PY'
import http.client, sys, threading
port, n, case = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
first = http.client.HTTPConnection('127.0.0.1', port)
first.request('GET', '/api/doc'); r = first.getresponse(); r.read()
headers = {'If-Modified-Since': r.getheader('Last-Modified')} if case == 'get_304' else {}
want = 304 if case == 'get_304' else 200
def run(k):
    c = http.client.HTTPConnection('127.0.0.1', port)
    for _ in range(k):
        c.request('GET', '/api/doc', headers=headers); r = c.getresponse(); r.read()
        assert r.status == want, r.status
threads = [threading.Thread(target=run, args=(n // 4,)) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
PY
for spec in "$@"; do
  name=${spec%%=*}; bin=${spec#*=}
  start_proxy "$name" "$bin" valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.cg"
  P=$PROXY_PID; port=${PROXY_ADDR##*:}
  # The layer answers 304 only once the resource's date is a second old.
  python3 "$WORK/client.py" "$port" 400 "$CASE"; sleep 1.1
  callgrind_control -z "$P" >/dev/null 2>&1
  python3 "$WORK/client.py" "$port" "$N" "$CASE"
  callgrind_control -d "$P" >/dev/null 2>&1
  kill -9 "$P"; wait "$P" 2>/dev/null || true
  total=$(callgrind_annotate "$WORK/$name.cg.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo -e "$CASE\t$name\t$((total / N)) instructions per request"
done
