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
BASE_SUITE=bookworm
BASE_PACKAGES=git,bash,ca-certificates,nodejs,procps,less # never npm: debootstrap fails on it

# The Debian mirror apt uses on this machine (deb822 sources first, then sources.list).
apt_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # the stanza whose Suites name the plain suite (not -security, not -updates)
    uri=$(awk -v suite="$BASE_SUITE" '
      BEGIN { RS = ""; FS = "\n" }
      {
        u = ""; ok = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); u = a[2] }
          if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
        }
        if (u != "" && ok) { print u; exit }
      }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk -v suite="$BASE_SUITE" '
      $1 == "deb" { sub(/\[[^]]*\]/, ""); if ($3 == suite) { print $2; exit } }' "$f")
    if [ -n "$uri" ]; then echo "$uri"; return; fi
  done
  echo "http://deb.debian.org/debian"
}

# Unmount anything left mounted inside a debootstrap target (an interrupted run), then remove it.
remove_rootfs() {
  local dir=$1 m
  [ -d "$dir" ] || return 0
  awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$dir"
}

build_base() {
  local tag=$1 mirror dir
  mirror=$(apt_mirror)
  # leftovers of an interrupted earlier run (we hold the lock, so none is in use)
  for dir in /var/tmp/corral-base.*; do remove_rootfs "$dir"; done
  dir=$(mktemp -d /var/tmp/corral-base.XXXXXX)
  # shellcheck disable=SC2064
  trap "remove_rootfs '$dir'" EXIT
  log "debootstrap $BASE_SUITE from $mirror into $dir (about 2 minutes)"
  if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" \
    "$BASE_SUITE" "$dir/rootfs" "$mirror" >"$dir/debootstrap.log" 2>&1; then
    tail -n 30 "$dir/debootstrap.log" >&2
    tail -n 30 "$dir/rootfs/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    echo "test-images: debootstrap failed" >&2
    return 1
  fi
  local r="$dir/rootfs"
  rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* \
    "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
    "$r"/var/log/* "$r"/tmp/* "$r"/etc/hostname "$r"/debootstrap
  : >"$r/etc/resolv.conf"
  log "docker import $tag"
  tar --numeric-owner -C "$r" -c . |
    docker import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["bash"]' - "$tag" >/dev/null
  remove_rootfs "$dir"
  trap - EXIT
}

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
