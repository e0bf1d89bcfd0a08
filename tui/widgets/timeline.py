"""`Timeline`: labelled strips over one time window, one row per lane, and a time axis.

Each lane is a label and a function from a column count to one state per column, so the
strips are computed at render time for the width the widget has (a resize re-renders,
no reload). Every state has its own glyph as well as its colour (component classes in
app.tcss), so a monochrome terminal reads the same: a missed slot is a blank cell, a
hole in the strip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

#: state -> glyph. Run slots and incident lanes share the table (their states differ).
GLYPHS: dict[str, str] = {
    "ok": "█", "idle": "▁", "late": "▒", "failed": "×", "missed": " ", "none": "·",
    "open": "█", "closed": "▓",
}
#: The legend of the run-slot strips, in words.
SLOT_LEGEND = (("ok", "ok"), ("late", "late"), ("failed", "failed"), ("missed", "missed"),
               ("idle", "idle"), ("none", "no data"))
LANE_LEGEND = (("open", "open"), ("closed", "was open"))


@dataclass(frozen=True, slots=True)
class Lane:
    label: str
    states: Callable[[int], Sequence[str]]  # columns -> one state per column
    label_class: str = ""  # e.g. "lane--alarm": the label styled too


def axis(start: datetime, end: datetime, columns: int) -> str:
    """Start time on the left, the middle, "now" on the right (HH:MM, UTC)."""
    if columns < 12:
        return "now".rjust(columns)[:columns]
    mid = start + (end - start) / 2
    left, middle, right = f"{start:%H:%M}", f"{mid:%H:%M}", "now"
    line = [" "] * columns
    line[:len(left)] = left
    at = columns // 2 - len(middle) // 2
    if at > len(left) + 1 and at + len(middle) < columns - len(right) - 1:
        line[at:at + len(middle)] = middle
    line[columns - len(right):] = right
    return "".join(line)


class Timeline(Widget):
    """Strips for `lanes` over [start, end), with the label column `label_width` wide."""

    DEFAULT_CSS = """
    Timeline { height: auto; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "slot--ok", "slot--idle", "slot--late", "slot--failed", "slot--missed",
        "slot--none", "slot--open", "slot--closed", "timeline--label", "timeline--axis",
        "lane--alarm",
    }

    def __init__(self, *, empty: str = "nothing to show", id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.empty = empty
        self.lanes: tuple[Lane, ...] = ()
        self.start: datetime | None = None
        self.end: datetime | None = None

    def show(self, lanes: Sequence[Lane], start: datetime, end: datetime) -> None:
        self.lanes, self.start, self.end = tuple(lanes), start, end
        self.refresh(layout=True)

    def label_width(self, width: int) -> int:
        longest = max((len(lane.label) for lane in self.lanes), default=0)
        return max(6, min(longest, 24 if width >= 120 else 16))

    def strip_columns(self, width: int) -> int:
        return max(1, width - self.label_width(width) - 1)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lanes) + 1 if self.lanes else 1

    def render(self) -> Text:
        width = self.content_region.width or self.size.width
        if not self.lanes or self.start is None or self.end is None:
            return Text(self.empty, style=self.get_component_rich_style("timeline--axis"))
        lw = self.label_width(width)
        cols = self.strip_columns(width)
        label_style = self.get_component_rich_style("timeline--label")
        styles = {s: self.get_component_rich_style(f"slot--{s}")
                  for s in ("ok", "idle", "late", "failed", "missed", "none", "open",
                            "closed")}
        text = Text(no_wrap=True, overflow="crop")
        for lane in self.lanes:
            label = lane.label if len(lane.label) <= lw else lane.label[:lw - 1] + "…"
            style = (self.get_component_rich_style(lane.label_class) if lane.label_class
                     else label_style)
            text.append(label.ljust(lw) + " ", style)
            run_state, run = "", 0
            # Runs of one state as one span: a 24 h strip is a handful of spans.
            for state in [*lane.states(cols), ""]:
                if state == run_state:
                    run += 1
                    continue
                if run:
                    text.append(GLYPHS.get(run_state, "?") * run, styles.get(run_state))
                run_state, run = state, 1
            text.append("\n")
        text.append(" " * (lw + 1) + axis(self.start, self.end, cols),
                    self.get_component_rich_style("timeline--axis"))
        return text
