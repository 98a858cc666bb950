# shellcheck shell=bash
# A Debian bookworm minbase rootfs from debootstrap, imported as an image without any
# registry. Sourced by scripts/build-test-images.sh (the test base) and
# images/agent/build-default.sh (the default agent image's base when no registry answers).
#
#   build_base TAG      debootstrap into /var/tmp/corral-base.*, strip, `docker import` TAG
#   debian_base_hash    12 hex digits naming this recipe (suite, packages, the functions'
#                       own text: not the mirror, every mirror serves the same suite)
#
# The caller defines `log` (one line to stderr) and holds a lock: build_base removes the
# leftovers of interrupted runs. Needs root, debootstrap and a Debian mirror (the one apt
# uses here). The function bodies are hashed: changing them rebuilds every base.

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

debian_base_hash() {
  {
    echo "$BASE_SUITE $BASE_PACKAGES"
    declare -f build_base remove_rootfs
  } | sha256sum | cut -c1-12
}
