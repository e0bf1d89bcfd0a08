"""`AcceptPositionsScreen`: the confirmation before accepting the broker's positions for
one account (what `ops positions accept TIER` does).

It shows what the dashboard last read (no I/O here): whether the account is drift-blocked
and, per symbol, what the database expects against what the broker holds. Like every
confirmation it answers True only on "y" or Enter on Accept; Cancel has the focus, and
Escape or "n" cancel. Accepting is allowed without a drift block too (it then only
re-confirms the baseline).
"""

from __future__ import annotations

from datetime import UTC

from tui.data import AccountRow
from tui.screens.confirm import ConfirmScreen

NO_DRIFT = "No drift block: the broker's and the database's positions agree."
#: Symbols listed at most: the dialog must fit an 80x24 terminal with its buttons; the
#: position-drift incident names them all.
MAX_SYMBOLS = 5


def accept_detail(row: AccountRow | None, database_reachable: bool) -> str:
    """The dialog's text: the drift block's symbols (expected vs actual), or why there is
    none, then what accepting does."""
    lines: list[str] = []
    drift = row.drift if row is not None else None
    if row is None:
        lines.append("Drift state unknown: the dashboard has not read this account yet.")
    elif drift is None or not drift.blocked:
        lines.append(NO_DRIFT)
    else:
        since = "" if drift.since is None else \
            f" since {drift.since.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
        lines.append(f"DRIFT BLOCK{since}; entries blocked.")
        if drift.symbols:
            lines.append(f"  {'SYMBOL':<22} {'DATABASE':>12} {'BROKER':>12}")
            lines += [f"  {s.symbol:<22} {s.expected:>12} {s.actual:>12}"
                      for s in drift.symbols[:MAX_SYMBOLS]]
            if len(drift.symbols) > MAX_SYMBOLS:
                lines.append(f"  … and {len(drift.symbols) - MAX_SYMBOLS} more (see the "
                             "position-drift incident)")
        else:
            lines.append("  (the block names no symbols)")
    lines += ["", "The position manager makes the broker's positions its baseline and "
                  "lifts the block at its next sync (audited in position_accepts)."]
    if not database_reachable:
        lines += ["", "⚠ Postgres is unreachable: the request would fail now."]
    return "\n".join(lines)


class AcceptPositionsScreen(ConfirmScreen):
    def __init__(self, account: str, row: AccountRow | None, *,
                 database_reachable: bool) -> None:
        super().__init__(f"Accept the broker's positions for {account}?",
                         accept_detail(row, database_reachable),
                         yes_label="Accept", no_label="Cancel")
        self.account = account
