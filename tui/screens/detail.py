"""`DetailScreen`: one row of a panel in full (Enter on positions or orders & fills), for
the columns a narrow screen cuts off; scrollable, Escape closes it. `position_lines` and
`feed_lines` say what a row holds, one field per line."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from tui import format as f
from tui.data import FeedRow, PositionRow, describe_symbol


def _fields(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{name + ':':<16}{value}" for name, value in pairs]


def position_lines(row: PositionRow, now: datetime) -> list[str]:
    held = "-" if row.opened_at is None else \
        f"{row.opened_at:%Y-%m-%d %H:%M:%S}Z ({f.age(f.since(now, row.opened_at))} ago)"
    owner = {"managed": "managed by the pipeline (exit rules apply)",
             "external": "external (shown and counted, never sold by exit rules)",
             "unknown": "unknown (not read yet, or Postgres unreachable)"}.get(
        row.owner, f"{f.qty(row.managed)} managed / {f.qty(row.external)} external")
    return _fields([
        ("account", row.account), ("symbol", row.symbol), ("what", row.description),
        ("qty", f.qty(row.qty)), ("owner", owner), ("avg entry", f.price(row.avg_entry)),
        ("last", f.price(row.last_price)), ("market value", f.money(row.market_value)),
        ("unrealised P&L", f.money(row.unrealized_pl, signed=True)),
        ("P&L %", "-" if row.unrealized_pct is None else f"{row.unrealized_pct:+.2f}%"),
        ("opened", held)])


def feed_lines(row: FeedRow) -> list[str]:
    kind, _, ident = row.key.partition(":")
    return _fields([
        ("time", f"{row.ts:%Y-%m-%d %H:%M:%S.%f}"[:-3] + "Z"), ("account", row.account),
        ("what", row.kind), ("side", row.side or "-"), ("symbol", row.symbol),
        ("description", describe_symbol(row.symbol)),
        ("size", row.size), ("price", f.price(row.price)), ("status", row.status),
        (f"{kind} id", ident)])


class DetailScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,enter", "close", "Close", id="detail.close"),
    ]

    def __init__(self, title: str, lines: list[str]) -> None:
        super().__init__()
        self.title_text = title
        self.text = "\n".join(lines)

    def compose(self) -> ComposeResult:
        yield Label(f"{self.title_text}  (Esc closes)", id="detail-title", markup=False)
        with VerticalScroll(id="detail-box"):
            yield Static(self.text, id="detail-text", markup=False)

    def on_mount(self) -> None:
        self.query_one("#detail-box", VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)
