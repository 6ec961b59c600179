#!/usr/bin/env bash
# Where receiver (a) spends its CPU: perf samples (cpu-clock) of one 4 GiB transfer at
# 1 MiB chunks from the MSG_ZEROCOPY sender, JS frames named by --perf-basic-prof; then the
# same transfer without the per-line reads, to show the package's own cost.
# Needs linux-perf (Debian: apt-get install linux-perf).
#   bash bench/profile.sh [chunk-bytes]
set -euo pipefail
cd "$(dirname "$0")/.."
chunk=${1:-1048576}
data=$(mktemp -d)

receive() { # receive EXTRA_RECEIVER_ARGS...; prints the receiver's report
  exec 3< <(node --perf-basic-prof bench/receiver.js --kind zerocopy --chunk "$chunk" "$@")
  read -r ready <&3
  port=${ready//[^0-9]/}
  pid=$(pgrep -n -f "bench/receiver.js --kind zerocopy")
  perf record -F 2999 -g -p "$pid" -o "$data/perf.data" >/dev/null 2>&1 &
  perf_pid=$!
  sleep 0.3
  build/Release/zc_sender --port "$port" --bytes 4G --mss 4108 >/dev/null
  cat <&3
  sleep 0.2
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" || true
}

echo "== (a) reading one byte of every 64-byte line (as in npm run bench)"
receive
perf report -i "$data/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -15
echo
echo "== (a) without the per-line reads (the package alone)"
receive --no-touch
rm -rf "$data" /tmp/perf-*.map
