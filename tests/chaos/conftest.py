"""One real demo stack per chaos module (see rig.py); `ops down` always runs after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.rig import ChaosRig
from tests.e2e.conftest import running_demo


@pytest.fixture(scope="module")
def rig() -> Iterator[ChaosRig]:
    with running_demo() as stack:
        assert stack.up.returncode == 0, stack.up.stdout + stack.up.stderr
        yield ChaosRig(stack)
