#!/usr/bin/env bash
# npm run test:asan: rebuilds the addon with AddressSanitizer and
# UndefinedBehaviorSanitizer, runs the whole test suite against them, then rebuilds the
# normal addon (also when the run fails). Node itself is not instrumented, so the ASan
# runtime is preloaded; leak checking is off because Node's own allocations would drown it.
set -euo pipefail
cd "$(dirname "$0")/.."

rebuild_normal() { node-gyp rebuild >/dev/null 2>&1 || echo "warning: normal rebuild failed; run npm run build" >&2; }
trap rebuild_normal EXIT

sanitize="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
CXXFLAGS="$sanitize -O1 -g" LDFLAGS="-fsanitize=address,undefined" node-gyp rebuild >/dev/null

# The sender is a test tool, not the product: it runs uninstrumented and without the
# preloaded runtime. (With the ASan runtime in both the sender and a slow receiver, 200
# concurrent MSG_ZEROCOPY streams delivered the first bytes of some of the sender's 256 KiB
# writes as allocator-like bytes, 13 00 00 ...; never with the runtime in only one of the
# two. Not root-caused.)
sender=build/Release/zc_sender
g++ -std=c++17 -O2 -Wall -Wextra -o "$sender.plain" native/sender.cc
printf '#!/bin/sh\nunset LD_PRELOAD\nexec "$(dirname "$0")/zc_sender.plain" "$@"\n' > "$sender"
chmod +x "$sender"

asan_runtime=$(g++ -print-file-name=libasan.so)
ubsan_runtime=$(g++ -print-file-name=libubsan.so)
export LD_PRELOAD="$asan_runtime $ubsan_runtime"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allow_user_segv_handler=1:detect_odr_violation=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
vitest run "$@"
