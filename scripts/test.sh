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
  # The whole suite: most tests wait on real processes and clocks, so three workers (each
  # with its own Postgres, ports and homes) overlap those waits on two cores; longest files
  # first (tests/conftest.py). OPS_TEST_WORKERS=0 runs
  # it in one process.
  exec pytest -n "${OPS_TEST_WORKERS:-3}" --dist loadfile --durations=25
fi
exec pytest "$@"
