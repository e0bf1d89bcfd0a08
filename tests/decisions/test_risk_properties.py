"""Hypothesis properties of the risk gates: what an allowed decision can never be."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.models import KillSwitch, OptionSymbol, OrderType, Side
from ops.core.risk import (
    AccountState,
    PositionIntent,
    PositionSnapshot,
    RiskLimits,
    SignalIntent,
    evaluate,
    option_requirement,
    position_intent,
    signal_client_order_id,
)

NOW = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
OPTION = "AAPL260320C00190000"
SYMBOLS = ["AAPL", "MSFT", "SPY", OPTION]

prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(2000), places=2)
good_qty = st.integers(min_value=1, max_value=600).map(Decimal)
bad_qty = st.sampled_from(
    [Decimal(0), Decimal(-5), Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"),
     Decimal("1E+12"), Decimal("sNaN")]
)
money_amt = st.decimals(min_value=Decimal(0), max_value=Decimal(500_000), places=2)
big_amt = st.one_of(money_amt, st.sampled_from([Decimal(10**6), Decimal(10**9)]))


@st.composite
def states(draw: st.DrawFn, clean: bool = False) -> AccountState:
    """Any account state; `clean` ones pass the account/reconcile/switch/drift/market gates."""
    positions = {}
    for sym in draw(st.lists(st.sampled_from(SYMBOLS), unique=True, max_size=4)):
        q = Decimal(draw(st.integers(-400, 400)))
        px = draw(prices)
        positions[sym] = PositionSnapshot(q, q * px * (100 if sym == OPTION else 1))
    open_orders = {s: draw(money_amt) for s in draw(st.lists(st.sampled_from(SYMBOLS),
                                                              unique=True, max_size=2))}
    if clean:
        return AccountState("large", KillSwitch.OFF, True, draw(big_amt),
                            equity := draw(money_amt),
                            equity + draw(st.decimals(min_value=-5000, max_value=5000, places=2)),
                            positions, open_orders, drift_blocked=False, reconciled=True)
    return AccountState(
        account=draw(st.sampled_from(["large"] * 9 + ["tiny"])),
        kill_switch=draw(st.sampled_from([KillSwitch.OFF] * 5 + list(KillSwitch))),
        market_open=draw(st.sampled_from([True, True, True, False])),
        buying_power=draw(money_amt),
        equity=(equity := draw(money_amt)),
        last_equity=equity + draw(st.decimals(min_value=-5000, max_value=5000, places=2)),
        positions=positions,
        open_order_notional=open_orders,
        drift_blocked=draw(st.sampled_from([False] * 5 + [True])),
        reconciled=draw(st.sampled_from([True] * 9 + [False])),
    )


@st.composite
def signals(draw: st.DrawFn, fresh: bool = False) -> SignalIntent:
    """Any signal; `fresh` ones are never expired and have sane numbers."""
    order_type = draw(st.sampled_from([OrderType.MARKET, OrderType.LIMIT]))
    use_notional = draw(st.booleans()) and draw(st.booleans())
    amount = draw(good_qty if fresh else st.one_of(good_qty, bad_qty))
    return SignalIntent(
        signal_id=draw(st.integers(1, 10**6)),
        account="large",
        symbol=draw(st.sampled_from(SYMBOLS)),
        side=draw(st.sampled_from(list(Side))),
        created_at=NOW - timedelta(seconds=0 if fresh else draw(st.integers(0, 400))),
        qty=None if use_notional else amount,
        notional=(amount * 10 if amount.is_finite() else amount) if use_notional else None,
        order_type=order_type,
        limit_price=draw(prices) if order_type is OrderType.LIMIT else None,
        reference_price=draw(prices if fresh else st.one_of(prices, st.none())),
        expires_at=None if fresh else draw(st.sampled_from([None, NOW, NOW + timedelta(hours=1)])),
    )


limits_st = st.builds(
    RiskLimits,
    max_order_notional=money_amt,
    max_symbol_notional=money_amt,
    max_open_positions=st.integers(0, 5),
    daily_loss_limit=money_amt,
    max_qty=st.integers(0, 2000).map(Decimal),
    allow_short=st.booleans(),
    allow_options=st.booleans(),
    signal_ttl_s=st.sampled_from([60.0, 300.0, 3600.0, 3600.0]),
)

generous_limits = st.builds(
    RiskLimits,
    max_order_notional=big_amt,
    max_symbol_notional=big_amt,
    max_open_positions=st.integers(0, 5),
    daily_loss_limit=big_amt,
    max_qty=st.sampled_from([Decimal(50), Decimal(1000), Decimal(10**6)]),
    allow_short=st.booleans(),
    allow_options=st.booleans(),
    signal_ttl_s=st.just(300.0),
)


@dataclass
class Independent:
    """The order re-derived here, without the module's helpers."""

    qty: Decimal
    price: Decimal
    notional: Decimal
    current: Decimal
    new: Decimal


def derive(sig: SignalIntent, state: AccountState) -> Independent:
    price = sig.limit_price if sig.order_type is OrderType.LIMIT else sig.reference_price
    assert price is not None, "an allowed order has a price"
    if sig.qty is not None:
        qty = sig.qty
    else:
        assert sig.notional is not None
        qty = sig.notional / price
    mult = 100 if sig.symbol == OPTION else 1
    pos = state.positions.get(sig.symbol)
    current = pos.qty if pos else Decimal(0)
    new = current + (qty if sig.side is Side.BUY else -qty)
    return Independent(qty, price, qty * price * mult, current, new)


def is_pure_reduction(d: Independent) -> bool:
    return d.current != 0 and abs(d.new) < abs(d.current) and (d.new == 0 or
                                                               (d.new > 0) == (d.current > 0))


@settings(max_examples=1000, deadline=None)
@given(signals(), states(), limits_st)
def test_an_allowed_decision_never_breaks_a_limit(
    sig: SignalIntent, state: AccountState, limits: RiskLimits
) -> None:
    check_allowed(sig, state, limits)


@settings(max_examples=1500, deadline=None)
@given(signals(fresh=True), states(clean=True), generous_limits)
def test_allowed_entries_and_exits_respect_every_limit(
    sig: SignalIntent, state: AccountState, limits: RiskLimits
) -> None:
    """Past the state gates, where the exposure gates decide (many allowed decisions)."""
    check_allowed(sig, state, limits)


def check_allowed(sig: SignalIntent, state: AccountState, limits: RiskLimits) -> None:
    decision = evaluate(sig, state, limits, NOW)
    assert evaluate(sig, state, limits, NOW) == decision  # pure and deterministic
    assert decision.reason
    if not decision.allowed:
        return
    assert decision.gate == "all"
    assert sig.account == state.account
    assert state.reconciled and state.market_open
    assert not state.kill_switch.flattens
    assert (NOW - sig.created_at).total_seconds() <= limits.signal_ttl_s
    assert sig.expires_at is None or NOW < sig.expires_at
    d = derive(sig, state)
    assert d.qty.is_finite() and d.qty > 0 and d.qty <= limits.max_qty
    if sig.symbol == OPTION:
        assert limits.allow_options and sig.qty is not None and sig.qty == int(sig.qty)
    if is_pure_reduction(d):
        return  # exits skip the exposure gates by design
    assert state.kill_switch is KillSwitch.OFF and not state.drift_blocked
    assert limits.allow_short or d.new >= 0
    assert d.notional <= limits.max_order_notional
    option = OptionSymbol.parse(sig.symbol)
    if option is None:
        assert d.notional <= state.buying_power
    else:  # options buying power (absent: buying power) covers what the entry commits
        intent = position_intent(sig.side, d.current)
        need, _ = option_requirement(option, intent, d.qty, d.notional)
        power = (state.options_buying_power if state.options_buying_power is not None
                 else state.buying_power)
        assert need <= power
        if intent is PositionIntent.SELL_TO_OPEN and option.right == "C":  # covered only
            shares = state.positions.get(option.underlying)
            assert shares is not None and shares.qty >= -d.new * 100
    assert state.last_equity - state.equity < limits.daily_loss_limit
    mult = 100 if sig.symbol == OPTION else 1
    open_orders = state.open_order_notional.get(sig.symbol, Decimal(0))
    pos = state.positions.get(sig.symbol)
    if pos is not None and pos.qty != 0 and (d.new > 0) == (pos.qty > 0):
        exposure = abs(pos.market_value) + open_orders + d.notional
    else:
        exposure = abs(d.new) * d.price * mult + open_orders
    assert exposure <= limits.max_symbol_notional
    if d.current == 0:
        held = sum(1 for p in state.positions.values() if p.qty != 0)
        assert held < limits.max_open_positions


@settings(max_examples=800, deadline=None)
@given(signals(), states(), limits_st)
def test_halt_and_reduce_only_never_allow_an_entry_or_a_flip(
    sig: SignalIntent, state: AccountState, limits: RiskLimits
) -> None:
    for mode in (KillSwitch.HALT, KillSwitch.REDUCE_ONLY):
        st_mode = replace(state, kill_switch=mode)
        decision = evaluate(sig, st_mode, limits, NOW)
        if decision.allowed:
            d = derive(sig, st_mode)
            assert abs(d.new) < abs(d.current), "|position| must shrink"
            assert d.new == 0 or (d.new > 0) == (d.current > 0), "no sign flip"


@settings(max_examples=400, deadline=None)
@given(signals(), states(), limits_st)
def test_flatten_and_unreconciled_refuse_everything(
    sig: SignalIntent, state: AccountState, limits: RiskLimits
) -> None:
    for mode in (KillSwitch.FLATTEN, KillSwitch.FLATTEN_ALL):
        assert not evaluate(sig, replace(state, kill_switch=mode), limits, NOW).allowed
    unrec = replace(state, reconciled=False)
    decision = evaluate(sig, unrec, limits, NOW)
    assert not decision.allowed and decision.gate in ("account", "reconciled")


account_names = st.from_regex(r"[A-Za-z0-9_.\-]{1,40}", fullmatch=True)
signal_ids = st.one_of(st.integers(0, 10**15), st.from_regex(r"[A-Za-z0-9_.]{1,64}",
                                                             fullmatch=True))


@settings(max_examples=1000, deadline=None)
@given(account_names, signal_ids, account_names, signal_ids)
def test_signal_client_order_ids_are_deterministic_and_unique(
    a1: str, s1: int | str, a2: str, s2: int | str
) -> None:
    id1 = signal_client_order_id(a1, s1)
    assert id1 == signal_client_order_id(a1, s1)
    assert len(id1) <= 128
    same = a1 == a2 and str(s1) == str(s2)
    assert (id1 == signal_client_order_id(a2, s2)) == same
