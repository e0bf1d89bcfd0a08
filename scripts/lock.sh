#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml, for every Python >= 3.11 and platform at once:
#   requirements-dev.lock  runtime + dev tools (scripts/bootstrap.sh installs it)
#   requirements.lock      runtime only, the same versions (the Dockerfile installs it)
# Versions already locked are kept while they still satisfy pyproject.toml; extra arguments
# go to `uv pip compile`, e.g. scripts/lock.sh --upgrade, or --upgrade-package textual.
# Uses `uv` from PATH, else installs it once into ~/.cache/ops-pipeline/uv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
uv="$(command -v uv || true)"
if [ -z "$uv" ]; then
  tools="${XDG_CACHE_HOME:-$HOME/.cache}/ops-pipeline/uv"
  if [ ! -x "$tools/bin/uv" ]; then
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=0.5"
  fi
  uv="$tools/bin/uv"
fi
common=(--universal --python-version 3.11 --generate-hashes --quiet
        --custom-compile-command "scripts/lock.sh")
"$uv" pip compile pyproject.toml --extra dev "${common[@]}" "$@" -o requirements-dev.lock
"$uv" pip compile pyproject.toml -c requirements-dev.lock "${common[@]}" -o requirements.lock
