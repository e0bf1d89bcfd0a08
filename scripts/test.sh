#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv if needed, lint, type-check, run the suite.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/store -x
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/bootstrap.sh
if [ $# -eq 0 ]; then
  ruff check ops tui tests
  mypy
fi
exec pytest "$@"
