"""The chaos rig's counting, on made-up ground truth: `truth()` counts lost, duplicated and
phantom fills, doubled signals and unequal positions from the simulator's ledger and the
database's rows (so a scenario's report can show a non-zero figure, and `assert_held`
can fail), and `report()` writes what was counted.

No stack here: the simulator's state and the database's rows are given; the scenarios
that count a real stack are test_chaos.py, test_disk.py and test_stream_faults.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest

from tests.chaos.rig import _DB_FILLS_SQL, ChaosRig, assert_held
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.unit


def activity(order: str, cum: str, symbol: str = "AAPL") -> dict[str, Any]:
    return {"activity_type": "FILL", "order_id": order, "cum_qty": cum, "symbol": symbol}


def fill_row(order: str, qty: str, cum: str, side: str = "buy",
             symbol: str = "AAPL") -> dict[str, Any]:
    return {"account": "large", "order_id": order, "symbol": symbol, "qty": Decimal(qty),
            "cum_qty": Decimal(cum), "side": side}


@dataclass
class Rows:
    """What the database holds, by the rig's queries."""

    fills: list[dict[str, Any]]
    signals: list[dict[str, Any]] = field(default_factory=list)
    drift_blocks: list[dict[str, Any]] = field(default_factory=list)

    def query(self, sql: str, *args: Any) -> list[Any]:
        if sql == _DB_FILLS_SQL:
            return self.fills
        if "FROM accounts" in sql:
            return [{"name": "large", "account_number": "PA1"}]
        if "FROM signals" in sql:
            return self.signals
        if "drift_block" in sql:
            return self.drift_blocks
        raise AssertionError(f"unexpected query: {sql}")


class GivenRig(ChaosRig):
    """A rig whose simulator state and database rows are given."""

    def __init__(self, sim: dict[str, Any], rows: Rows) -> None:
        self.stack = cast(Stack, rows)
        self._sim = {"accounts": {"large": {"account_number": "PA1", **sim}}}

    def sim_state(self) -> dict[str, Any]:
        return self._sim


# Two orders at the broker: o1 filled 10 in two executions, o2 filled 5 at once (a sell).
SIM = {"activities": [activity("o1", "4"), activity("o1", "10"), activity("o2", "5")],
       "orders": [{"client_order_id": "ops-large-sig-1", "id": "o1"},
                  {"client_order_id": "manual-1", "id": "o2"}],
       "positions": [{"symbol": "AAPL", "qty": "5"}]}
STORED = [fill_row("o1", "4", "4"), fill_row("o1", "6", "10"),
          fill_row("o2", "5", "5", side="sell")]
SIGNAL = {"id": 1, "account": "large", "status": "submitted", "broker_order_id": "o1"}


def test_every_fill_stored_once_holds() -> None:
    t = GivenRig(SIM, Rows(STORED, [SIGNAL])).truth()
    assert (t.fills_sim, t.fills_db, t.lost, t.duplicated, t.phantom) == (3, 3, 0, 0, 0)
    assert (t.signal_orders, t.max_orders_per_signal, t.doubled_signals) == (1, 1, 0)
    assert (t.positions_compared, t.positions_held, t.positions_unequal) == (1, 1, 0)
    assert t.held, t.problems
    assert_held(t)


def test_lost_duplicated_and_phantom_fills_are_counted_and_fail() -> None:
    stored = [fill_row("o1", "4", "4"), fill_row("o1", "4", "4"),  # a copy of one fill
              fill_row("o2", "5", "5", side="sell"),
              fill_row("o9", "1", "1")]  # a fill the broker never made; o1's 2nd is lost
    t = GivenRig(SIM, Rows(stored, [SIGNAL])).truth()
    assert (t.fills_sim, t.fills_db) == (3, 4)
    assert (t.lost, t.duplicated, t.phantom) == (1, 1, 1)
    # From the stored fills: 4 + 4 + 1 - 5 = 4 held, the broker says 5.
    assert t.positions_unequal == 1 and not t.positions_equal
    counted = t.counted()
    assert (counted["fills lost"], counted["fills duplicated"], counted["fills phantom"]) \
        == (1, 1, 1)
    assert counted["invariants held"] is False
    with pytest.raises(AssertionError):
        assert_held(t)


def test_a_signal_sent_twice_or_unknown_to_postgres_is_counted() -> None:
    sim = {**SIM, "orders": [*SIM["orders"], {"client_order_id": "ops-large-sig-1", "id": "o3"},
                             {"client_order_id": "ops-large-sig-2", "id": "o4"}]}
    t = GivenRig(sim, Rows(STORED, [SIGNAL])).truth()
    assert (t.signal_orders, t.max_orders_per_signal, t.doubled_signals) == (2, 2, 1)
    assert any("2 broker orders for one signal" in p for p in t.problems)
    assert any("ops-large-sig-2: broker order for a signal Postgres lacks" in p
               for p in t.problems)
    with pytest.raises(AssertionError):
        assert_held(t)


def test_a_drift_block_left_on_breaks_the_invariants() -> None:
    blocked = [{"account": "large", "value": {"blocked": True, "reason": "AAPL 5 vs 4"}}]
    t = GivenRig(SIM, Rows(STORED, [SIGNAL], blocked)).truth()
    assert (t.lost, t.duplicated, t.phantom) == (0, 0, 0)
    assert t.problems == ["large: drift block still on: AAPL 5 vs 4"]


def test_report_writes_the_counted_figures(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "chaos.jsonl"
    monkeypatch.setenv("OPS_CHAOS_REPORT", str(path))
    rig = GivenRig(SIM, Rows(STORED[:2], [SIGNAL]))
    rig.report("given", "one fill not stored", rig.truth().counted())
    (line,) = [json.loads(text) for text in path.read_text().splitlines()]
    assert line["scenario"] == "given"
    assert (line["counted"]["fills lost"], line["counted"]["fills stored"]) == (1, 2)
