"""Test helpers: wait for the app to reach a condition (poll with a deadline, no sleeps
standing in for synchronisation), read a table's cells as text (DataTable or
VirtualTable alike)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable

from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.supervise.supervisor import SupervisorClient
from tests.support import eventually
from tui.app import Dashboard
from tui.data import DashboardData
from tui.widgets.virtual_table import VirtualTable


async def until(pilot: Pilot[None], cond: Callable[[], bool], within_s: float = 15.0,
                what: str = "condition") -> None:
    """`eventually` for a running app: each check after the pilot's pause (the screen
    settled, its timers updated)."""
    async def settled() -> bool:
        await pilot.pause(0)
        return cond()

    await eventually(settled, what, within_s, 0.02)


def cells(table: DataTable[Any] | VirtualTable[Any], row_key: str) -> dict[str, str]:
    """Column key -> displayed text of one row."""
    if isinstance(table, VirtualTable):
        return table.row_text(row_key)
    row = table.get_row(row_key)
    keys = [c.value for c in table.columns]
    return {str(k): str(v) for k, v in zip(keys, row, strict=True)}


def column(table: DataTable[Any] | VirtualTable[Any], column_key: str) -> list[str]:
    """Displayed text of one column, top to bottom."""
    if isinstance(table, VirtualTable):
        return table.column_text(column_key)
    return [str(v) for v in table.get_column(column_key)]


def snapshot_app(env: RuntimeEnv, config: Config, now: datetime,
                 *writes: Callable[[Store], Awaitable[None]]) -> Dashboard:
    """A dashboard for `snap_compare` (which runs it with `App.run`, in a loop of its own):
    `writes` go to the test's Postgres first, then the app opens its own Store inside its
    loop; its clock is frozen at `now`, and it polls only when the test asks."""
    async def write() -> None:
        async with await Store.open(env, process="fixture") as store:
            for step in writes:
                await step(store)

    asyncio.run(write())

    async def opener() -> DashboardData:
        store = await Store.open(env, process="ops-dash")
        return DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                             lambda: now)

    async def close(data: DashboardData) -> None:
        await data.store.close()

    return Dashboard(opener, refresh_s=3600, on_exit=close)
