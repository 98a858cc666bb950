#!/usr/bin/env bash
# Build the busybox test image from Debian's busybox-static, reused by a content-hash tag.
# Prints the tag on stdout. Needs: docker engine, /bin/busybox from busybox-static.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bb=/bin/busybox
[ -x "$bb" ] || { echo "busybox-static is not installed" >&2; exit 1; }
# hash the contents only, never the paths: the same tag however and wherever it is called
hash=$(cat "$bb" "$here/tests/images/busybox/Dockerfile" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
tag="corral-test-busybox:$hash"
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/rootfs/workspace"
chmod 1777 "$ctx/rootfs/tmp"
cp "$bb" "$ctx/rootfs/bin/busybox"
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$ctx/rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/tmp:/bin/sh\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nagent:x:1000:\n' >"$ctx/rootfs/etc/group"
cp "$here/tests/images/busybox/Dockerfile" "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
