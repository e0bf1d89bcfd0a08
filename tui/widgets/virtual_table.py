"""`VirtualTable`: a sortable, keyed table on Textual's Line API that renders only what is
on screen.

DataTable keeps a cell object per row and column and re-sorts its own row structures; at
thousands of rows whose prices all move each second, `update_cell` and `sort()` cost
hundreds of milliseconds per refresh (bench/dashboard.py). Textual offers no lazy table,
so this one is a `ScrollView` (Textual's base for Line API widgets) over a plain sorted
Python list of the rows themselves:

- `set_rows(rows)` sorts the list with a key function (no cell is built) and keeps the
  cursor on the same row *key*, whatever its new position;
- `render_lines` formats only the rows in the viewport (`cells(row)`, a subclass hook), so a
  refresh, a clock pass or a key press costs what the screen shows, not the row count;
- colours come from component classes (app.tcss), meaning from the text itself.

Column widths fit the label and then only grow to the widest
cell shown so far, so scrolling does not make the columns jump back and forth.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

R = TypeVar("R")
#: One formatted cell: its text and the component class that styles it (None: plain).
Cell = tuple[str, str | None]
#: Drawn in the sorted column's right padding, so sorting never widens a column.
SORT_MARK = {False: "▲", True: "▼"}


class VirtualTable(ScrollView, Generic[R], can_focus=True):
    """Rows of type R, one line each, a fixed header line, a row cursor kept by key.

    Subclasses set COLUMNS and implement `row_key`, `sort_key` and `cells`.
    """

    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = ()  # (column key, label)
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "vtable--header", "vtable--cursor", "vtable--even-row", "vtable--odd-row",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor_up", "Cursor up", show=False),
        Binding("down", "cursor_down", "Cursor down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,ctrl+home", "first", "First row", show=False),
        Binding("end,ctrl+end", "last", "Last row", show=False),
    ]
    # The same look as DataTable (the other panels are DataTables).
    DEFAULT_CSS = """
    VirtualTable {
        background: $surface;
        color: $foreground;
        &:focus {
            background-tint: $foreground 5%;
            & > .vtable--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .vtable--header { background-tint: $foreground 5%; }
        }
        &:dark > .vtable--even-row { background: $surface-darken-1 40%; }
        & > .vtable--header { text-style: bold; background: $panel; color: $foreground; }
        &:ansi > .vtable--header { background: ansi_bright_blue; color: ansi_default; }
        & > .vtable--odd-row { }
        & > .vtable--even-row { background: $surface-lighten-1 50%; }
        & > .vtable--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[R] = []  # in display order
        self._index: dict[str, int] = {}  # row key -> position in `rows`
        self.cursor_key: str | None = None
        self.sorted_by: tuple[str, bool] | None = None
        self._widths = [cell_len(label) for _, label in self.COLUMNS]
        self._styles: dict[str, Style] = {}
        self._frame: dict[int, Sequence[Cell]] = {}  # row index -> cells, this paint
        self._painted: dict[int, Sequence[Cell]] = {}  # ... as of the last full paint
        self._painted_view: tuple[object, ...] | None = None
        #: Rows formatted since creation: what a refresh costs (tests, bench).
        self.rows_formatted = 0

    # --- subclass hooks ---------------------------------------------------------------------

    @abstractmethod
    def row_key(self, row: R) -> str: ...

    @abstractmethod
    def sort_key(self, column: str) -> Callable[[R], Any]:
        """Key function ordering rows by `column` (ascending)."""

    @abstractmethod
    def cells(self, row: R) -> Sequence[Cell]:
        """The row's cells in column order, formatted now (called for visible rows only)."""

    # --- data -------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def cursor_row(self) -> int | None:
        """Position of the cursor's row in display order (None: no rows)."""
        return None if self.cursor_key is None else self._index.get(self.cursor_key)

    def set_rows(self, rows: Sequence[R], sort: tuple[str, bool] | None = None) -> None:
        """Show `rows`, ordered by `sort` = (column key, reverse) if given. The cursor stays
        on its row key; if that row is gone, on the row now at its old position. A cursor
        that was in view stays in view."""
        old_index = self.cursor_row
        was_visible = old_index is not None and self._in_view(old_index)
        if sort is not None:
            column, reverse = sort
            self.rows = sorted(rows, key=self.sort_key(column), reverse=reverse)
        else:
            self.rows = list(rows)
        self.sorted_by = sort
        self._index = {self.row_key(r): i for i, r in enumerate(self.rows)}
        if not self.rows:
            self.cursor_key = None
        elif self.cursor_key not in self._index:
            at = 0 if old_index is None else min(old_index, len(self.rows) - 1)
            self.cursor_key = self.row_key(self.rows[at])
        self._resize()
        if was_visible:
            self._scroll_to_cursor()
        self.refresh_rows()

    def refresh_rows(self) -> None:
        """Repaint if what the screen shows would change (new values, new ages, a moved
        cursor): an idle dashboard repaints nothing."""
        if self._view() != self._painted_view:
            self.refresh()
            return
        top = int(self.scroll_y)
        for i in range(top, min(len(self.rows), top + self.page_rows)):
            self.rows_formatted += 1
            if self._painted.get(i) != self.cells(self.rows[i]):
                self.refresh()
                return

    def _view(self) -> tuple[object, ...]:
        """Everything besides the visible rows' cells that a paint depends on."""
        return (int(self.scroll_y), int(self.scroll_x), self.size, self.cursor_row,
                self.sorted_by, len(self.rows), tuple(self._widths), self.has_focus)

    def row_text(self, key: str) -> dict[str, str]:
        """Column key -> text of row `key` as displayed (formats the row: tests, tools)."""
        cells = self.cells(self.rows[self._index[key]])
        return {c: text for (c, _), (text, _) in zip(self.COLUMNS, cells, strict=True)}

    def column_text(self, column: str) -> list[str]:
        """Text of `column`, top to bottom (formats every row: tests, tools)."""
        i = [c for c, _ in self.COLUMNS].index(column)
        return [self.cells(r)[i][0] for r in self.rows]

    def cell_style(self, key: str, column: str) -> Style:
        """The style of one cell's text (its component class), without row and cursor."""
        i = [c for c, _ in self.COLUMNS].index(column)
        component = self.cells(self.rows[self._index[key]])[i][1]
        return self._style(component) if component else Style()

    # --- cursor -----------------------------------------------------------------------------

    def move_cursor(self, index: int) -> None:
        """Put the cursor on the row at `index` (clamped) and scroll it into view."""
        if not self.rows:
            return
        index = max(0, min(index, len(self.rows) - 1))
        self.cursor_key = self.row_key(self.rows[index])
        self._scroll_to_cursor()
        self.refresh()

    @property
    def page_rows(self) -> int:
        """Rows visible below the header."""
        return max(1, self.scrollable_content_region.height - 1)

    def action_cursor_up(self) -> None:
        self.move_cursor((self.cursor_row or 0) - 1)

    def action_cursor_down(self) -> None:
        row = self.cursor_row
        self.move_cursor(0 if row is None else row + 1)

    def action_page_up(self) -> None:
        self.move_cursor((self.cursor_row or 0) - self.page_rows)

    def action_page_down(self) -> None:
        self.move_cursor((self.cursor_row or 0) + self.page_rows)

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(len(self.rows) - 1)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None and offset.y >= 1:
            self.move_cursor(int(self.scroll_y) + offset.y - 1)

    def _in_view(self, index: int) -> bool:
        top = int(self.scroll_y)
        return top <= index < top + self.page_rows

    def _scroll_to_cursor(self) -> None:
        index = self.cursor_row
        if index is None:
            return
        top, page = int(self.scroll_y), self.page_rows
        if index < top:
            self.scroll_to(y=index, animate=False, immediate=True)
        elif index >= top + page:
            self.scroll_to(y=index - page + 1, animate=False, immediate=True)

    # --- rendering --------------------------------------------------------------------------

    def _resize(self) -> None:
        # +1: the header line. Cells have one space of padding on either side.
        self.virtual_size = Size(sum(self._widths) + 2 * len(self._widths), len(self.rows) + 1)

    def _style(self, component: str) -> Style:
        """A component's style, cached until the stylesheet or theme changes. Cell
        components (not vtable--*) are partial: only what app.tcss sets for them (a
        colour), so the row's background (zebra, cursor) shows through."""
        style = self._styles.get(component)
        if style is None:
            style = self._styles[component] = self.get_component_rich_style(
                component, partial=not component.startswith("vtable--"))
        return style

    def notify_style_update(self) -> None:
        self._styles = {}
        super().notify_style_update()

    def render_lines(self, crop: Region) -> list[Strip]:
        # Format the visible rows once for this paint (and only those), widening columns
        # before any line is drawn so that every line of the paint agrees.
        # `crop` is in the widget's coordinates (border included); lines are content's.
        gutter_top = self.styles.gutter.top
        first_line = max(0, crop.y - gutter_top)
        last_line = min(self.size.height, crop.bottom - gutter_top)
        top = int(self.scroll_y)
        first = top + max(0, first_line - 1)  # line 0 is the header
        last = min(len(self.rows), top + last_line - 1)
        self._frame = {}
        grew = False
        for index in range(first, last):
            cells = self.cells(self.rows[index])
            self.rows_formatted += 1
            self._frame[index] = cells
            for i, (text, _) in enumerate(cells):
                n = cell_len(text)
                if n > self._widths[i]:
                    self._widths[i] = n
                    grew = True
        if grew:
            self._resize()
            if crop != self.size.region:
                self.refresh()  # lines outside this crop were drawn narrower
        full = first_line == 0 and last_line >= self.size.height
        self._painted = self._frame if full else {}
        self._painted_view = self._view() if full else None
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if y == 0:
            line = self._line(self._header(), base + self._style("vtable--header"))
        else:
            index = int(self.scroll_y) + y - 1
            cells = self._frame.get(index)
            if cells is None:
                if index >= len(self.rows):
                    return Strip.blank(width, base)
                cells = self.cells(self.rows[index])
                self.rows_formatted += 1
            row_style = base + self._style("vtable--odd-row" if index % 2 else
                                           "vtable--even-row")
            if index == self.cursor_row:
                row_style += self._style("vtable--cursor")
            line = self._line(cells, row_style)
        scroll_x = int(self.scroll_x)
        return line.crop(scroll_x, scroll_x + width).adjust_cell_length(width, base)

    def _header(self) -> list[Cell]:
        column, reverse = self.sorted_by or ("", False)
        return [(label + SORT_MARK[reverse] if key == column else label, None)
                for key, label in self.COLUMNS]

    def _line(self, cells: Sequence[Cell], row_style: Style) -> Strip:
        segments = []
        for (text, component), w in zip(cells, self._widths, strict=True):
            style = row_style + self._style(component) if component else row_style
            # max(): the header's sort mark may use the right padding.
            segments.append(Segment(" " + text + " " * max(0, w - cell_len(text) + 1), style))
        # The row's background runs to the right edge.
        segments.append(Segment(" " * max(0, self.size.width - self.virtual_size.width),
                                row_style))
        return Strip(segments)
