"""Snapshots of the states an operator must read at a glance, at 80x24 and 160x50:
healthy, degraded (a late process and an open incident), paused, flatten, Postgres down.

Every process heartbeats, so these run in the orchestrated layout (processes from their
heartbeat rows: a real layout, and the only one whose process states a test can fix
without supervisord's own pids and uptimes). Real Postgres, frozen clock at T
(tests/tui/conftest.py). Update only after looking at the report:
`pytest tests/tui/test_snapshot_states.py --snapshot-update`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from ops.core.config import Config
from ops.core.models import TradeUpdate
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.embedded import EmbeddedPostgres
from ops.store.ownership import pipeline_prefix
from ops.supervise.layout import orchestrated_processes
from tests.tui.conftest import CONFIG, T, pin_demo_identity
from tests.tui.fixtures import account_info, beat, order, position, ran
from tests.tui.helpers import snapshot_app, until
from tui.app import Dashboard

SnapCompare = Callable[..., bool]
Setup = Callable[[Store], Awaitable[None]]
SIZES = {"small": (80, 24), "large": (160, 50)}


@pytest.fixture
def orchestrated(tmp_path: Path) -> Path:
    path = tmp_path / "ops.toml"
    path.write_text(CONFIG.read_text().replace('layout = "supervisord"',
                                               'layout = "orchestrated"'))
    return path


async def _base(store: Store, config: Config) -> None:
    """Two accounts trading normally: every process reported a second ago."""
    await store.record_account("large", account_info("large", "100250.50", "100000.00"), T)
    await store.record_account("tiny", account_info("tiny", "990.00", "1000.00"), T)
    opened = T - timedelta(minutes=42)
    for at in (opened, T - timedelta(seconds=1)):  # first seen, last synced
        await store.sync_positions("large", [position("AAPL", "10", "180", "189")], at)
        await store.sync_positions("tiny", [position("SPY", "1", "500", "495")], at)
    for acct in ("large", "tiny"):
        await store.set_control(acct, "reconciliation",
                                {"state": "reconciled", "at": T.isoformat()}, by="fixture")
    for p in orchestrated_processes(config):
        await beat(store, p.name, p.account, p.role, T - timedelta(seconds=1))
        await ran(store, p.name, p.account, p.role, T - timedelta(seconds=1))
    buy = order("o-1", "AAPL", "buy", "10", "filled", T - timedelta(seconds=30), "180",
                client_order_id=pipeline_prefix("large") + "sig-1")
    await store.upsert_orders("large", [buy])
    await store.record_trade_updates("large", [TradeUpdate(
        event="fill", order=buy, timestamp=T - timedelta(seconds=30), execution_id="x-1",
        price=Decimal("180"), qty=Decimal("10"), position_qty=Decimal("10"))])
    spy = order("o-2", "SPY", "buy", "1", "filled", T - timedelta(minutes=42), "500",
                client_order_id=pipeline_prefix("tiny") + "sig-2")
    await store.upsert_orders("tiny", [spy])


async def _degraded(store: Store) -> None:
    """large's dispatcher last ran 40 s ago (2 s interval: late), and it is an incident."""
    await ran(store, "large-dispatcher", "large", "dispatcher", T - timedelta(seconds=40))
    await store.pool.execute("DELETE FROM runs WHERE process = 'large-dispatcher' "
                             "AND slot_time > $1", T - timedelta(seconds=40))
    await store.open_incident("late", detail="no completed run for 40s (interval 2s)",
                              process="large-dispatcher", dedupe_key="late:large-dispatcher",
                              at=T - timedelta(seconds=30))


async def _paused(store: Store) -> None:
    await store.set_control("large", "kill_switch", {"mode": "reduce-only"}, by="test")
    await store.set_control("tiny", "kill_switch", {"mode": "halt"}, by="test")


async def _flatten(store: Store) -> None:
    await store.set_control("large", "kill_switch", {"mode": "flatten"}, by="test")


def _app(env: RuntimeEnv, extra: Setup | None = None) -> Dashboard:
    pin_demo_identity(env.home)
    config = load_config(env.config_path, home=env.home)

    async def base(store: Store) -> None:
        await _base(store, config)

    return snapshot_app(env, config, T, base, *([extra] if extra is not None else []))


async def _settled(pilot: Pilot[Any]) -> None:
    """Two loads (column widths only grow to fit what was shown: after the second they
    have settled), then a pause for the last render."""
    app = pilot.app
    assert isinstance(app, Dashboard)
    await until(pilot, lambda: app.loads >= 1, what="first load")
    app.poll()
    await until(pilot, lambda: app.loads >= 2, what="second load")
    await pilot.pause()


def _env(ops_env: RuntimeEnv, config_path: Path) -> RuntimeEnv:
    return RuntimeEnv(config_path=config_path, home=ops_env.home,
                      database_url=ops_env.database_url)


STATES: dict[str, Setup | None] = {
    "healthy": None, "degraded": _degraded, "paused": _paused, "flatten": _flatten}


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("state", sorted(STATES))
def test_state(snap_compare: SnapCompare, ops_env: RuntimeEnv, orchestrated: Path,
               state: str, size: str) -> None:
    app = _app(_env(ops_env, orchestrated), STATES[state])
    assert snap_compare(app, terminal_size=SIZES[size], run_before=_settled)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_postgres_down(snap_compare: SnapCompare, pg_dedicated: EmbeddedPostgres,
                       pg_home: Path, orchestrated: Path, size: str) -> None:
    """Postgres stopped after the data was written: the dashboard reads the SQLite
    buffer, and says so in words."""
    env = RuntimeEnv(config_path=orchestrated, home=pg_home / "ops",
                     database_url=pg_dedicated.url())
    app = _app(env)
    pg_dedicated.stop(mode="fast")
    assert snap_compare(app, terminal_size=SIZES[size], run_before=_settled)
