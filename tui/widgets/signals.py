"""`SignalsTable`: the newest signals of every account and every one still waiting, newest
first: queued (with how long), submitted (with the order it became), rejected and expired
(with the dispatcher's reason), as `ops signal list` shows them. Enter shows the
highlighted one in full, as `ops signal show` does (`Dashboard.action_show_signal`).

Rows come from `DashboardState.signals` (`Store.signals()`, Postgres only). While Postgres
is away that is None: the table keeps what it last showed and says so in its subtitle,
rather than blanking out the signals an operator is looking at.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from textual.binding import Binding, BindingType

from ops.store.signal_records import STATES, SignalRecord
from tui import format as f
from tui.widgets.keyed_table import KeyedTable, Row

#: The state word with a symbol (monochrome terminals read the same).
STATE_TEXT = {"queued": "… queued", "submitted": "✓ submitted", "rejected": "✗ REJECTED",
              "expired": "⊘ expired", "unknown": "? unknown"}


def signal_text(s: SignalRecord) -> str:
    """What it asks, compactly: 'buy 10 AAPL', 'sell $40 SPY', 'buy 1 AAPL260619C00190000',
    'sell 10 AAPL reduce-only' (an exit)."""
    size = f"${f.qty(s.notional)}" if s.qty is None and s.notional is not None else \
        f.qty(s.qty)
    return f"{s.side} {size} {s.symbol}" + (" reduce-only" if s.reduce_only else "")


def outcome_text(s: SignalRecord) -> str:
    """The order it became ('order 6f1c2a3b filled', '... partially_filled 3/4'), else the
    first line of the dispatcher's reason (why it was refused, or a note on a queued one)."""
    oid = s.order_id
    if oid is not None:
        o = s.order
        if o is None:
            return f"order {oid[:8]}"
        part = "" if not o.filled_qty or o.qty is None or o.filled_qty == o.qty else \
            f" {f.qty(o.filled_qty)}/{f.qty(o.qty)}"
        return f"order {o.id[:8]} {o.status}{part}"
    return (s.reason or "").splitlines()[0][:200] if s.reason else ""


class SignalsTable(KeyedTable):
    BORDER_TITLE = "Signals"
    BINDINGS: ClassVar[list[BindingType]] = [
        # Replaces DataTable's own Enter (select_cursor), so it shows in the footer.
        Binding("enter", "app.show_signal", "Details", id="signals.details"),
    ]
    # The outcome last and widest: what a narrow screen cuts is one Enter away.
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        ("time", "Time"), ("account", "Account"), ("signal", "Signal"), ("state", "State"),
        ("outcome", "Order / reason"),
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
        return (str(s.id), [
            self.styled(f.clock(s.created_at), sort_value=(s.created_at, s.id)),
            self.styled(s.account),
            self.styled(signal_text(s)),
            self.styled(text, component),
            self.styled(outcome_text(s), component if state in ("rejected", "expired")
                        else None),
        ])

    @property
    def selected(self) -> SignalRecord | None:
        key = self.selected_key
        return None if key is None else self.items.get(key)
