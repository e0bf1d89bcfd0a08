"""Exit rules: hypothesis properties (each rule fires exactly at its threshold) and examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.exits import (
    ExitRule,
    ExitRules,
    PositionState,
    evaluate_exits,
    exit_client_order_id,
    update_water_marks,
)
from ops.core.models import Position, Side

D = Decimal
NOW = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
prices = st.decimals(min_value=D("0.01"), max_value=D(5000), places=2)
pcts = st.decimals(min_value=D("0.1"), max_value=D(90), places=1)
qtys = st.integers(-500, 500).filter(lambda q: q != 0).map(D)


def pos(symbol: str, qty: Decimal, entry: Decimal) -> Position:
    return Position(symbol=symbol, qty=qty, avg_entry_price=entry, cost_basis=qty * entry)


@settings(max_examples=800, deadline=None)
@given(qtys, prices, prices, pcts)
def test_stop_loss_fires_iff_loss_reaches_threshold(
    qty: Decimal, entry: Decimal, price: Decimal, pct: Decimal
) -> None:
    d = evaluate_exits(pos("AAPL", qty, entry), PositionState.opened(NOW, entry), price,
                       ExitRules(stop_loss_pct=pct), NOW)
    loss = (entry - price) if qty > 0 else (price - entry)
    assert (d is not None) == (loss / entry * 100 >= pct)
    if d is not None:
        assert d.rule is ExitRule.STOP_LOSS
        assert d.qty == abs(qty)
        assert d.side is (Side.SELL if qty > 0 else Side.BUY)


@settings(max_examples=800, deadline=None)
@given(qtys, prices, prices, pcts)
def test_take_profit_fires_iff_gain_reaches_threshold(
    qty: Decimal, entry: Decimal, price: Decimal, pct: Decimal
) -> None:
    d = evaluate_exits(pos("AAPL", qty, entry), PositionState.opened(NOW, entry), price,
                       ExitRules(take_profit_pct=pct), NOW)
    gain = (price - entry) if qty > 0 else (entry - price)
    assert (d is not None) == (gain * 100 >= pct * entry)
    assert d is None or d.rule is ExitRule.TAKE_PROFIT


@settings(max_examples=500, deadline=None)
@given(qtys, prices, st.lists(prices, min_size=1, max_size=40), pcts)
def test_trailing_stop_fires_first_when_price_moves_against_the_water_mark(
    qty: Decimal, entry: Decimal, path: list[Decimal], pct: Decimal
) -> None:
    """Along a price path, it never fires before the threshold and fires as soon as met."""
    rules = ExitRules(trailing_stop_pct=pct)
    state = PositionState.opened(NOW, entry)
    p = pos("AAPL", qty, entry)
    for price in path:
        state = update_water_marks(state, price)
        assert state.low_water <= price <= state.high_water
        d = evaluate_exits(p, state, price, rules, NOW)
        if qty > 0:
            met = (state.high_water - price) * 100 >= pct * state.high_water
        else:
            met = (price - state.low_water) * 100 >= pct * state.low_water
        assert (d is not None) == met
        if d is not None:
            assert d.rule is ExitRule.TRAILING_STOP and d.qty == abs(qty)
            return


@given(st.lists(prices, min_size=1, max_size=30), prices)
def test_water_marks_only_widen(path: list[Decimal], entry: Decimal) -> None:
    state = PositionState.opened(NOW, entry)
    for price in path:
        new = update_water_marks(state, price)
        assert new.high_water >= state.high_water and new.low_water <= state.low_water
        assert new.opened_at == state.opened_at
        state = new
    assert state.high_water == max([entry, *path]) and state.low_water == min([entry, *path])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**7), st.integers(1, 10**7))
def test_max_hold_fires_iff_held_long_enough(held_s: int, max_hold_s: int) -> None:
    state = PositionState.opened(NOW - timedelta(seconds=held_s), D(10))
    d = evaluate_exits(pos("AAPL", D(1), D(10)), state, D(10),
                       ExitRules(max_hold_s=float(max_hold_s)), NOW)
    assert (d is not None) == (held_s >= max_hold_s)


accounts = st.from_regex(r"[A-Za-z0-9_.\-]{1,40}", fullmatch=True)
symbols = st.from_regex(r"[A-Z]{1,6}([0-9]{6}[CP][0-9]{8})?", fullmatch=True)
# hypothesis wants naive bounds; `timezones` makes every drawn value aware.
times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1),  # noqa: DTZ001
                     timezones=st.just(UTC))


@settings(max_examples=500, deadline=None)
@given(accounts, symbols, times, st.sampled_from(list(ExitRule)),
       accounts, symbols, times, st.sampled_from(list(ExitRule)))
def test_exit_ids_deterministic_bounded_and_distinct(
    a1: str, s1: str, t1: datetime, r1: ExitRule,
    a2: str, s2: str, t2: datetime, r2: ExitRule,
) -> None:
    id1 = exit_client_order_id(a1, s1, t1, r1)
    assert id1 == exit_client_order_id(a1, s1, t1.astimezone(UTC), r1.value)
    assert len(id1) <= 128 and id1.startswith(f"ops-{a1}-exit-")
    same = (a1, s1, t1, r1) == (a2, s2, t2, r2)
    assert (id1 == exit_client_order_id(a2, s2, t2, r2)) == same


# -- examples ---------------------------------------------------------------------------


def test_stop_loss_reason() -> None:
    d = evaluate_exits(pos("AAPL", D(100), D(200)), PositionState.opened(NOW, D(200)), D(189),
                       ExitRules(stop_loss_pct=D(5), take_profit_pct=D(10)), NOW)
    assert d is not None
    assert d.reason == ("stop_loss: AAPL long 100: price 189.00 vs entry 200.00 is a loss of "
                        "5.50%, stop_loss_pct 5%")
    assert (d.side, d.qty, d.symbol) == (Side.SELL, D(100), "AAPL")


def test_take_profit_reason_for_a_short() -> None:
    d = evaluate_exits(pos("TSLA", D(-10), D(100)), PositionState.opened(NOW, D(100)), D(80),
                       ExitRules(stop_loss_pct=D(5), take_profit_pct=D(20)), NOW)
    assert d is not None and d.side is Side.BUY and d.qty == D(10)
    assert d.reason == ("take_profit: TSLA short -10: price 80.00 vs entry 100.00 is a gain "
                        "of 20.00%, take_profit_pct 20%")


def test_trailing_stop_reason_from_high_water() -> None:
    state = PositionState(NOW, high_water=D(150), low_water=D(100))
    rules = ExitRules(trailing_stop_pct=D(10))
    assert evaluate_exits(pos("AAPL", D(5), D(100)), state, D("135.01"), rules, NOW) is None
    d = evaluate_exits(pos("AAPL", D(5), D(100)), state, D(135), rules, NOW)
    assert d is not None
    assert d.reason == ("trailing_stop: AAPL long 5: price 135.00 is 10.00% from the "
                        "high-water mark 150.00, trailing_stop_pct 10%")


def test_max_hold_reason() -> None:
    state = PositionState.opened(NOW - timedelta(hours=2), D(10))
    d = evaluate_exits(pos("AAPL", D(1), D(10)), state, D(10), ExitRules(max_hold_s=3600), NOW)
    assert d is not None
    assert d.reason == ("max_hold: AAPL long 1: held 7,200s since 2026-03-02T13:30:00+00:00, "
                        "max_hold_s 3,600")


def test_option_expiry_uses_the_new_york_date() -> None:
    sym = "AAPL260320C00190000"  # expires Friday 2026-03-20
    rules = ExitRules(close_options_days_before_expiry=1, stop_loss_pct=D(50))
    p = pos(sym, D(2), D("3.00"))
    st = PositionState.opened(NOW, D("3.00"))
    # 2026-03-19 02:00 UTC is still the 18th in New York: 2 days left, no exit.
    assert evaluate_exits(p, st, D(3), rules, datetime(2026, 3, 19, 2, 0, tzinfo=UTC)) is None
    d = evaluate_exits(p, st, D(3), rules, datetime(2026, 3, 19, 5, 0, tzinfo=UTC))
    assert d is not None and d.rule is ExitRule.OPTION_EXPIRY
    assert d.reason == ("option_expiry: AAPL260320C00190000 long 2: expires 2026-03-20, "
                        "1 day(s) left (New York date 2026-03-19), "
                        "close_options_days_before_expiry 1")
    # Not an option symbol: the rule does not apply.
    assert evaluate_exits(pos("AAPL", D(2), D(3)), st, D(3), rules,
                          datetime(2026, 3, 19, 5, 0, tzinfo=UTC)) is None


def test_rule_precedence_stop_loss_before_max_hold() -> None:
    state = PositionState.opened(NOW - timedelta(days=3), D(100))
    rules = ExitRules(stop_loss_pct=D(5), max_hold_s=60, trailing_stop_pct=D(5))
    d = evaluate_exits(pos("AAPL", D(1), D(100)), state, D(90), rules, NOW)
    assert d is not None and d.rule is ExitRule.STOP_LOSS


def test_flat_position_and_no_rules_give_none() -> None:
    st = PositionState.opened(NOW, D(10))
    assert evaluate_exits(pos("AAPL", D(0), D(10)), st, D(1), ExitRules(stop_loss_pct=D(1)),
                          NOW) is None
    assert evaluate_exits(pos("AAPL", D(1), D(10)), st, D(1), ExitRules(), NOW) is None


def test_bad_inputs_are_named() -> None:
    st = PositionState.opened(NOW, D(10))
    with pytest.raises(ValueError, match=r"positive finite price, got Decimal\('NaN'\)"):
        evaluate_exits(pos("AAPL", D(1), D(10)), st, D("NaN"), ExitRules(), NOW)
    with pytest.raises(ValueError, match="avg_entry_price must be positive"):
        evaluate_exits(pos("AAPL", D(1), D(0)), st, D(1), ExitRules(), NOW)
    with pytest.raises(ValueError, match="ExitRules.stop_loss_pct must be a positive"):
        ExitRules(stop_loss_pct=D(-1))
    with pytest.raises(ValueError, match="close_options_days_before_expiry must be an int"):
        ExitRules(close_options_days_before_expiry=-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        exit_client_order_id("large", "AAPL", datetime(2026, 1, 1), ExitRule.STOP_LOSS)  # noqa: DTZ001


def test_exit_client_order_id_example() -> None:
    opened = datetime(2026, 3, 2, 14, 31, 5, 123456, tzinfo=UTC)
    assert exit_client_order_id("large", "AAPL", opened, ExitRule.STOP_LOSS) == (
        "ops-large-exit-AAPL-20260302T143105123456-stop_loss")
    long_sym = "X" * 120
    cid = exit_client_order_id("large", long_sym, opened, "max_hold")
    assert len(cid) <= 128 and cid.startswith("ops-large-exit-") and cid.endswith("-max_hold")
    assert cid == exit_client_order_id("large", long_sym, opened, ExitRule.MAX_HOLD)


def test_rules_from_the_config_model() -> None:
    from ops.core import config

    cfg = config.ExitRules(stop_loss_pct=5.1, trailing_stop_pct=3, max_hold_s=3600,
                           close_options_days_before_expiry=1)
    assert ExitRules.from_config(cfg) == ExitRules(
        stop_loss_pct=D("5.1"), take_profit_pct=None, trailing_stop_pct=D("3.0"),
        max_hold_s=3600.0, close_options_days_before_expiry=1)
