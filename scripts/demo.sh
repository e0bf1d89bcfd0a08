#!/usr/bin/env bash
# The main job on the embedded defaults: set up .venv if needed, then bring up the whole
# stack (embedded Postgres, the bundled simulator with this OPS_HOME's own demo accounts,
# every role) under supervisord and wait until every process has reported a heartbeat.
# OPS_HOME defaults to ~/.local/state/ops-pipeline; arguments go to `ops up --demo`
# (e.g. `scripts/demo.sh --port 9000` to move the simulator: one setting).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/bootstrap.sh
exec ops up --demo "$@"
