#!/usr/bin/env bash
# Run corral's whole check: set up the machine, lint, type-check, then pytest.
#   scripts/test.sh                 # everything
#   scripts/test.sh -k worktree -x  # arguments go to pytest
# Set-up (scripts/setup-test-env.sh) installs what is missing and builds the test images;
# their tags are exported from .cache/test-images.env. pytest writes a JUnit report to
# test-artifacts/junit.xml. Exit code: pytest's; any lint or type error, or no test
# collected, fails too.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

start=$(date +%s)
log() { printf '[%s +%3ss] test: %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - start))" "$*" >&2; }

bash scripts/setup-test-env.sh

set -a
# shellcheck disable=SC1091
. .cache/test-images.env
set +a

status=0
log "ruff check"
.venv/bin/ruff check . || status=1
log "ruff format --check"
.venv/bin/ruff format --check . || status=1
log "mypy"
.venv/bin/mypy || status=1
if [ "$status" != 0 ]; then
  log "FAILED: lint or type errors above (running the tests anyway)"
fi

mkdir -p test-artifacts
log "pytest $*"
rc=0
timeout --kill-after=30s 30m .venv/bin/python -m pytest --junitxml=test-artifacts/junit.xml "$@" || rc=$?
case "$rc" in
  0) log "pytest passed" ;;
  5) log "FAILED: pytest collected no tests"; rc=1 ;;
  124 | 137) log "FAILED: pytest ran past its 30 minute limit and was stopped" ;;
  *) log "FAILED: pytest exited with $rc" ;;
esac

if [ "$rc" = 0 ] && [ "$status" != 0 ]; then
  log "FAILED: tests passed but lint or type checks did not"
  rc=1
fi
exit "$rc"
