#!/usr/bin/env bash
# Build corral's default agent image (Claude Code + Codex CLIs on a Debian base).
#
# Usage: images/agent/build.sh [BASE_IMAGE] [TAG]
#        images/agent/build.sh --prepare-cli   # only the npm step (lets a caller overlap it)
#   BASE_IMAGE  image to build FROM (default: debian:bookworm-slim). A Debian-like base
#               without git/bash/ca-certificates/procps/less gets them from apt; a base
#               that already has them (as the test base does) makes the build offline.
#   TAG         tag of the result (default: corral-agent:latest, the daemon's default).
#
# Examples:
#   images/agent/build.sh                                  # debian:bookworm-slim -> corral-agent:latest
#   images/agent/build.sh my-registry/debian:12 my-agent:1 # custom base and tag
#
# Needs: npm (Node 18+) and a Docker engine. The CLIs come from npm, pinned by
# images/agent/package-lock.json, and are installed on the host into images/agent/cli/
# (git-ignored) for the engine's OS/architecture, then COPYed into the image: both are
# native binaries, so the image needs no Node at run time. The classic builder is used
# (DOCKER_BUILDKIT=0), so a base image that exists only locally works without a registry.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prepare_only=no
if [ "${1:-}" = --prepare-cli ]; then prepare_only=yes; shift; fi
base_image=${1:-debian:bookworm-slim}
tag=${2:-corral-agent:latest}
cli="$here/cli"

log() { printf '[%s] agent-image: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The CLIs must match the engine's platform, not necessarily the host's (e.g. Docker Desktop).
arch=$(docker version --format '{{.Server.Arch}}' 2>/dev/null || uname -m)
case "$arch" in
  amd64 | x86_64) npm_cpu=x64 ;;
  arm64 | aarch64) npm_cpu=arm64 ;;
  *) echo "agent-image: unsupported engine architecture: $arch" >&2; exit 1 ;;
esac

# npm ci into cli/ unless it already holds exactly this lock file for this architecture.
stamp="$cli/.corral-installed"
want="$(sha256sum "$here/package-lock.json" | cut -c1-64) linux-$npm_cpu-glibc"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "CLIs already installed in $cli"
else
  log "npm ci (linux/$npm_cpu) into $cli"
  rm -rf "$cli"
  mkdir -p "$cli"
  cp "$here/package.json" "$here/package-lock.json" "$cli/"
  # --ignore-scripts: Claude's postinstall would pick the host's platform; we place the
  # engine platform's native binary ourselves below, as that postinstall would.
  npm ci --prefix "$cli" --ignore-scripts --no-audit --no-fund --loglevel=error \
    --os=linux --cpu="$npm_cpu" --libc=glibc >&2
  native="$cli/node_modules/@anthropic-ai/claude-code-linux-$npm_cpu/claude"
  [ -x "$native" ] || { echo "agent-image: missing $native" >&2; exit 1; }
  ln -f "$native" "$cli/node_modules/@anthropic-ai/claude-code/bin/claude.exe"
  ls "$cli"/node_modules/@openai/codex-linux-"$npm_cpu"/vendor/*/bin/codex >/dev/null
  echo "$want" >"$stamp"
fi

[ "$prepare_only" = no ] || exit 0

log "docker build $tag FROM $base_image"
DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE_IMAGE=$base_image" -t "$tag" "$here" >/dev/null
log "built $tag"
echo "$tag"
