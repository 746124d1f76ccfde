#!/usr/bin/env bash
# The npm suite: builds the release binary, generates and packs the linux-x64 (glibc) platform
# package and the root package, installs the tarballs into a fresh project, and runs the client's
# tests and the example programs with Node's test runner and with Deno, against an S3 server on
# loopback; then type-checks the client and the examples.
#
# WARMCACHE_NPM_MUSL=1 also builds the x86_64 musl binary (needs `rustup target add
# x86_64-unknown-linux-musl` and musl-gcc from musl-tools; a second full release build), generates
# and packs the linux-x64-musl package and runs the client's tests under Node with its binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
target="${CARGO_TARGET_DIR:-$repo/target}"

need() { command -v "$1" >/dev/null || { echo "npm/test.sh: \`$1\` is missing: $2" >&2; exit 1; }; }
need cargo "install Rust (rustup) to build the CLI"
need node "install Node.js >= 18"
need npm "install npm (it comes with Node.js)"
need strip "install binutils (the platform package ships a stripped binary)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
  || { echo "npm/test.sh: Node.js >= 18 is required, found $(node --version)" >&2; exit 1; }
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "npm/test.sh: this suite builds and tests the linux-x64 package only; run it on Linux x86_64" >&2; exit 1 ;;
esac

echo "== building the release binary and the S3 test server"
(cd "$repo" && cargo build --release --locked --bin warmcache --example s3_server)
binary="$target/release/warmcache"

echo "== installing the npm tools (typescript, deno) from npm/package-lock.json"
(cd "$here" && npm ci --no-audit --no-fund)
tsc="$here/node_modules/.bin/tsc"
deno="$here/node_modules/.bin/deno"

work="$(mktemp -d)"
s3_pid=""
cleanup() {
  if [ -n "$s3_pid" ]; then kill "$s3_pid" 2>/dev/null || true; wait "$s3_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== compiling the client and packing the packages"
rm -rf "$here/warmcache/dist"
"$tsc" -p "$here/warmcache"
node "$here/scripts/platform-package.mjs" --target linux-x64-gnu --binary "$binary" --out "$work/pkg/linux-x64-gnu" >/dev/null
mkdir -p "$work/tarballs"
(cd "$work/tarballs" && npm pack --silent "$here/warmcache" "$work/pkg/linux-x64-gnu" >/dev/null)
ls -l "$work/tarballs"
echo "binary: $(stat -c %s "$binary") bytes unstripped, $(stat -c %s "$work/pkg/linux-x64-gnu/bin/warmcache") bytes stripped"

echo "== installing the tarballs into a fresh project"
project="$work/project"
mkdir -p "$project"
cp -r "$here/test" "$project/test"
cp -r "$repo/examples/node-deno" "$project/examples"
(cd "$project" && echo '{"name":"warmcache-smoke","private":true,"type":"module"}' > package.json \
  && npm install --no-audit --no-fund --save-exact "$work"/tarballs/*.tgz)
test -x "$project/node_modules/@warmcache/linux-x64-gnu/bin/warmcache" \
  || { echo "npm/test.sh: the platform package was not installed" >&2; exit 1; }
(cd "$project" && env -u WARMCACHE_BINARY npx --no-install warmcache --version)

echo "== starting the S3 test server on loopback"
mkdir -p "$work/s3"
"$target/release/examples/s3_server" "$work/s3" --port 0 > "$work/s3.out" &
s3_pid=$!
for _ in $(seq 1 600); do grep -q '^endpoint=' "$work/s3.out" && break; sleep 0.1; done
endpoint="$(sed -n 's/^endpoint=//p' "$work/s3.out")"
[ -n "$endpoint" ] || { echo "npm/test.sh: the S3 test server did not start" >&2; exit 1; }
export AWS_ENDPOINT_URL="$endpoint" AWS_ACCESS_KEY_ID=warmcache AWS_SECRET_ACCESS_KEY=warmcache-secret \
  AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true WARMCACHE_BINARY="$binary"
unset WARMCACHE_REMOTE WARMCACHE_ROOT
export DENO_DIR="$work/deno-dir" DENO_NO_UPDATE_CHECK=1 TMPDIR="$work/tmp"
mkdir -p "$TMPDIR"

# Each runtime's tests and the type check run even when an earlier step failed; the suite fails
# at the end if any did.
failed=()
echo "== client and examples under Node $(node --version)"
(cd "$project" && node --test --test-concurrency=1 test/client.test.mjs test/examples.test.mjs) || failed+=("node --test")

echo "== client and examples under $("$deno" --version | head -1)"
(cd "$project" && "$deno" test -A --no-check test/client.test.mjs test/examples.test.mjs) || failed+=("deno test")

if [ "${WARMCACHE_NPM_MUSL:-0}" = 1 ]; then
  echo "== the linux-x64-musl package"
  need musl-gcc "install musl-tools (apt-get install musl-tools) for the musl build"
  (cd "$repo" && cargo build --release --locked --bin warmcache --target x86_64-unknown-linux-musl)
  node "$here/scripts/platform-package.mjs" --target linux-x64-musl \
    --binary "$target/x86_64-unknown-linux-musl/release/warmcache" --out "$work/pkg/linux-x64-musl" >/dev/null
  (cd "$work/tarballs" && npm pack --silent "$work/pkg/linux-x64-musl" >/dev/null && ls -l ./*musl*.tgz)
  echo "musl binary: $(stat -c %s "$work/pkg/linux-x64-musl/bin/warmcache") bytes stripped"
  (cd "$project" && WARMCACHE_BINARY="$work/pkg/linux-x64-musl/bin/warmcache" node --test --test-concurrency=1 test/client.test.mjs) \
    || failed+=("node --test with the musl binary")
fi

echo "== type-checking the client's declarations, the launcher, the examples and the benchmark"
"$tsc" -p "$here/tsconfig.check.json" --noEmit || failed+=("tsc --noEmit")

if [ "${#failed[@]}" -gt 0 ]; then
  echo "npm suite: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "npm suite: all passed"
