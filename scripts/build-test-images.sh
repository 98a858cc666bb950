#!/usr/bin/env bash
# Build (or reuse) the images the tests run against, without any image registry:
#   corral-test-busybox:<hash>  FROM scratch + busybox-static (scripts/build-busybox-image.sh)
#   corral-test-base:<hash>     Debian bookworm minbase rootfs from debootstrap, docker-imported
#   corral-agent:<hash>         images/agent built FROM that base (also tagged corral-agent:latest)
# Each tag is a hash of the inputs that define the image, so an existing image is reused
# (`docker image inspect`) and a change of recipe builds a new one. Writes the tags to
# .cache/test-images.env and prints them. Needs: docker engine, debootstrap, busybox-static,
# npm (scripts/setup-test-env.sh installs all but npm).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p .cache

log() { printf '[%s] test-images: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# One build at a time per checkout (a second caller waits, then reuses the result).
exec 9>.cache/build-test-images.lock
flock 9

# ---------------------------------------------------------------------------------------
# (a) busybox
busybox_image=$(bash scripts/build-busybox-image.sh | tail -n1)
log "busybox: $busybox_image"

# ---------------------------------------------------------------------------------------
# (b) Debian base from debootstrap. Its tag hashes this recipe (the function's own text),
# not the mirror: every mirror serves the same suite.
# BASE_SUITE, BASE_PACKAGES, apt_mirror, remove_rootfs and build_base: shared with the
# default agent image's recipe (images/agent/build-default.sh).
# shellcheck source=images/agent/debian-base.sh
. images/agent/debian-base.sh

base_hash=$(
  {
    echo "$BASE_SUITE $BASE_PACKAGES"
    declare -f build_base remove_rootfs
  } | sha256sum | cut -c1-12
)
base_image="corral-test-base:$base_hash"

# The agent image's tag is known now; when it must be built, its npm step (about 20 s)
# runs while the base is bootstrapped.
agent_hash=$(
  {
    echo "$base_image"
    cat images/agent/Dockerfile images/agent/package.json images/agent/package-lock.json \
      images/agent/build.sh
  } | sha256sum | cut -c1-12
)
agent_image="corral-agent:$agent_hash"
cli_pid=
if ! have_image "$agent_image"; then
  bash images/agent/build.sh --prepare-cli </dev/null &
  cli_pid=$!
fi

if have_image "$base_image"; then
  log "base: $base_image (reused)"
else
  build_base "$base_image"
  log "base: $base_image (built)"
fi

# ---------------------------------------------------------------------------------------
# (c) the agent image from images/agent, FROM the base
if [ -n "$cli_pid" ]; then
  wait "$cli_pid" || { echo "test-images: npm install of the agent CLIs failed" >&2; exit 1; }
fi
if have_image "$agent_image"; then
  log "agent: $agent_image (reused)"
else
  bash images/agent/build.sh "$base_image" "$agent_image" >/dev/null
  log "agent: $agent_image (built)"
fi
docker tag "$agent_image" corral-agent:latest

# ---------------------------------------------------------------------------------------
env_file=.cache/test-images.env
tmp_env=$(mktemp "$env_file.XXXXXX")
{
  echo "CORRALTEST_BUSYBOX_IMAGE=$busybox_image"
  echo "CORRALTEST_BASE_IMAGE=$base_image"
  echo "CORRALTEST_AGENT_IMAGE=$agent_image"
} >"$tmp_env"
mv -f "$tmp_env" "$env_file"
cat "$env_file"
