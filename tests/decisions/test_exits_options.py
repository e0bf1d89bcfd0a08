"""Exit rules for options (issue 14.4): the expiry-day liquidation window, position_intent
on option exits, and the flatten close ids."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.exits import (
    DEFAULT_EXPIRY_DAY_EXIT_BY,
    NEW_YORK,
    ExitRule,
    ExitRules,
    PositionState,
    evaluate_exits,
    flatten_client_order_id,
    flatten_prefix,
    parse_exit_by,
)
from ops.core.models import Position, Side

D = Decimal
SYM = "AAPL260320C00190000"  # expires Friday 2026-03-20


THREE = D(3)


def pos(symbol: str, qty: Decimal, entry: Decimal = THREE) -> Position:
    return Position(symbol=symbol, qty=qty, avg_entry_price=entry, cost_basis=qty * entry)


def ny(day: int, hh: int, mm: int) -> datetime:
    return datetime(2026, 3, day, hh, mm, tzinfo=NEW_YORK)


STATE = PositionState.opened(ny(16, 10, 0), D(3))


def test_expiry_day_closes_at_the_cutoff_whatever_the_days_setting() -> None:
    for rules in (ExitRules(), ExitRules(close_options_days_before_expiry=None,
                                         stop_loss_pct=D(50))):
        assert evaluate_exits(pos(SYM, D(2)), STATE, D(3), rules, ny(20, 14, 59)) is None
        d = evaluate_exits(pos(SYM, D(2)), STATE, D(3), rules, ny(20, 15, 0))
        assert d is not None and d.rule is ExitRule.OPTION_EXPIRY_DAY
        assert d.qty == D(2) and d.side is Side.SELL
        assert "expires 2026-03-20 and it is 2026-03-20 15:00 New York time" in d.reason
        assert "expiry_day_exit_by 15:00" in d.reason and "15:15" in d.reason
    # The day before expiry, nothing (no days rule).
    assert evaluate_exits(pos(SYM, D(2)), STATE, D(3), ExitRules(), ny(19, 15, 30)) is None


def test_a_configured_cutoff_and_off() -> None:
    early = ExitRules(expiry_day_exit_by=time(12, 30))
    assert evaluate_exits(pos(SYM, D(1)), STATE, D(3), early, ny(20, 12, 29)) is None
    assert evaluate_exits(pos(SYM, D(1)), STATE, D(3), early, ny(20, 12, 30)) is not None
    off = ExitRules(expiry_day_exit_by=None)
    assert evaluate_exits(pos(SYM, D(1)), STATE, D(3), off, ny(20, 15, 59)) is None


def test_the_days_rule_still_fires_first() -> None:
    d = evaluate_exits(pos(SYM, D(1)), STATE, D(3),
                       ExitRules(close_options_days_before_expiry=0), ny(20, 9, 31))
    assert d is not None and d.rule is ExitRule.OPTION_EXPIRY


def test_a_held_option_past_its_expiry_is_closed() -> None:
    d = evaluate_exits(pos(SYM, D(1)), STATE, D(3), ExitRules(), ny(23, 9, 31))
    assert d is not None and d.rule is ExitRule.OPTION_EXPIRY_DAY


def test_option_exits_carry_their_position_intent() -> None:
    rules = ExitRules(stop_loss_pct=D(10))
    d = evaluate_exits(pos(SYM, D(2)), STATE, D(2), rules, ny(16, 11, 0))
    assert d is not None and d.position_intent == "sell_to_close" and d.side is Side.SELL
    short = PositionState.opened(ny(16, 10, 0), D(3))
    d = evaluate_exits(pos(SYM, D(-2)), short, D(4), rules, ny(16, 11, 0))
    assert d is not None and d.position_intent == "buy_to_close" and d.side is Side.BUY
    d = evaluate_exits(pos("AAPL", D(2), D(100)), PositionState.opened(ny(16, 10, 0), D(100)),
                       D(80), rules, ny(16, 11, 0))
    assert d is not None and d.position_intent is None


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 24 * 60 - 1), st.integers(-3, 3), st.integers(9 * 60 + 30, 15 * 60 + 14))
def test_expiry_day_window_property(minute: int, days_left: int, cutoff: int) -> None:
    """Fires iff on (or past) the expiry date at or after the cutoff; never otherwise."""
    now = ny(20, 0, 0) - timedelta(days=days_left) + timedelta(minutes=minute)
    rules = ExitRules(expiry_day_exit_by=time(cutoff // 60, cutoff % 60))
    d = evaluate_exits(pos(SYM, D(1)), STATE, D(3), rules, now)
    local = now.astimezone(NEW_YORK)
    expected = days_left < 0 or (days_left == 0 and local.hour * 60 + local.minute >= cutoff)
    assert (d is not None) == expected
    if d is not None:
        assert d.rule is ExitRule.OPTION_EXPIRY_DAY


def test_exit_by_parsing_and_validation() -> None:
    assert parse_exit_by("15:00") == DEFAULT_EXPIRY_DAY_EXIT_BY == time(15, 0)
    assert parse_exit_by("off") is None
    with pytest.raises(ValueError, match="naive time"):
        ExitRules(expiry_day_exit_by=time(15, 0, tzinfo=UTC))


def test_exit_by_from_the_config_model() -> None:
    from ops.core import config

    assert ExitRules.from_config(config.ExitRules()).expiry_day_exit_by == time(15, 0)
    cfg = config.ExitRules(options_expiry_day_exit_by="14:45")
    assert ExitRules.from_config(cfg).expiry_day_exit_by == time(14, 45)
    assert ExitRules.from_config(
        config.ExitRules(options_expiry_day_exit_by="off")).expiry_day_exit_by is None
    for bad in ("15:15", "16:00", "9:00", "09:29", "25:00", "3pm"):
        with pytest.raises(Exception, match="options_expiry_day_exit_by|HH:MM|15:15"):
            config.ExitRules(options_expiry_day_exit_by=bad)


def test_flatten_client_order_id() -> None:
    epoch = datetime(2026, 3, 2, 14, 31, 5, 123456, tzinfo=UTC)
    cid = flatten_client_order_id("tiny", "AAPL", epoch)
    assert cid == "ops-tiny-flat-AAPL-20260302T143105123456-0"
    assert cid.startswith(flatten_prefix("tiny")) and cid.startswith("ops-tiny-")
    assert flatten_client_order_id("tiny", "AAPL", epoch, 3).endswith("-3")
    assert flatten_client_order_id("tiny", SYM, epoch) != cid
    long = flatten_client_order_id("t" * 40, "X" * 100, epoch, 12)
    assert len(long) <= 128 and long.startswith("ops-" + "t" * 40 + "-flat-")
    with pytest.raises(ValueError, match="timezone-aware"):
        flatten_client_order_id("tiny", "AAPL", datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="attempt"):
        flatten_client_order_id("tiny", "AAPL", epoch, -1)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["AAPL", "MSFT", SYM, "BRK.B"]), st.integers(0, 10**6),
       st.integers(0, 50), st.sampled_from(["AAPL", "MSFT", SYM, "BRK.B"]),
       st.integers(0, 10**6), st.integers(0, 50))
def test_flatten_ids_are_deterministic_and_distinct(s1: str, e1: int, a1: int, s2: str,
                                                    e2: int, a2: int) -> None:
    base = datetime(2026, 3, 2, tzinfo=UTC)
    id1 = flatten_client_order_id("large", s1, base + timedelta(microseconds=e1), a1)
    assert id1 == flatten_client_order_id("large", s1, base + timedelta(microseconds=e1), a1)
    id2 = flatten_client_order_id("large", s2, base + timedelta(microseconds=e2), a2)
    assert (id1 == id2) == ((s1, e1, a1) == (s2, e2, a2))
