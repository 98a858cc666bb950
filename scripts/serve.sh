#!/usr/bin/env bash
# Start the corral daemon from this checkout:
#   scripts/serve.sh [corral serve options]   e.g. scripts/serve.sh --port 8765
# Creates .venv on first use and installs the project into it (again only when
# pyproject.toml changes), builds the web UI (scripts/build-web.sh, again only when it
# changed), then runs `corral serve` with the given options.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [ ! -x .venv/bin/python ]; then
  echo "serve: creating .venv" >&2
  python3 -m venv .venv
fi
want=$(sha256sum <pyproject.toml | cut -c1-64)
installed=no
for stamp in .venv/.corral-pip-serve .venv/.corral-pip-test; do
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/corral ]; then
    installed=yes
  fi
done
if [ "$installed" = no ]; then
  echo "serve: pip install -e . (log: .venv/pip-install.log)" >&2
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e . \
    >.venv/pip-install.log 2>&1; then
    tail -n 30 .venv/pip-install.log >&2
    echo "serve: pip install failed" >&2
    exit 1
  fi
  echo "$want" >.venv/.corral-pip-serve
fi

# The web UI (skipped when web/dist is up to date). Without it the API still works and
# the page at / says how to build it.
bash scripts/build-web.sh || echo "serve: the web UI was not built (see above); the API works without it" >&2

exec .venv/bin/corral serve "$@"
