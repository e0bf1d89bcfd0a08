#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv if needed, lint, type-check, run the suite.
#   scripts/test.sh          everything, what CI runs: ruff, mypy, lint-imports, every tier
#   scripts/test.sh --fast   ruff, mypy, lint-imports, the unit and integration tiers; prints
#                            their wall time
#   scripts/test.sh --unit   the unit tier only (no process, no Postgres, no simulator)
#   scripts/test.sh ARGS     pytest ARGS, e.g. scripts/test.sh tests/store -x
# After --fast or --unit, further arguments go to pytest too. The tiers are pytest markers
# (tests/conftest.py). Tests run shuffled; the seed is printed at the end of each run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode=all
case "${1:-}" in
  --fast) mode=fast; shift ;;
  --unit) mode=unit; shift ;;
  "") ;;
  *) mode=pytest ;;
esac
. scripts/bootstrap.sh
if [ "$mode" = pytest ]; then
  exec pytest "$@"
fi

timed() {
  local label=$1 start rc=0
  shift
  start=$(date +%s.%N)
  "$@" || rc=$?
  awk -v s="$start" -v e="$(date +%s.%N)" -v l="$label" -v rc="$rc" \
    -v load="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')" \
    'BEGIN { printf "%s: %.1f s wall, exit %d (load average %s)\n", l, e - s, rc, load }'
  return "$rc"
}

if [ "$mode" = unit ]; then
  # CPU-bound (property tests): one worker per core, tests dealt out one by one.
  timed "unit tier" pytest -m unit -n "${OPS_TEST_WORKERS:-auto}" --dist worksteal "$@"
  exit
fi
ruff check ops tui tests bench
mypy
lint-imports  # the import contracts of .importlinter: layers, a pure core, no cycles
# Most integration and system tests wait on real processes and clocks, so more workers
# than cores (each with its own Postgres, ports and homes) overlap those waits: three for
# the whole suite, whose system tests judge timings of whole stacks; four for the fast
# tier. One file per worker at a time, longest files first (tests/conftest.py).
# OPS_TEST_WORKERS=0 runs it in one process.
if [ "$mode" = fast ]; then
  timed "fast tier (unit + integration)" pytest -m "unit or integration" \
    -n "${OPS_TEST_WORKERS:-4}" --dist loadfile --durations=15 "$@"
  exit
fi
exec pytest -n "${OPS_TEST_WORKERS:-3}" --dist loadfile --durations=25 "$@"
