"""`AccountsTable`: one row per account — money, positions, kill switch, reconciliation,
and the broker identity (account number; never keys). A drift block (the broker's positions
differ from the database's; entries blocked) shows as DRIFT in place of the position count:
80 columns leave no room for both (the positions panel still counts them)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import ClassVar

from tui import format as f
from tui.data import AccountRow
from tui.widgets.keyed_table import KeyedTable, Row

RECON_MARK = {"reconciled": "✓", "reconciling": "…"}


class AccountsTable(KeyedTable):
    BORDER_TITLE = "Accounts"
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = (
        ("name", "Account"), ("kill", "Kill"), ("equity", "Equity"), ("day_pl", "Day P&L"),
        ("cash", "Cash"), ("bp", "Buy pwr"), ("pos", "Pos"), ("recon", "Rec"),
        ("number", "Broker acct"),
    )
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "pl--gain", "pl--loss", "kill--on", "recon--pending", "number--mismatch",
        "drift--on",
    }

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.items: dict[str, AccountRow] = {}

    def show(self, rows: Sequence[AccountRow]) -> None:
        self.items = {r.name: r for r in rows}
        self.sync([self._row(r) for r in rows])

    def _row(self, r: AccountRow) -> Row:
        pl: Decimal | None = r.day_pl
        number = r.account_number or f"({r.expected_account_number})"
        if r.number_mismatch:
            number = f"{r.account_number} ≠ {r.expected_account_number}"
        kill = "off" if r.kill_switch == "off" else f"■ {r.kill_switch.upper()}"
        return (r.name, [
            self.styled(r.name),
            self.styled(kill, None if r.kill_switch == "off" else "kill--on"),
            self.styled(f.dollars(r.equity)),
            self.styled(f.money(pl, signed=True),
                        None if not pl else "pl--gain" if pl > 0 else "pl--loss"),
            self.styled(f.dollars(r.cash)),
            self.styled(f.dollars(r.buying_power)),
            self.styled("DRIFT", "drift--on") if r.drift_blocked
            else self.styled(str(r.open_positions)),
            # ✓ reconciled with the broker since the dispatcher started; … not yet (the
            # dispatcher stays closed); ? never recorded.
            self.styled(RECON_MARK.get(r.reconciliation, "?"),
                        None if r.reconciliation == "reconciled" else "recon--pending"),
            self.styled(number, "number--mismatch" if r.number_mismatch else None),
        ])

    @property
    def selected(self) -> AccountRow | None:
        key = self.selected_key
        return None if key is None else self.items.get(key)
