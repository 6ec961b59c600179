#!/usr/bin/env bash
# npm run lint / npm run format, C++ part: clang-format (Debian's package, .clang-format at
# the root) over the addon's and the benchmark's sources.
#   --check  report what is not formatted and fail (npm run lint)
#   --fix    rewrite the files in place (npm run format)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v clang-format >/dev/null 2>&1; then
  echo "clang-format not found: it checks and formats native/ (run: apt-get install clang-format)" >&2
  exit 1
fi

files=(native/*.cc native/*.h bench/native/*.cc bench/native/*.h)
case "${1:-}" in
  --check) clang-format --dry-run --Werror "${files[@]}" ;;
  --fix) clang-format -i "${files[@]}" ;;
  *)
    echo "usage: $0 --check | --fix" >&2
    exit 2
    ;;
esac
