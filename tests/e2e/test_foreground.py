"""`ops up --demo --foreground`: the container's PID 1 mode. `ops up` migrates, then execs
`supervisord -n` (same pid); `ops status` judges it; `ops down` ends it with exit 0."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT, make_home, tear_down
from tests.support import eventually_sync

pytestmark = pytest.mark.timeout(180)


def test_foreground_supervisord_is_the_up_process() -> None:
    home, _port, environ, env = make_home()
    log = (home / "foreground.out").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "ops", "up", "--demo", "--foreground"],
                            stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=ROOT)
    try:
        js: dict[str, object] = {}

        def healthy() -> bool:
            nonlocal js
            assert proc.poll() is None, (home / "foreground.out").read_text()
            out = subprocess.run([sys.executable, "-m", "ops", "status", "--json"],
                                 capture_output=True, text=True, env=environ, timeout=60,
                                 cwd=ROOT)
            assert out.stdout, out.stderr
            js = json.loads(out.stdout)
            return out.returncode == 0

        eventually_sync(healthy, "ops status healthy", 90, 1, explain=lambda: js)
        assert js.get("status") == "healthy", js
        supervisor = js["supervisor"]
        assert isinstance(supervisor, dict) and supervisor["pid"] == proc.pid  # exec'd
        down = subprocess.run([sys.executable, "-m", "ops", "down"], capture_output=True,
                              text=True, env=environ, timeout=120, cwd=ROOT)
        assert down.returncode == 0, down.stderr
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
        tear_down(env, environ)
