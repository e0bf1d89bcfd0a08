"""Test helpers: wait for the app to reach a condition (poll with a deadline, no sleeps
standing in for synchronisation), read a table's cells as text (DataTable or
VirtualTable alike)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable

from tui.widgets.virtual_table import VirtualTable


async def until(pilot: Pilot[None], cond: Callable[[], bool], within_s: float = 15.0,
                what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)


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
