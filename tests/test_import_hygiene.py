"""The core never imports the UI: `ops` and every module under it load without textual."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import ops


def _ops_modules() -> list[str]:
    # ops.__main__ runs the CLI on import; everything else must import cleanly.
    return sorted(
        m.name
        for m in pkgutil.walk_packages(ops.__path__, prefix="ops.")
        if m.name != "ops.__main__"
    )


def test_ops_never_imports_textual() -> None:
    modules = _ops_modules()
    assert "ops.models" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m == 'textual' or m.startswith(('textual.', 'tui')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"ops imported UI modules: {out.stdout.strip()}"
