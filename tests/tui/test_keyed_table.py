"""KeyedTable's column widths: a row drawn right after `sync` (before DataTable's own
measuring on idle) must not keep too-narrow cells afterwards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.app import App, ComposeResult

from tui.widgets.keyed_table import KeyedTable, Row


class _Table(KeyedTable):
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (("name", "Name"), ("state", "State"))


class _App(App[None]):
    # A fixed size, as a dashboard panel has: growing rows do not resize the table.
    CSS = "_Table { height: 6; width: 60; }"

    def compose(self) -> ComposeResult:
        yield _Table()


def _rows(table: KeyedTable, *names: str) -> list[Row]:
    return [(n, [table.styled(n), table.styled("NOT-RUNNING")]) for n in names]


async def test_a_row_drawn_before_idle_is_drawn_again_at_the_final_widths() -> None:
    async with _App().run_test(size=(60, 8)) as pilot:
        table = pilot.app.query_one(_Table)
        await pilot.pause()
        table.sync(_rows(table, "watchdog", "large-position-manager"))
        # Drawn at once, as a refresh of the cursor row may be, before the table idles.
        early = table.render_line(1).text
        await pilot.pause()
        late = table.render_line(1).text
        assert late.split() == ["watchdog", "NOT-RUNNING"], late
        assert early == late  # and it was right from the start
        # The column fits the widest name: the state starts at the same place in each row.
        assert late.index("NOT-RUNNING") == table.render_line(2).text.index("NOT-RUNNING")

        # A cell that grows later widens its column at once too.
        table.sync([("watchdog", [table.styled("watchdog-with-a-longer-name-now"),
                                  table.styled("RUNNING")]),
                    *_rows(table, "large-position-manager")])
        assert "watchdog-with-a-longer-name-now" in table.render_line(1).text
        await pilot.pause()
        assert table.render_line(1).text.split() == ["watchdog-with-a-longer-name-now",
                                                     "RUNNING"]
