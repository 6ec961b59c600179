#!/usr/bin/env bash
# npm run test:asan: rebuilds the addon and the sender with AddressSanitizer and
# UndefinedBehaviorSanitizer, runs the whole test suite against them, then rebuilds the
# normal addon (also when the run fails). Node itself is not instrumented, so the ASan
# runtime is preloaded; leak checking is off because Node's own allocations would drown it.
set -euo pipefail
cd "$(dirname "$0")/.."

rebuild_normal() { node-gyp rebuild >/dev/null 2>&1 || echo "warning: normal rebuild failed; run npm run build" >&2; }
trap rebuild_normal EXIT

sanitize="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
CXXFLAGS="$sanitize -O1 -g" LDFLAGS="-fsanitize=address,undefined" node-gyp rebuild >/dev/null

asan_runtime=$(g++ -print-file-name=libasan.so)
ubsan_runtime=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$asan_runtime $ubsan_runtime"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allow_user_segv_handler=1:detect_odr_violation=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
vitest run "$@"
