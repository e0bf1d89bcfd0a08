"""One real demo stack per chaos module (see rig.py); `ops down` always runs after."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.chaos.rig import ChaosRig
from tests.e2e.conftest import ROOT, Stack, make_home, tear_down


@pytest.fixture(scope="module")
def rig() -> Iterator[ChaosRig]:
    home, port, environ, env = make_home()
    t0 = time.monotonic()
    try:
        up = subprocess.run([sys.executable, "-m", "ops", "up", "--demo", "--timeout", "90"],
                            capture_output=True, text=True, env=environ, timeout=150, cwd=ROOT)
        assert up.returncode == 0, up.stdout + up.stderr
        yield ChaosRig(Stack(env, environ, port, up, time.monotonic() - t0))
    finally:
        tear_down(env, environ)
