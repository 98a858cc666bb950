#!/usr/bin/env bash
# Build corral's default agent image, offline when no registry answers:
#   images/agent/build-default.sh TAG          e.g. images/agent/build-default.sh corral-agent:latest
#   images/agent/build-default.sh --hash-tag   print the content-hash tag and exit
#
# Reused by content hash: the image is also tagged corral-agent:recipe-<hash of this
# folder's recipe files>; when that tag exists, TAG is just pointed at it. Otherwise:
#   1. base image: corral's Debian base when present (corral-base:<hash>, or the test
#      base made by the same recipe), else a local debian:bookworm-slim, else one pulled
#      within 60 s, else a Debian rootfs made with debootstrap (needs root: as root the
#      debootstrap package is installed when missing) and `docker import`ed (about 2 min);
#   2. the agent CLIs from npm (build.sh --prepare-cli, run while step 1 runs);
#   3. docker build (build.sh BASE HASH_TAG);
#   4. tag TAG.
# stdout carries only the progress, one line a step: `corral-progress <step> <total> <message>`
# (the daemon shows it while it waits); logs go to stderr. Exit 0 on success.
# CORRAL_AGENT_HASH_REPO renames the hash tag's repository (tests use it to stay apart);
# CORRAL_AGENT_BASE=debootstrap builds a new Debian base whatever is cached (the cold bench).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hash_repo=${CORRAL_AGENT_HASH_REPO:-corral-agent}
total=4

log() { printf '[%s] build-default: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
progress() { echo "corral-progress $1 $total $2"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
may_admin() { [ "$(id -u)" = 0 ] || sudo -n true >/dev/null 2>&1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
t0=$EPOCHREALTIME
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }

# shellcheck source=images/agent/debian-base.sh
. "$here/debian-base.sh"

# Contents only, never paths: the same tag wherever the recipe lives (checkout or package).
recipe_hash() {
  (cd "$here" && cat Dockerfile package.json package-lock.json build.sh build-default.sh \
    debian-base.sh) | sha256sum | cut -c1-12
}
hash_tag="$hash_repo:recipe-$(recipe_hash)"

case "${1:-}" in
  --hash-tag) echo "$hash_tag"; exit 0 ;;
  "" | -*) echo "usage: $0 TAG   (e.g. $0 corral-agent:latest)" >&2; exit 2 ;;
esac
tag=$1

docker info >/dev/null 2>&1 ||
  die "no Docker engine answers \`docker info\` (scripts/serve.sh starts one; or: sudo systemctl start docker)"

# One build at a time per recipe folder (a second caller waits, then reuses the result).
exec 9<"$here"
flock 9

if have_image "$hash_tag"; then
  progress 4 "tagging $tag (reusing $hash_tag)"
  docker tag "$hash_tag" "$tag"
  log "$tag is $hash_tag, built before ($(since "$t0"))"
  exit 0
fi

# ---------------------------------------------------------------------------------------
# 1. base image, while 2. the CLIs are installed from npm in the background
if ! command -v npm >/dev/null 2>&1; then
  if may_admin && command -v apt-get >/dev/null 2>&1; then
    log "npm is missing: apt-get install nodejs npm"
    export DEBIAN_FRONTEND=noninteractive
    { as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends nodejs npm; } \
      >&2 || die "apt-get install npm failed; run: sudo apt-get install -y nodejs npm"
  else
    die "npm is missing (the CLIs come from npm); run: sudo apt-get install -y nodejs npm"
  fi
fi
progress 1 "base image"
step=$EPOCHREALTIME
bash "$here/build.sh" --prepare-cli </dev/null >&2 &
cli_pid=$!
trap 'kill "$cli_pid" 2>/dev/null || true' INT TERM

base_hash=$(debian_base_hash)
corral_base="corral-base:$base_hash"
if [ "${CORRAL_AGENT_BASE:-}" = debootstrap ]; then
  base= # build a new Debian base, whatever is cached (bench/first_run.py --cold)
elif have_image "$corral_base"; then
  base=$corral_base
elif have_image "corral-test-base:$base_hash"; then
  base="corral-test-base:$base_hash" # the same recipe, built by scripts/build-test-images.sh
elif have_image debian:bookworm-slim; then
  base=debian:bookworm-slim
fi
if [ -n "${base:-}" ]; then
  :
elif [ "${CORRAL_AGENT_BASE:-}" != debootstrap ] && log "trying docker pull debian:bookworm-slim (60 s at most)" &&
  timeout 60 docker pull -q debian:bookworm-slim >&2; then
  base=debian:bookworm-slim
else
  log "no registry answers: building the Debian base with debootstrap"
  [ "$(id -u)" = 0 ] ||
    die "building the Debian base needs root: run sudo $0 $tag (or: docker pull debian:bookworm-slim)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing; install it, or: docker pull debian:bookworm-slim"
    log "apt-get install debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    { as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends debootstrap; } \
      >&2 || die "apt-get install debootstrap failed; run: sudo apt-get install -y debootstrap"
  fi
  build_base "$corral_base" || die "debootstrap failed (see above); check the Debian mirror apt uses: apt-get update"
  base=$corral_base
fi
log "base: $base ($(since "$step"))"

# ---------------------------------------------------------------------------------------
# 2. the CLIs
progress 2 "agent CLIs (npm)"
step=$EPOCHREALTIME
wait "$cli_pid" || die "npm install of the agent CLIs failed (see above); check: npm ping"
trap - INT TERM
log "CLIs ready ($(since "$step"))"

# ---------------------------------------------------------------------------------------
# 3. the image
progress 3 "image build"
step=$EPOCHREALTIME
bash "$here/build.sh" "$base" "$hash_tag" </dev/null >&2 || die "docker build failed (see above)"
log "built $hash_tag FROM $base ($(since "$step"))"

# ---------------------------------------------------------------------------------------
# 4. the tag the daemon asked for
progress 4 "tagging $tag"
docker tag "$hash_tag" "$tag"
log "$tag ready ($(since "$t0"))"
