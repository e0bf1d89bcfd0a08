"""`ops positions adopt|release` through real processes and real Postgres: the change is
one audit row (who, when, before -> after); nothing to move is exit 1 saying why; bad
arguments are exit 2 naming them."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ops.runtime.env import RuntimeEnv
from ops.store import Store
from tests.store.factories import position
from tests.test_control import REPO, ops, query


@pytest.fixture
def environ(pg_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env.update(OPS_CONFIG=str(REPO / "conf" / "ops.toml"), OPS_HOME=str(tmp_path / "home"),
               OPS_DATABASE_URL=pg_url, PYTHONPATH=str(REPO))
    return env


def test_adopt_then_release_with_an_audit_row(environ: dict[str, str], pg_url: str) -> None:
    async def sync() -> None:
        env = RuntimeEnv(config_path=Path(environ["OPS_CONFIG"]),
                         home=Path(environ["OPS_HOME"]), database_url=pg_url)
        async with await Store.open(env, process="test") as store:
            await store.sync_positions("tiny", [position("QCOM", "26")], datetime.now(UTC))

    asyncio.run(sync())
    out = ops(environ, "positions", "adopt", "tiny", "QCOM", "--qty", "10")
    assert out.returncode == 0, out.stderr
    assert "adopted 10 by cli:" in out.stdout and "managed 10, external 16" in out.stdout
    out = ops(environ, "positions", "release", "tiny", "QCOM")
    assert out.returncode == 0, out.stderr
    assert "managed 0, external 26" in out.stdout
    rows = query(pg_url, "SELECT kind, managed_delta, by, detail FROM position_adjustments "
                         "ORDER BY id")
    assert [(r["kind"], r["managed_delta"]) for r in rows] == [
        ("adopt", Decimal(10)), ("release", Decimal(-10))]
    assert all(str(r["by"]).startswith("cli:") for r in rows)
    assert rows[0]["detail"] == "adopted 10 QCOM: managed 0 -> 10 of a position of 26"
    # Nothing left to release: exit 1 saying why; unknown account / bad qty: exit 2.
    out = ops(environ, "positions", "release", "tiny", "QCOM")
    assert out.returncode == 1 and "holds no managed QCOM" in out.stderr
    out = ops(environ, "positions", "adopt", "nope", "QCOM")
    assert out.returncode == 2 and "nope" in out.stderr
    out = ops(environ, "positions", "adopt", "tiny", "QCOM", "--qty", "-3")
    assert out.returncode == 2 and "--qty" in out.stderr
