"""The demo strategy and the strategy interface: pure functions, no I/O.

The demo must trade visibly on both demo accounts within their limits: buys and sells,
deterministic per slot, at most two signals per slot, options only where allowed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.core.models import OptionSymbol, OrderType, Position, Side
from ops.core.risk import RiskLimits
from ops.strategies import (
    ProposedSignal,
    StrategyContext,
    StrategyError,
    load_strategy,
    validate_signal,
)
from ops.strategies.demo import demo_option, generate, option_expiry

TINY = RiskLimits(max_order_notional=Decimal(100), max_symbol_notional=Decimal(250),
                  max_open_positions=3, daily_loss_limit=Decimal(50), max_qty=Decimal(10))
LARGE = RiskLimits(max_order_notional=Decimal(5000), max_symbol_notional=Decimal(15000),
                   max_open_positions=10, daily_loss_limit=Decimal(2000), max_qty=Decimal(500),
                   allow_options=True)
PRICES = {"AAPL": Decimal("190.12"), "MSFT": Decimal("420.50"), "SPY": Decimal("520.00")}
T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def pos(symbol: str, qty: str, price: str = "100") -> Position:
    q, p = Decimal(qty), Decimal(price)
    return Position(symbol=symbol, qty=q, avg_entry_price=p, cost_basis=q * p,
                    current_price=p)


def ctx(account: str, limits: RiskLimits, slot: datetime,
        positions: dict[str, Position] | None = None, **params: object) -> StrategyContext:
    return StrategyContext("demo", account, limits, positions or {}, PRICES, slot, slot,
                           {"symbols": ["AAPL", "MSFT", "SPY"], **params})


def simulate(account: str, limits: RiskLimits, slots: int) -> list[list[ProposedSignal]]:
    """Run the demo over consecutive 5 s slots, applying each signal as if filled."""
    held: dict[str, Position] = {}
    out = []
    for i in range(slots):
        c = ctx(account, limits, T0 + timedelta(seconds=5 * i), dict(held))
        signals = generate(c)
        for s in signals:
            validate_signal(s, c)  # every proposal is valid for the account
            qty = s.qty if s.qty is not None else Decimal(s.notional or 0) / PRICES["AAPL"]
            have = held.get(s.symbol)
            new = (have.qty if have else Decimal(0)) + (qty if s.side == Side.BUY else -qty)
            if new > 0:
                held[s.symbol] = pos(s.symbol, str(new))
            else:
                held.pop(s.symbol, None)
        out.append(signals)
    return out


@pytest.mark.parametrize(("account", "limits"), [("tiny", TINY), ("large", LARGE)])
def test_demo_buys_and_sells_within_limits_over_a_minute(account: str,
                                                          limits: RiskLimits) -> None:
    runs = simulate(account, limits, 12)  # 60 s at the demo's 5 s interval
    flat = [s for run in runs for s in run]
    assert all(len(run) <= 2 for run in runs)
    assert {s.side for s in flat} == {Side.BUY, Side.SELL}
    assert sum(1 for run in runs if run) >= 10
    for s in flat:
        if s.side == Side.BUY and OptionSymbol.parse(str(s.symbol)) is None:
            value = (s.notional if s.notional is not None
                     else Decimal(s.qty or 0) * PRICES[str(s.symbol)])
            assert Decimal(value) <= limits.max_order_notional
    options = [s for s in flat if OptionSymbol.parse(str(s.symbol))]
    if limits.allow_options:
        assert options, "large should exercise an option within a minute"
        assert all(s.qty == 1 or s.side == Side.SELL for s in options)
        for s in options:  # marketable limits the dispatcher can value
            assert s.order_type == OrderType.LIMIT and s.limit_price is not None
            assert s.side == Side.SELL or s.limit_price * 100 <= limits.max_order_notional
            assert s.limit_price % Decimal("0.05") == 0
    else:
        assert options == []


def test_tiny_buys_fractional_notional_large_whole_shares() -> None:
    tiny = [s for run in simulate("tiny", TINY, 12) for s in run if s.side == Side.BUY]
    large = [s for run in simulate("large", LARGE, 12) for s in run
             if s.side == Side.BUY and not OptionSymbol.parse(str(s.symbol))]
    assert tiny and all(s.notional == Decimal("40.00") and s.qty is None for s in tiny)
    assert large and all(s.qty is not None and s.notional is None for s in large)


@given(st.integers(min_value=0, max_value=10**9))
def test_demo_is_deterministic_per_slot(seconds: int) -> None:
    slot = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    held = {"AAPL": pos("AAPL", "3"), "MSFT260116C00420000": pos("MSFT260116C00420000", "1")}
    for account, limits in (("tiny", TINY), ("large", LARGE)):
        a = generate(ctx(account, limits, slot, held))
        b = generate(ctx(account, limits, slot, dict(held)))
        assert a == b
        assert len(a) <= 2
        for s in a:
            validate_signal(s, ctx(account, limits, slot, held))
            if s.side == Side.SELL:
                assert s.symbol in held and s.qty == held[str(s.symbol)].qty
            # Its sells are exits: late, they must not open a short.
            assert s.reduce_only is (s.side == Side.SELL)


def test_sells_when_at_max_open_positions() -> None:
    full = {s: pos(s, "1") for s in ("AAPL", "MSFT", "SPY")}
    for i in range(20):
        out = generate(ctx("tiny", TINY, T0 + timedelta(seconds=5 * i), full))
        assert [s.side for s in out] == [Side.SELL]


def test_demo_option_symbol_and_expiry() -> None:
    assert option_expiry(date(2026, 3, 2)).weekday() == 4  # a Friday
    assert option_expiry(date(2026, 3, 2)) == date(2026, 4, 3)
    sym = demo_option("AAPL", Decimal("191.40"), date(2026, 3, 2))
    parsed = OptionSymbol.parse(sym)
    assert parsed is not None and parsed.strike == 190 and parsed.right == "C"
    assert OptionSymbol.parse(demo_option("F", Decimal("12.4"), date(2026, 3, 2))) is not None


def test_bad_params_are_named() -> None:
    with pytest.raises(StrategyError, match=r"params.symbols must be a non-empty list"):
        generate(StrategyContext("demo", "tiny", TINY, {}, PRICES, T0, T0, {"symbols": "AAPL"}))
    with pytest.raises(StrategyError, match=r"params.fraction must be a number >= 0"):
        generate(ctx("tiny", TINY, T0 + timedelta(seconds=10), fraction="x"))


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("signal", "message"), [
    (ProposedSignal("AAPL", "hold", qty=1), "side must be 'buy' or 'sell'"),
    (ProposedSignal("AAPL", Side.BUY), "exactly one of qty or notional"),
    (ProposedSignal("AAPL", Side.BUY, qty=1, notional=5), "exactly one of qty or notional"),
    (ProposedSignal("AAPL", Side.BUY, qty=-1), "qty must be positive and finite"),
    (ProposedSignal("AAPL", Side.BUY, qty=Decimal("NaN")), "qty must be positive and finite"),
    (ProposedSignal("AAPL", Side.BUY, qty=11), "exceeds risk.max_qty 10"),
    (ProposedSignal("AAPL", Side.BUY, notional=101), "exceeds risk.max_order_notional 100"),
    (ProposedSignal("AAPL260619C00190000", Side.BUY, qty=1), "options are not allowed"),
    (ProposedSignal("AAPL", Side.BUY, qty=1, order_type="stop"), "order_type must be"),
    (ProposedSignal("AAPL", Side.BUY, qty=1, order_type="limit"), "needs limit_price"),
    (ProposedSignal("AAPL", Side.BUY, qty=1, limit_price=Decimal(5)), "takes no limit_price"),
    (ProposedSignal("aapl!", Side.BUY, qty=1), "neither a ticker"),
    (ProposedSignal("AAPL", Side.BUY, qty=1, ttl_s=0), "ttl_s must be a positive"),
    (ProposedSignal("AAPL", Side.SELL, qty=1, reduce_only="yes"),  # type: ignore[arg-type]
     "reduce_only must be True or False, got 'yes'"),
])
def test_validate_signal_names_the_problem(signal: ProposedSignal, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        validate_signal(signal, ctx("tiny", TINY, T0))


def test_validate_signal_normalises() -> None:
    c = ctx("large", LARGE, T0)
    v = validate_signal(ProposedSignal("MSFT260116C00420000", "buy", qty=2), c)
    assert v.side is Side.BUY and v.qty == Decimal(2) and v.order_type is OrderType.MARKET
    assert v.expires_at == T0 + timedelta(seconds=LARGE.signal_ttl_s)
    v = validate_signal(ProposedSignal("SPY", Side.SELL, qty=1, order_type="limit",
                                       limit_price=Decimal("519.5"), ttl_s=30), c)
    assert v.limit_price == Decimal("519.5") and v.expires_at == T0 + timedelta(seconds=30)
    assert v.reduce_only is False
    assert validate_signal(ProposedSignal("SPY", Side.SELL, qty=1, reduce_only=True),
                           c).reduce_only is True
    with pytest.raises(StrategyError, match="whole number of contracts"):
        validate_signal(ProposedSignal("MSFT260116C00420000", "buy", qty=Decimal("1.5")), c)
    with pytest.raises(StrategyError, match="expected a ProposedSignal"):
        validate_signal({"symbol": "SPY"}, c)


def test_load_strategy() -> None:
    assert load_strategy("ops.strategies.demo:generate", "k") is generate
    for spec, why in [("ops.strategies.demo", "expected 'package.module:function'"),
                      ("ops.nope:x", "cannot import module 'ops.nope'"),
                      ("ops.strategies.demo:missing", "has no attribute 'missing'")]:
        with pytest.raises(StrategyError, match=why) as err:
            load_strategy(spec, "signal_engine.strategies[3].callable")
        assert str(err.value).startswith(f"signal_engine.strategies[3].callable = {spec!r}")


@pytest.mark.parametrize(("account", "limits", "cash"), [("tiny", TINY, Decimal(1000)),
                                                          ("large", LARGE, Decimal(100000))])
def test_demo_entries_pass_the_dispatchers_risk_gates(account: str, limits: RiskLimits,
                                                      cash: Decimal) -> None:
    """From a flat account, what the demo proposes is allowed by ops.core.risk.evaluate."""
    from ops.core.models import KillSwitch
    from ops.core.risk import AccountState, SignalIntent, evaluate

    state = AccountState(account=account, kill_switch=KillSwitch.OFF, market_open=True,
                         buying_power=cash, equity=cash, last_equity=cash, reconciled=True)
    checked = 0
    for i in range(40):
        slot = T0 + timedelta(seconds=5 * i)
        for s in generate(ctx(account, limits, slot)):
            option = OptionSymbol.parse(str(s.symbol))
            ref = Decimal("6.50") if option else PRICES[str(s.symbol)]
            intent = SignalIntent(
                signal_id=i, account=account, symbol=str(s.symbol), side=Side(s.side),
                created_at=slot, qty=None if s.qty is None else Decimal(s.qty),
                notional=None if s.notional is None else Decimal(s.notional),
                reference_price=ref)
            decision = evaluate(intent, state, limits, slot)
            assert decision.allowed, (s, decision.reason)
            checked += 1
    assert checked >= 40
