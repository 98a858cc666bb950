#!/usr/bin/env bash
# Start the corral daemon from this checkout, preparing what its main job needs:
#   scripts/serve.sh [corral serve options]   e.g. scripts/serve.sh --port 8765
# 1. a Docker engine: when `docker info` does not answer, as root on Debian/Ubuntu
#    docker.io is installed if missing and dockerd started in the background
#    (scripts/lib/engine.sh); otherwise the exact commands to run are printed and we stop;
# 2. the web UI (scripts/build-web.sh, again only when it changed), while
# 3. .venv is created on first use and the project installed into it (again only when
#    pyproject.toml changes);
# 4. `exec corral serve` with the given options. The daemon builds the default agent image
#    itself when it is missing (images/agent/build-default.sh), so this never waits for it.
# Each step prints what it did and how long it took.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/lib/engine.sh
. scripts/lib/engine.sh

say() { echo "serve: $*" >&2; }
t0=$EPOCHREALTIME
# "<what> (<seconds since the step began> s)", then the next step begins
done_step() {
  local now=$EPOCHREALTIME
  say "$1 ($(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.1f", b - a }') s)"
  t0=$now
}

# 1. the Docker engine (first: installing it may use apt, as the web UI's build may)
if engine_answers; then
  done_step "docker engine answers"
elif engine_ensure say; then
  done_step "docker engine up"
else
  say "then run scripts/serve.sh again"
  exit 1
fi

# 2. the web UI (skipped when web/dist is up to date), in the background while 3. pip
# runs. Without it the API still works and the page at / says how to build it.
web_result=$(mktemp)
(
  started=$EPOCHREALTIME
  if bash scripts/build-web.sh </dev/null; then outcome="web UI ready"; else
    outcome="the web UI was not built (see above); the API works without it"
  fi
  echo "$outcome ($(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s)" >"$web_result"
) &
web_pid=$!
trap 'kill "$web_pid" 2>/dev/null || true; rm -f "$web_result"' EXIT

# 3. the virtualenv with the project
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv || { say "python3 -m venv failed; on Debian/Ubuntu: sudo apt-get install -y python3-venv"; exit 1; }
fi
want=$(sha256sum <pyproject.toml | cut -c1-64)
installed=no
for stamp in .venv/.corral-pip-serve .venv/.corral-pip-test; do
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/corral ]; then
    installed=yes
  fi
done
if [ "$installed" = no ]; then
  say "pip install -e . (log: .venv/pip-install.log)"
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e . \
    >.venv/pip-install.log 2>&1; then
    tail -n 30 .venv/pip-install.log >&2
    say "pip install failed"
    exit 1
  fi
  echo "$want" >.venv/.corral-pip-serve
  done_step "python packages installed"
else
  done_step "python packages up to date"
fi
wait "$web_pid" || true
say "$(cat "$web_result")"
rm -f "$web_result"
trap - EXIT

# 4. the daemon; it builds the default agent image in the background when it is missing
say "starting corral serve $*"
exec .venv/bin/corral serve "$@"
