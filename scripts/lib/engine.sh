# shellcheck shell=bash
# Make sure a Docker engine answers `docker info`; sourced by scripts/serve.sh and
# scripts/setup-test-env.sh.
#
#   engine_ensure LOG_FUNCTION
#
# Returns 0 when the engine answers (it was up, or it was installed and started here).
# As root (or with passwordless sudo) on Debian/Ubuntu it installs `docker.io` when no
# `dockerd` is installed and starts `dockerd` in the background (log: /tmp/dockerd.log),
# then waits up to 60 s for it to answer. Otherwise it prints the exact commands to run on
# stderr and returns 1. Every message goes through LOG_FUNCTION (one argument, one line).

engine_answers() { docker info >/dev/null 2>&1; }

# root, or a sudo that asks for no password
engine_may_admin() { [ "$(id -u)" = 0 ] || sudo -n true >/dev/null 2>&1; }

engine_as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

engine_is_debian() { [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; }

# The commands a user runs by hand when we may not: one per line.
engine_fix_commands() {
  local me
  me=$(id -un 2>/dev/null || echo "$USER")
  if ! command -v dockerd >/dev/null 2>&1 && ! command -v docker >/dev/null 2>&1; then
    if engine_is_debian; then
      echo "sudo apt-get install -y docker.io"
    else
      echo "install Docker Engine: https://docs.docker.com/engine/install/"
    fi
  fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    echo "sudo systemctl start docker"
  else
    echo "sudo sh -c 'setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &'"
  fi
  if [ "$(id -u)" != 0 ] && [ -S /var/run/docker.sock ] && [ ! -w /var/run/docker.sock ]; then
    echo "sudo usermod -aG docker $me && newgrp docker"
  fi
}

engine_ensure() {
  local log=$1 i
  if engine_answers; then
    return 0
  fi
  if ! engine_may_admin || ! { engine_is_debian || command -v dockerd >/dev/null 2>&1; }; then
    "$log" "no Docker engine answers \`docker info\`; run:"
    while IFS= read -r line; do "$log" "  $line"; done < <(engine_fix_commands)
    return 1
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    "$log" "installing docker.io (apt-get; log: /tmp/corral-apt-docker.log)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { engine_as_root apt-get update -qq && engine_as_root apt-get install -y -qq \
      --no-install-recommends docker.io; } >/tmp/corral-apt-docker.log 2>&1; then
      tail -n 20 /tmp/corral-apt-docker.log >&2 || true
      "$log" "apt-get install docker.io failed; run: sudo apt-get install -y docker.io"
      return 1
    fi
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    "$log" "starting dockerd in the background (log: /tmp/dockerd.log)"
    engine_as_root setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &
  else
    "$log" "dockerd is running; waiting for it to answer"
  fi
  for ((i = 0; i < 120; i++)); do
    engine_answers && return 0
    sleep 0.5
  done
  tail -n 30 /tmp/dockerd.log >&2 2>/dev/null || true
  "$log" "the Docker engine did not answer within 60 s (log: /tmp/dockerd.log)"
  return 1
}
