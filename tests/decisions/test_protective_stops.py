"""Protective stops, the pure part: levels, price grid, ids, replacement threshold.

The central property: the broker never fires a protective stop before one of the
configured rules would have fired locally (at the rounded stop price, `evaluate_exits`
decides stop_loss or trailing_stop), and the stop is never looser than a rule by a tick
or more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ops.core.exits import ExitRule, ExitRules, PositionState, evaluate_exits
from ops.core.models import Order, Position, Side, TimeInForce
from ops.roles.protective_stops import (
    StopSpec,
    Target,
    desired_stop,
    held_by_others,
    needs_replace,
    parse_stop_id,
    price_tick,
    round_stop,
    stop_client_order_id,
    stop_level,
    whole_qty,
)

D = Decimal
NOW = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
OPTION = "AAPL260417C00190000"
prices = st.decimals(min_value=D("0.05"), max_value=D(5000), places=2)
pcts = st.decimals(min_value=D("0.1"), max_value=D(90), places=1)


def pos(symbol: str, qty: Decimal, entry: Decimal) -> Position:
    asset = "us_option" if symbol == OPTION else "us_equity"
    return Position(symbol=symbol, qty=qty, avg_entry_price=entry, cost_basis=qty * entry,
                    asset_class=asset)


@settings(max_examples=600, deadline=None)
@given(st.booleans(), st.booleans(), prices, st.decimals(min_value=D(0), max_value=D(3),
                                                          places=2),
       st.one_of(st.none(), pcts), st.one_of(st.none(), pcts))
def test_the_broker_never_fires_before_a_rule_would(
    long: bool, option: bool, entry: Decimal, move: Decimal, sl: Decimal | None,
    tr: Decimal | None,
) -> None:
    assume(sl is not None or tr is not None)
    # The favourable water mark, a price like any other (on the cent grid).
    raw = entry * (1 + move) if long else entry / (1 + move)
    mark = max(raw.quantize(D("0.01")), D("0.01"))
    state = PositionState(NOW, mark if long else entry, entry if long else mark)
    rules = ExitRules(stop_loss_pct=sl, trailing_stop_pct=tr)
    symbol = OPTION if option else "AAPL"
    qty = D(3) if long else D(-3)
    want = desired_stop(Target(pos(symbol, qty, entry), state), rules)
    level = stop_level(long, entry, state, rules)
    assert level is not None
    if want is None:  # rounded to nothing: only for levels under one tick
        assert level < price_tick(level, option)
        return
    tick = price_tick(want.stop_price, option)
    assert want.side is (Side.SELL if long else Side.BUY)
    assert want.time_in_force is (TimeInForce.DAY if option else TimeInForce.GTC)
    assert want.qty == 3
    # Looser than the level by less than a tick.
    if long:
        assert level - price_tick(level, option) < want.stop_price <= level
    else:
        assert level <= want.stop_price < level + tick
    # At the price where the broker would trigger, a local rule fires as well.
    trigger = want.stop_price
    decision = evaluate_exits(pos(symbol, qty, entry), state, trigger,
                              ExitRules(stop_loss_pct=sl, trailing_stop_pct=tr), NOW)
    assert decision is not None
    assert decision.rule in (ExitRule.STOP_LOSS, ExitRule.TRAILING_STOP)


@settings(max_examples=300, deadline=None)
@given(prices, prices, pcts, pcts)
def test_the_tighter_level_wins(entry: Decimal, high: Decimal, sl: Decimal, tr: Decimal) -> None:
    assume(high >= entry)
    state = PositionState(NOW, high, entry)
    both = stop_level(True, entry, state, ExitRules(stop_loss_pct=sl, trailing_stop_pct=tr))
    only_sl = stop_level(True, entry, state, ExitRules(stop_loss_pct=sl))
    only_tr = stop_level(True, entry, state, ExitRules(trailing_stop_pct=tr))
    assert only_sl is not None and only_tr is not None
    assert both == max(only_sl, only_tr)
    low = PositionState(NOW, entry, entry - (high - entry) / 2 if high - entry < entry else entry)
    short = stop_level(False, entry, low, ExitRules(stop_loss_pct=sl, trailing_stop_pct=tr))
    assert short == min(entry * (100 + sl) / 100, low.low_water * (100 + tr) / 100)


def test_examples() -> None:
    state = PositionState(NOW, D(110), D(100))
    rules = ExitRules(stop_loss_pct=D(5), trailing_stop_pct=D(3))
    # Long 10 @ 100, high 110: max(95, 106.7) = 106.7.
    want = desired_stop(Target(pos("AAPL", D(10), D(100)), state), rules)
    assert want == StopSpec("AAPL", Side.SELL, D(10), D("106.7"), TimeInForce.GTC, False)
    assert want.position_intent is None
    # Short 10 @ 100, low 100: min(105, 103) = 103, a buy stop.
    want = desired_stop(Target(pos("AAPL", D(-10), D(100)), PositionState.opened(NOW, D(100))),
                        rules)
    assert want is not None and (want.side, want.stop_price) == (Side.BUY, D(103))
    # An option: day, the 0.05 grid from $3, closing intent.
    opt = desired_stop(Target(pos(OPTION, D(2), D("4.37")), PositionState.opened(NOW, D("4.37"))),
                       ExitRules(stop_loss_pct=D(10)))
    assert opt is not None
    assert (opt.stop_price, opt.time_in_force, opt.position_intent) == (
        D("3.9"), TimeInForce.DAY, "sell_to_close")  # 3.933 -> 3.90
    # No stop rule: no stop. Fractional: whole shares only; under one share: none.
    assert desired_stop(Target(pos("AAPL", D(10), D(100)), state),
                        ExitRules(take_profit_pct=D(5), max_hold_s=60)) is None
    frac = desired_stop(Target(pos("AAPL", D("2.7"), D(100)), state), rules)
    assert frac is not None and frac.qty == 2
    assert desired_stop(Target(pos("AAPL", D("0.4"), D(100)), state), rules) is None
    # Other open orders holding shares leave the rest to the stop.
    assert desired_stop(Target(pos("AAPL", D(10), D(100)), state), rules, D(4)).qty == 6  # type: ignore[union-attr]
    assert desired_stop(Target(pos("AAPL", D(10), D(100)), state), rules, D(10)) is None
    # Sub-dollar prices keep four decimals.
    assert round_stop(D("0.123456"), True, False) == D("0.1234")
    assert round_stop(D("0.123456"), False, False) == D("0.1235")
    assert whole_qty(D("-7.9"), D(0)) == 7


@given(st.sampled_from(["AAPL", "BRK.B", OPTION, "X" * 120]), st.integers(1, 10_000),
       st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1),  # noqa: DTZ001
                    timezones=st.just(UTC)))
def test_ids_are_deterministic_bounded_and_parse_back(symbol: str, seq: int,
                                                      opened: datetime) -> None:
    cid = stop_client_order_id("large", symbol, opened, seq)
    assert cid == stop_client_order_id("large", symbol, opened, seq)
    assert len(cid) <= 128 and cid.startswith("ops-large-stop-")
    sid = parse_stop_id("large", cid)
    assert sid is not None and sid.seq == seq
    assert sid.epoch == opened.strftime("%Y%m%dT%H%M%S%f")
    if len(symbol) < 60:
        assert sid.symbol == symbol
    later = stop_client_order_id("large", symbol, opened + timedelta(microseconds=1), seq)
    assert later != cid
    assert parse_stop_id("tiny", cid) is None
    assert parse_stop_id("large", f"ops-large-exit-{symbol}-x-stop_loss") is None


def test_id_rules() -> None:
    with pytest.raises(ValueError, match="timezone"):
        stop_client_order_id("large", "AAPL", datetime(2026, 1, 1), 1)  # noqa: DTZ001
    with pytest.raises(ValueError, match="sequence"):
        stop_client_order_id("large", "AAPL", NOW, 0)
    assert stop_client_order_id("large", "AAPL", NOW, 3) == \
        "ops-large-stop-AAPL-20260302T153000000000-3"


def order(cid: str, qty: str, stop: str, tif: str = "gtc", side: str = "sell",
          filled: str = "0", symbol: str = "AAPL") -> Order:
    return Order(id="7d1b6a80-2b1f-4e0a-9a3c-2f9f5d0c6b11", client_order_id=cid, symbol=symbol,
                 side=side, order_type="stop", time_in_force=tif, status="new",
                 created_at=NOW, updated_at=NOW, qty=D(qty), filled_qty=D(filled),
                 stop_price=D(stop))


def test_replacement_only_by_a_meaningful_step() -> None:
    want = StopSpec("AAPL", Side.SELL, D(10), D("100.20"), TimeInForce.GTC, False)
    assert not needs_replace(order("c", "10", "100.00"), want, D("0.25"))  # 0.2 %
    assert needs_replace(order("c", "10", "99.95"), want, D("0.25"))  # 0.25 %
    assert needs_replace(order("c", "9", "100.20"), want, D("0.25"))  # quantity
    assert needs_replace(order("c", "12", "100.20", filled="2"), want, D("0.25")) is False
    assert needs_replace(order("c", "10", "100.20", tif="day"), want, D("0.25"))
    cheap = StopSpec("AAPL", Side.SELL, D(10), D("0.50"), TimeInForce.GTC, False)
    assert not needs_replace(order("c", "10", "0.5001"), cheap, D("0.25"))  # < 1 tick...
    assert not needs_replace(order("c", "10", "0.4990"), cheap, D("0.25"))  # < 0.25 %
    assert needs_replace(order("c", "10", "0.4985"), cheap, D("0.25"))


def test_held_by_others_leaves_our_stops_out() -> None:
    orders = [order("ops-large-stop-AAPL-x-1", "10", "95"),
              order("ops-large-exit-AAPL-x-stop_loss", "4", "95"),
              order("web-1", "3", "95"),
              order("web-2", "5", "95", side="buy"),
              order("web-3", "7", "95", symbol="MSFT")]
    assert held_by_others(orders, "AAPL", Side.SELL, "large") == 7
    assert held_by_others(orders, "AAPL", Side.BUY, "large") == 5
