"""PositionsTable (a VirtualTable) on its own: sorting by every column both ways, the
cursor kept by row key across re-sorts, refreshes and removals, keyboard paging, and the
point of it all: a refresh formats only the rows on screen. Also the footer at 80
columns (keys shown whole or not at all)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.geometry import Region
from textual.pilot import Pilot
from textual.widgets._footer import FooterKey

import tui.app
from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.supervise.supervisor import SupervisorClient
from tests.tui.conftest import T
from tests.tui.fixtures import write_fixture
from tests.tui.helpers import until
from tui import format as f
from tui.app import Dashboard
from tui.data import DashboardData, PositionRow
from tui.widgets.footer import DashFooter, key_width
from tui.widgets.positions import PositionsTable


def row(i: int, account: str = "large", pl: str | None = None, step: int = 0) -> PositionRow:
    """Position i: every column's value differs between rows and orders differently."""
    qty = Decimal((i * 7) % 11 + 1)
    managed = qty * ((i * 5) % 4) // 3  # external, mixed or managed
    avg = Decimal(100 + (i * 3) % 13)
    last = avg + Decimal((i * 5 + step) % 9 - 4)
    unreal = Decimal(pl) if pl is not None else qty * (last - avg)
    return PositionRow(
        account=account, symbol=f"S{i:04d}", description=f"S{i:04d}", qty=qty, avg_entry=avg,
        last_price=last, market_value=qty * last, unrealized_pl=unreal,
        unrealized_pct=(last - avg) / avg * 100,
        opened_at=T - timedelta(minutes=(i * 17) % 23), managed=managed)


class Host(App[None]):
    CSS_PATH = Path(tui.app.__file__).with_name("app.tcss")  # the colours live there
    CSS = "PositionsTable { height: 1fr; }"

    def compose(self) -> ComposeResult:
        yield PositionsTable(id="positions")


def keys(table: PositionsTable) -> list[str]:
    return [r.key for r in table.rows]


def line_text(table: PositionsTable, y: int) -> str:
    return table.render_line(y).text


async def shown(pilot: Pilot[None], rows: Sequence[PositionRow],
                now: datetime = T) -> PositionsTable:
    table = pilot.app.query_one(PositionsTable)
    table.show(tuple(rows), now)
    await pilot.pause()
    return table


async def test_sorts_by_every_column_both_ways() -> None:
    rows = [row(i, "large" if i % 2 else "tiny") for i in range(12)]
    # No quote yet, ownership unknown.
    rows.append(replace(row(12), unrealized_pl=None, last_price=None, managed=None))
    # What each column means, independently of the table's own sort keys.
    value: dict[str, Callable[[PositionRow], Any]] = {
        "account": lambda r: (r.account, r.symbol), "symbol": lambda r: r.description,
        "qty": lambda r: r.qty, "avg": lambda r: r.avg_entry,
        "owner": lambda r: None if r.managed is None else (r.qty - r.managed) / r.qty,
        "pl": lambda r: r.unrealized_pl, "pct": lambda r: r.unrealized_pct,
        "last": lambda r: r.last_price, "value": lambda r: r.market_value,
        "held": lambda r: T - (r.opened_at or T),
    }
    async with Host().run_test(size=(120, 30)) as pilot:
        table = await shown(pilot, rows)
        assert set(value) == {c for c, _ in table.COLUMNS}
        for column, get in value.items():
            for reverse in (False, True):
                table.sort_by = (column, reverse)
                await pilot.pause()
                got = [get(r) for r in table.rows]
                present = [v for v in got if v is not None]
                assert present == sorted(present, reverse=reverse), (column, reverse, got)
                if column in ("pl", "last", "owner"):  # missing first, or last reversed
                    assert (got[-1] if reverse else got[0]) is None, (column, got)
                label = dict(table.COLUMNS)[column]
                assert label + ("▼" if reverse else "▲") in line_text(table, 0)
                assert f"sorted by {label} {'↓' if reverse else '↑'}" in \
                    str(table.border_subtitle)


async def test_cycle_sort_walks_the_columns_and_reverse_flips() -> None:
    async with Host().run_test(size=(120, 30)) as pilot:
        table = await shown(pilot, [row(i) for i in range(5)])
        order = [c for c, _ in table.COLUMNS]
        assert table.sort_by == ("account", False)
        for expected in [*order[1:], order[0]]:
            table.cycle_sort()
            assert table.sort_by == (expected, False)
        table.cycle_sort(reverse=True)
        assert table.sort_by == ("account", True)
        await pilot.pause()
        assert keys(table) == sorted(keys(table), reverse=True)


async def test_cursor_stays_on_its_row_across_resort_refresh_and_removal() -> None:
    rows = [row(i) for i in range(30)]
    async with Host().run_test(size=(120, 20)) as pilot:
        table = await shown(pilot, rows)
        table.focus()
        await pilot.press("down", "down", "down")
        chosen = table.selected
        assert chosen is not None and chosen.key == "large/S0003"
        # Re-sort: the row moves, the cursor moves with it and stays in view.
        table.sort_by = ("pl", True)
        await pilot.pause()
        assert table.selected is not None and table.selected.key == chosen.key
        index = table.cursor_row
        assert index is not None and keys(table)[index] == chosen.key
        assert table.scroll_y <= index < table.scroll_y + table.page_rows
        # A refresh with new prices (new order): still the same position.
        moved = [row(i, step=5) for i in range(30)]
        table = await shown(pilot, moved)
        assert table.selected is not None and table.selected.key == chosen.key
        assert table.selected.last_price == moved[3].last_price
        # The selected position closes: the cursor takes the row now at its place.
        at = table.cursor_row
        assert at is not None
        remaining = [r for r in moved if r.key != chosen.key]
        table = await shown(pilot, remaining)
        assert table.selected is not None and table.selected.key != chosen.key
        assert table.cursor_row == min(at, len(remaining) - 1)
        assert table.selected.key == keys(table)[table.cursor_row]
        # The last row selected and removed: the cursor clamps to the new last row.
        await pilot.press("end")
        last = table.selected
        assert last is not None and last.key == keys(table)[-1]
        table = await shown(pilot, [r for r in remaining if r.key != last.key])
        assert table.cursor_row == table.row_count - 1
        # Nothing left: nothing selected.
        table = await shown(pilot, [])
        assert table.selected is None and table.cursor_row is None
        assert line_text(table, 1).strip() == ""


async def test_the_view_follows_a_cursor_row_that_moves_on_resort() -> None:
    async with Host().run_test(size=(120, 12)) as pilot:
        table = await shown(pilot, [row(i) for i in range(60)])
        table.focus()
        await pilot.press("end")  # the last row, at the bottom of a scrolled view
        bottom = table.selected
        assert bottom is not None and table.scroll_y > 0
        table.sort_by = ("account", True)  # now the first row
        await pilot.pause()
        assert table.selected == bottom and table.cursor_row == 0 and table.scroll_y == 0
        # A cursor scrolled out of view by hand stays where it is: the view does not jump.
        table.scroll_to(y=20, animate=False)
        await pilot.pause()
        table.sort_by = ("account", False)
        await pilot.pause()
        assert table.selected == bottom and table.cursor_row == 59 and table.scroll_y == 20


async def test_keyboard_paging() -> None:
    rows = [row(i) for i in range(100)]
    async with Host().run_test(size=(120, 12)) as pilot:
        table = await shown(pilot, rows)
        table.focus()
        page = table.page_rows
        assert 5 <= page < 12
        await pilot.press("pagedown")
        assert table.cursor_row == page
        assert table.scroll_y <= page < table.scroll_y + page  # scrolled into view
        await pilot.press("pagedown", "pageup", "up")
        assert table.cursor_row == page - 1
        await pilot.press("end")
        assert table.cursor_row == 99 and table.scroll_y == 100 - page
        assert "S0099" in line_text(table, page)  # the last row, on the last line
        await pilot.press("down")
        assert table.cursor_row == 99  # no wrapping
        await pilot.press("home")
        assert table.cursor_row == 0 and table.scroll_y == 0
        await pilot.press("up")
        assert table.cursor_row == 0
        assert "S0000" in line_text(table, 1)
        # A click selects the row under it (line 0 is the header: nothing happens).
        await pilot.press("pagedown", "pagedown")
        top = int(table.scroll_y)
        assert top > 0
        await pilot.click(PositionsTable, offset=(3, 4))
        assert table.cursor_row == top + 3
        await pilot.click(PositionsTable, offset=(3, 0))
        assert table.cursor_row == top + 3


async def test_a_refresh_formats_only_the_visible_rows() -> None:
    rows = [row(i, acct) for acct in ("large", "tiny") for i in range(1000)]
    async with Host().run_test(size=(120, 24)) as pilot:
        table = await shown(pilot, rows)
        visible = table.page_rows
        assert visible < 30
        # Setting 2,000 new rows (every price moved) formats visible rows only until one
        # differs from the screen (here the first)...
        before = table.rows_formatted
        fresh = tuple(row(i, acct, step=3) for acct in ("large", "tiny") for i in range(1000))
        table.show(fresh, T)
        assert table.rows_formatted - before == 1
        # ...and a full paint formats exactly the rows on screen.
        table.render_lines(Region(0, 0, table.size.width, table.size.height))
        assert table.rows_formatted - before == 1 + visible
        # The clock pass (same rows, later time): no re-sort, only a repaint, new ages.
        shown_rows = table.rows
        assert line_text(table, 2).split()[-1] == "17m"  # large/S0001, opened 17 min ago
        before = table.rows_formatted
        table.show(fresh, T + timedelta(minutes=10))
        assert table.rows is shown_rows
        table.render_lines(Region(0, 0, table.size.width, table.size.height))
        assert table.rows_formatted - before == 1 + visible
        assert line_text(table, 2).split()[-1] == "27m"


async def test_an_unchanged_screen_is_not_repainted() -> None:
    """Idle CPU: a refresh or clock pass that changes nothing on screen paints nothing."""
    rows = tuple(row(i) for i in range(200))
    async with Host().run_test(size=(120, 12)) as pilot:
        t0 = T + timedelta(minutes=10)  # every age in whole minutes from here
        table = await shown(pilot, rows, t0)
        await pilot.pause()
        visible = table.page_rows

        async def formatted_by(rows: Sequence[PositionRow], now: datetime) -> int:
            before = table.rows_formatted
            table.show(rows, now)
            await pilot.pause()
            await pilot.pause()
            return table.rows_formatted - before

        # Same rows (another load with equal values, or the clock within the same age):
        # every visible row is checked against the screen, nothing is painted.
        assert await formatted_by(rows, t0 + timedelta(seconds=5)) == visible
        assert await formatted_by(tuple(rows), t0 + timedelta(seconds=5)) == visible
        # The ages on screen move: the check stops at the first row, then the paint.
        assert await formatted_by(rows, t0 + timedelta(minutes=1)) == 1 + visible
        # A price off screen moves: not repainted; on screen (5th line): repainted.
        off = rows[:-1] + (replace(rows[-1], last_price=Decimal(1)),)
        assert await formatted_by(off, t0 + timedelta(minutes=1)) == visible
        on = off[:4] + (replace(off[4], last_price=Decimal(1)),) + off[5:]
        assert await formatted_by(on, t0 + timedelta(minutes=1)) == 5 + visible


async def test_gains_and_losses_read_in_monochrome_and_colour() -> None:
    async with Host().run_test(size=(120, 10)) as pilot:
        table = await shown(pilot, [row(1, pl="12.5"), row(2, pl="-3"), row(3, pl="0")])
        assert [table.row_text(k)["pl"] for k in keys(table)] == ["+12.50", "-3.00", "+0.00"]
        gain, loss, flat = (table.cell_style(k, "pl") for k in keys(table))
        assert gain.color is not None and loss.color is not None and gain != loss
        assert flat == type(flat)()  # zero: no colour


async def test_footer_shows_whole_keys_only(dash_env: RuntimeEnv, config: Config,
                                            ops_store: Store) -> None:
    await write_fixture(ops_store, T)
    for width in (80, 160):
        await _check_footer(DashboardData(
            dash_env, config, ops_store, SupervisorClient.for_env(dash_env, timeout_s=1),
            lambda: T), width)


async def _check_footer(data: DashboardData, width: int) -> None:
    app = Dashboard(data, refresh_s=3600)
    async with app.run_test(size=(width, 24)) as pilot:
        footer = app.query_one(DashFooter)
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await until(pilot, lambda: bool(footer.query_children(FooterKey)), what="footer keys")
        await pilot.pause()
        all_keys = list(footer.query_children(FooterKey))
        visible = [k for k in all_keys if k.display]
        assert sum(key_width(k) for k in visible) <= width
        descriptions = [k.description for k in visible]
        assert descriptions[0] == "Help" and "Resume" in descriptions
        if width == 80:
            # What does not fit is hidden whole, from the end (least important).
            assert [k.description for k in all_keys if not k.display] == [
                "Log", "Filter", "Sort", "Accept positions"]
        else:
            assert all(k.display for k in all_keys)
        # Every shown key sits fully left of the palette key.
        palette = next(k for k in all_keys if k.has_class("-command-palette"))
        assert all(k.region.right <= palette.region.x for k in visible if k is not palette)


def test_owner_words() -> None:
    """The owner column's words: compact on screen, the split spelled out for --once."""
    d = Decimal
    assert f.owner(d(10), d(10)) == "managed"
    assert f.owner(d(10), d(0)) == "external"
    assert f.owner(d(10), d(7)) == "7m/3x"
    assert f.owner(d(10), d(7), long=True) == "7 managed / 3 external"
    assert f.owner(d(-10), d(-4)) == "4m/6x"  # a short position: the qty column has the sign
    assert f.owner(d("1500.5"), d(1200)) == "1,200m/300.5x"
    assert f.owner(d(10), None) == "unknown"
