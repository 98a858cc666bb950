#!/usr/bin/env bash
# Prepare this machine to run corral's tests; idempotent, fast when everything is in place.
#   1. Debian packages (apt-get only when one is missing): docker.io git debootstrap
#      busybox-static iproute2 ca-certificates chromium (+ python3-venv / npm if absent)
#   2. a Docker engine: dockerd started in the background unless `docker info` answers
#   3. the test images (scripts/build-test-images.sh), in the background, while
#   4. .venv is created if missing and `pip install -e '.[test]'` runs (skipped when
#      pyproject.toml is unchanged since the last install)
#   5. the web UI is built into web/dist (scripts/build-web.sh; skipped when unchanged)
# Leaves the image tags in .cache/test-images.env. Must run as root (or with passwordless
# apt and Docker access).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p .cache

start=$(date +%s)
log() { printf '[%s +%3ss] setup: %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - start))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

# ---------------------------------------------------------------------------------------
# 1. Debian packages
# chromium: the browser tests (tests/test_auth_browser.py) drive it through playwright.
pkgs=(docker.io git debootstrap busybox-static iproute2 ca-certificates chromium)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || [ -x .venv/bin/python ] || pkgs+=(python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >/dev/null || die "apt-get update failed"
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >.cache/apt-install.log 2>&1 ||
    { tail -n 30 .cache/apt-install.log >&2; die "apt-get install failed (.cache/apt-install.log)"; }
  log "packages installed"
else
  log "packages present"
fi

# ---------------------------------------------------------------------------------------
# 2. Docker engine (scripts/lib/engine.sh: start dockerd unless `docker info` answers)
# shellcheck source=scripts/lib/engine.sh
. scripts/lib/engine.sh
if engine_answers; then
  log "docker engine answers"
else
  engine_ensure log || die "no Docker engine"
  log "docker engine up"
fi

# ---------------------------------------------------------------------------------------
# 3. test images, in the background
images_log=.cache/build-test-images.log
log "building test images in the background (log: $images_log)"
bash scripts/build-test-images.sh >"$images_log" 2>&1 </dev/null &
images_pid=$!
# never leave the build running if this script is interrupted
trap 'kill "$images_pid" 2>/dev/null || true' INT TERM

# ---------------------------------------------------------------------------------------
# 4. virtualenv with the project and its test tools
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv || die "python3 -m venv failed"
fi
stamp=.venv/.corral-pip-test
want=$(sha256sum <pyproject.toml | cut -c1-64)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/pytest ]; then
  log "python packages up to date"
else
  log "pip install -e '.[test]'"
  rm -f "$stamp"
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' \
    >.cache/pip-install.log 2>&1; then
    tail -n 30 .cache/pip-install.log >&2
    kill "$images_pid" 2>/dev/null || true
    die "pip install failed (.cache/pip-install.log)"
  fi
  echo "$want" >"$stamp"
  log "python packages installed"
fi

# ---------------------------------------------------------------------------------------
# 5. the web UI (npm ci, tsc, esbuild), while the images may still be building
if ! bash scripts/build-web.sh; then
  kill "$images_pid" 2>/dev/null || true
  die "building the web UI failed"
fi

# ---------------------------------------------------------------------------------------
log "waiting for the test images"
if ! wait "$images_pid"; then
  tail -n 40 "$images_log" >&2
  die "building the test images failed ($images_log)"
fi
trap - INT TERM
while IFS= read -r line; do log "$line"; done <.cache/test-images.env
log "ready"
