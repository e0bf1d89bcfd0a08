#!/usr/bin/env bash
# Create a venv with the project and its dev tools installed; a no-op when up to date.
# Needs only Python >= 3.11 and pip. Sourced by the other scripts.
#   OPS_PYTHON  the Python to create it with (default: python3.11, else python3 if >= 3.11)
#   OPS_VENV    where (default .venv; relative paths are from the repository root)
# The dependencies come from requirements-dev.lock (exact versions, hashes checked), then the
# project itself without dependencies. scripts/lock.sh regenerates the lock.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OPS_VENV:-.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
lock="$root/requirements-dev.lock"

_py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
_py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

py="${OPS_PYTHON:-${PYTHON:-}}"
if [ -n "$py" ]; then
  _py_ok "$py" || { echo "bootstrap: OPS_PYTHON=$py is not a working Python 3.11 or newer" >&2; exit 2; }
  if [ -x "$venv/bin/python" ] && [ "$(_py_version "$venv/bin/python")" != "$(_py_version "$py")" ]; then
    echo "bootstrap: $venv runs Python $(_py_version "$venv/bin/python"), not $(_py_version "$py")" \
      "($py): remove it or choose another OPS_VENV" >&2
    exit 2
  fi
elif ! [ -x "$venv/bin/python" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && _py_ok "$c"; then py="$c"; break; fi
  done
  [ -n "$py" ] || { echo "bootstrap: Python 3.11 or newer is required (set OPS_PYTHON=/path/to/python3)" >&2; exit 2; }
fi

stamp="$venv/.installed-$(cat "$root/pyproject.toml" "$lock" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install --quiet --upgrade pip
  "${pip[@]}" install --quiet --require-hashes -r "$lock"
  "${pip[@]}" install --quiet --no-deps -e "$root"
  if ! problems="$("${pip[@]}" check 2>&1)"; then
    echo "bootstrap: $lock does not satisfy pyproject.toml (run scripts/lock.sh):" >&2
    echo "$problems" >&2
    exit 2
  fi
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
# The browser test of `ops dash --serve` (tests/tui/test_serve.py) drives Debian's chromium:
# install it where it is missing and apt can (as root); the test says so if it is absent.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  echo "bootstrap: installing chromium (browser test of ops dash --serve)" >&2
  if ! { apt-get update -qq >/dev/null \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
        >/dev/null; }; then
    echo "bootstrap: chromium could not be installed; the browser test will say so" >&2
  fi
fi
