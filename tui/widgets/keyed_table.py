"""`KeyedTable`: a DataTable updated in place by row key (dolphie's Processlist habit).

`sync(rows)` adds new rows, removes vanished ones and calls `update_cell` only for
values that changed, inside one `batch_update()`: the cursor and scroll position survive
every refresh, and an unchanged table costs no repaint. Styles for cells come from the
widget's component classes, so colours live in app.tcss.

Column widths are set by `sync` itself, at once: DataTable measures new cells only when
it next idles, and its render caches are keyed by an update counter that this measuring
does not move, so a row drawn in between (the cursor row, say) kept its too-narrow cells
until some cell changed, which on a quiet table may be never.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

_AS_TEXT: Any = object()
Row = tuple[str, Sequence["SortText"]]  # (row key, cells in column order)


class KeyedTable(DataTable["SortText"]):
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = ()  # (column key, label)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._values: dict[str, tuple[SortText, ...]] = {}
        self._widths: dict[str, int] = {}  # widest cell seen per column
        self._cell_styles: dict[str, Style] = {}

    def on_mount(self) -> None:
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)

    def style_of(self, component: str) -> Style:
        """The style app.tcss gives `component` (one of COMPONENT_CLASSES); cached until
        the stylesheet or theme changes."""
        style = self._cell_styles.get(component)
        if style is None:
            style = self._cell_styles[component] = self.get_component_rich_style(
                component, partial=True)
        return style

    def notify_style_update(self) -> None:
        self._cell_styles = {}
        super().notify_style_update()

    def styled(self, text: str, component: str | None = None,
               sort_value: Any = _AS_TEXT) -> SortText:
        """A cell showing `text` in `component`'s style, sorting by `sort_value` (default:
        the text; None: a missing value, sorted first)."""
        return SortText(text, text if sort_value is _AS_TEXT else sort_value,
                        self.style_of(component) if component else "")

    @property
    def selected_key(self) -> str | None:
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # cursor outside the table (e.g. just emptied)
            return None
        return key

    def sync(self, rows: Sequence[Row], sort: tuple[str, bool] | None = None) -> None:
        """Make the table show `rows` (by key); then, with `sort` = (column key, reverse),
        order rows by that column's `SortText.sort_value` (in place, no rebuild)."""
        wanted = {k for k, _ in rows}
        columns = [c for c, _ in self.COLUMNS]
        with self.app.batch_update():
            for gone in [k for k in self._values if k not in wanted]:
                self.remove_row(gone)
                del self._values[gone]
            for key, cells in rows:
                new = tuple(cells)
                old = self._values.get(key)
                if old is None:
                    self.add_row(*new, key=key)
                    for col, cell in zip(columns, new, strict=True):
                        self._fit(col, cell.cell_len)
                elif old != new:
                    for col, before, after in zip(columns, old, new, strict=True):
                        if before != after or _sort_value(before) != _sort_value(after):
                            # Columns only grow: asking DataTable to fit a cell that got
                            # narrower re-measures the whole column (quadratic over
                            # thousands of rows: see bench/dashboard.py).
                            grow = after.cell_len > self._widths.get(col, 0)
                            if grow:
                                self._fit(col, after.cell_len)
                            # update_width: DataTable then also updates its virtual size.
                            self.update_cell(key, col, after, update_width=grow)
                self._values[key] = new
            if sort is not None and self.row_count > 1:
                column, reverse = sort
                self.sort(column, key=_sort_value, reverse=reverse)

    def _fit(self, col: str, width: int) -> None:
        """Widen column `col` to show `width` cells, now (see the module docstring): any
        later draw uses the final width; DataTable's own measuring on idle then finds it
        already fits and changes nothing."""
        if width <= self._widths.get(col, 0):
            return
        self._widths[col] = width
        column = self.columns[ColumnKey(col)]
        column.content_width = max(column.content_width, width)


class SortText:
    """A one-line cell: text in one style, sorted by `sort_value` (a number, a time...).

    A plain slotted object rather than a rich Text: a refresh builds thousands of cells
    and Text's constructor dominated the cost (bench/dashboard.py); only the rows on
    screen are ever rendered.
    """

    __slots__ = ("plain", "sort_value", "style")

    def __init__(self, text: str, sort_value: Any, style: Style | str = "") -> None:
        self.plain = text
        self.sort_value = sort_value
        self.style = style

    @property
    def cell_len(self) -> int:
        return cell_len(self.plain)

    def __str__(self) -> str:
        return self.plain

    def __repr__(self) -> str:
        return f"SortText({self.plain!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SortText) and self.plain == other.plain and \
            self.style == other.style

    def __hash__(self) -> int:
        return hash(self.plain)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Segment(self.plain, console.get_style(self.style) if isinstance(self.style, str)
                      else self.style)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        n = cell_len(self.plain)
        return Measurement(n, n)


def _sort_value(cell: Any) -> Any:
    """Sort key of a cell: SortText's value, else its text; None sorts first either way."""
    value = cell.sort_value if isinstance(cell, SortText) else str(cell)
    return (value is not None, value if value is not None else 0)
