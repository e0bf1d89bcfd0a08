"""`SignalsTable`: the newest signals of every account and every one still waiting, newest
first: queued (with how long), submitted (with the order it became), rejected and expired
(with the dispatcher's reason), as `ops signal list` shows them.

Rows come from `DashboardState.signals` (`Store.signals()`, Postgres only). While Postgres
is away that is None: the table keeps what it last showed and says so in its subtitle,
rather than blanking out the signals an operator is looking at.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from ops.signals_cli import size_text
from ops.store.signal_records import STATES, SignalRecord
from tui import format as f
from tui.data import describe_symbol
from tui.widgets.keyed_table import KeyedTable, Row

#: The state word with a symbol (monochrome terminals read the same).
STATE_TEXT = {"queued": "… queued", "submitted": "✓ submitted", "rejected": "✗ REJECTED",
              "expired": "⌛ expired", "unknown": "? unknown"}


def order_cell(s: SignalRecord) -> str:
    """The order a signal became: short id and status ('6f1c2a3b filled 3/4')."""
    oid = s.order_id
    if oid is None:
        return ""
    o = s.order
    if o is None:
        return oid[:8]
    filled = "" if not o.filled_qty or o.qty is None or o.filled_qty == o.qty else \
        f" {f.qty(o.filled_qty)}/{f.qty(o.qty)}"
    return f"{o.id[:8]} {o.status}{filled}"


class SignalsTable(KeyedTable):
    BORDER_TITLE = "Signals"
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        ("time", "Time"), ("account", "Account"), ("state", "State"), ("side", "Side"),
        ("qty", "Qty"), ("symbol", "Symbol"), ("order", "Order"), ("reason", "Reason"),
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {f"signal--{s}" for s in STATES}

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.items: dict[str, SignalRecord] = {}
        self.read_at: datetime | None = None  # when the rows shown were read

    def show(self, rows: Sequence[SignalRecord] | None, now: datetime) -> None:
        """Show `rows` at `now`; None (Postgres away): keep the rows, say they are old."""
        if rows is None:
            when = "never" if self.read_at is None else \
                f"{f.age((now - self.read_at).total_seconds())} ago"
            self.border_subtitle = f"not refreshed: Postgres unreachable (read {when})"
            self.set_class(True, "-stale")
            return
        self.read_at = now
        self.set_class(False, "-stale")
        self.items = {str(r.id): r for r in rows}
        self.sync([self._row(r, now) for r in rows], sort=("time", True))
        counts = {word: sum(1 for r in rows if r.state == word) for word in STATES}
        self.border_subtitle = " · ".join(f"{n} {word}" for word, n in counts.items() if n) \
            or "no signals"

    def _row(self, s: SignalRecord, now: datetime) -> Row:
        state = s.state
        component = f"signal--{state}" if state in STATES else None
        text = STATE_TEXT.get(state, state)
        if state in ("queued", "unknown"):
            text += f" {f.age((now - s.created_at).total_seconds())}"
        reason = (s.reason or "").splitlines()[0][:160] if s.reason else ""
        return (str(s.id), [
            self.styled(f.clock(s.created_at), sort_value=(s.created_at, s.id)),
            self.styled(s.account),
            self.styled(text, component),
            self.styled(s.side),
            self.styled(size_text(s.qty, s.notional)),
            self.styled(describe_symbol(s.symbol)),
            self.styled(order_cell(s)),
            self.styled(reason, component if state == "rejected" else None),
        ])

    @property
    def selected(self) -> SignalRecord | None:
        key = self.selected_key
        return None if key is None else self.items.get(key)
