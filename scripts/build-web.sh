#!/usr/bin/env bash
# Build the web UI into web/dist: `npm ci` (only when package.json or the lock changed),
# `tsc --noEmit` (strict type check), then esbuild (web/build.mjs: content-hashed assets and
# dist/index.html). Skipped when the sources, the lock and this script hash to what the last
# build recorded in web/dist/.build-stamp. Needs node and npm (installed from Debian when
# missing and we may use apt). Prints where the page is on success.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p .cache

log() { printf '[%s] build-web: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

# One build at a time per checkout (set-up and serve may both call this).
exec 9>.cache/build-web.lock
flock 9

cd web
# Contents and relative names only: the same hash wherever the checkout lives.
inputs_hash() {
  {
    sha256sum ../scripts/build-web.sh package.json package-lock.json tsconfig.json build.mjs index.html \
      favicon.svg
    find src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-64
}
want=$(inputs_hash)
stamp=dist/.build-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f dist/index.html ]; then
  log "web/dist is up to date"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  log "npm is missing: apt-get install nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  { as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends nodejs npm; } \
    >../.cache/apt-web.log 2>&1 || die "could not install npm (../.cache/apt-web.log); install node and npm, then run scripts/build-web.sh"
fi

# npm ci only when the dependency list changed: it wipes and refills node_modules.
deps=$(cat package.json package-lock.json | sha256sum | cut -c1-64)
if [ ! -f node_modules/.corral-deps ] || [ "$(cat node_modules/.corral-deps)" != "$deps" ]; then
  log "npm ci (log: .cache/npm-ci.log)"
  npm ci --no-audit --no-fund >../.cache/npm-ci.log 2>&1 ||
    { tail -n 30 ../.cache/npm-ci.log >&2; die "npm ci failed (.cache/npm-ci.log)"; }
  echo "$deps" >node_modules/.corral-deps
fi

log "tsc --noEmit"
node_modules/.bin/tsc --noEmit -p . || die "TypeScript errors above"
log "esbuild"
node build.mjs || die "esbuild failed"
echo "$want" >"$stamp"
log "built web/dist"
