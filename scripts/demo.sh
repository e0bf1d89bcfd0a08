#!/usr/bin/env bash
# The main job on the embedded defaults: set up .venv if needed, then bring up the whole
# stack (embedded Postgres, the bundled simulator with two accounts, every role) under
# supervisord and wait until every process has reported a heartbeat.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/bootstrap.sh
exec ops up --demo "$@"
