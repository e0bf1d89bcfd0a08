"""Risk gates by example: each gate's reason text names the numbers, in the fixed order."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ops.core.models import KillSwitch, OrderType, Side
from ops.core.risk import (
    GATES,
    AccountState,
    Effect,
    PositionSnapshot,
    RiskLimits,
    SignalIntent,
    evaluate,
    position_effect,
    reduces_position,
    signal_client_order_id,
)

NOW = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
D = Decimal

LIMITS = RiskLimits(
    max_order_notional=D(10_000), max_symbol_notional=D(20_000), max_open_positions=3,
    daily_loss_limit=D(1_000), max_qty=D(1_000), allow_short=False, allow_options=False,
    signal_ttl_s=60,
)
STATE = AccountState(
    account="large", kill_switch=KillSwitch.OFF, market_open=True, buying_power=D(50_000),
    equity=D(100_000), last_equity=D(100_000),
    positions={"AAPL": PositionSnapshot(D(100), D(19_000))},
    open_order_notional={"AAPL": D(500)}, drift_blocked=False, reconciled=True,
)


def sig(**kw: object) -> SignalIntent:
    base: dict[str, object] = dict(
        signal_id=7, account="large", symbol="MSFT", side=Side.BUY, created_at=NOW,
        qty=D(10), reference_price=D(400),
    )
    base.update(kw)
    return SignalIntent(**base)  # type: ignore[arg-type]


def check(s: SignalIntent, state: AccountState = STATE, limits: RiskLimits = LIMITS) -> tuple[
    bool, str, str
]:
    d = evaluate(s, state, limits, NOW)
    return d.allowed, d.gate, d.reason


def test_gate_order_is_documented() -> None:
    assert GATES[:3] == ("account", "reconciled", "kill_switch")
    assert GATES[-1] == "daily_loss"


def test_plain_entry_allowed() -> None:
    d = evaluate(sig(), STATE, LIMITS, NOW)
    assert d.allowed and d.gate == "all" and d.effect is Effect.OPEN
    assert d.notional == D(4000)
    assert d.reason == "allowed: buy 10 MSFT (position 0, open), notional 4,000.00"


def test_account_mismatch_is_refused_first() -> None:
    unrec = replace(STATE, reconciled=False)
    assert check(sig(account="tiny"), unrec) == (
        False, "account", "signal is for account 'tiny', this state is account 'large'")


def test_not_reconciled() -> None:
    assert check(sig(), replace(STATE, reconciled=False))[1:] == (
        "reconciled", "account not reconciled with the broker yet: no orders until orders "
                      "and positions are reconciled")


def test_kill_switch_grades() -> None:
    sell_some = sig(symbol="AAPL", side=Side.SELL, qty=D(40), reference_price=D(190))
    sell_flip = sig(symbol="AAPL", side=Side.SELL, qty=D(150), reference_price=D(190))
    for mode in (KillSwitch.HALT, KillSwitch.REDUCE_ONLY):
        st = replace(STATE, kill_switch=mode)
        assert check(sell_some, st)[0] is True
        assert check(sell_flip, st)[0] is False
    assert check(sig(), replace(STATE, kill_switch=KillSwitch.HALT)) == (
        False, "kill_switch",
        "kill switch halt: new entries refused; buy 10 MSFT (position 0, open)")
    assert check(sell_flip, replace(STATE, kill_switch=KillSwitch.REDUCE_ONLY))[2] == (
        "kill switch reduce-only: only orders that reduce a position without flipping it; "
        "sell 150 AAPL (position 100, flip)")
    assert check(sell_some, replace(STATE, kill_switch=KillSwitch.FLATTEN)) == (
        False, "kill_switch",
        "kill switch flatten: every order refused (sell 40 AAPL (position 100, reduce))")


def test_drift_blocks_entries_not_exits() -> None:
    st = replace(STATE, drift_blocked=True)
    assert check(sig(), st) == (False, "drift", "position drift between broker and database "
                                                "blocks entries; buy 10 MSFT (position 0, open)")
    ok, gate, reason = check(sig(symbol="AAPL", side=Side.SELL, qty=D(100),
                                 reference_price=D(190)), st)
    assert ok and gate == "all"
    assert reason == ("allowed: sell 100 AAPL (position 100, close), notional 19,000.00; "
                      "exits skip the exposure gates")


def test_expiry() -> None:
    assert check(sig(created_at=NOW - timedelta(seconds=75)))[1:] == (
        "expiry", "signal is 75.0s old, older than signal_ttl_s 60.0")
    assert check(sig(expires_at=NOW))[1:] == (
        "expiry", "signal expired at 2026-03-02T15:30:00+00:00 (now 2026-03-02T15:30:00+00:00)")


def test_market_closed() -> None:
    assert check(sig(), replace(STATE, market_open=False))[1:] == ("market", "market closed")


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"qty": D(0)}, "qty 0 is not a positive finite number"),
        ({"qty": D(-3)}, "qty -3 is not a positive finite number"),
        ({"qty": D("NaN")}, "qty NaN is not a positive finite number"),
        ({"qty": D("Infinity")}, "qty Infinity is not a positive finite number"),
        ({"qty": D(5000)}, "qty 5,000 exceeds max_qty 1,000"),
        ({"qty": None}, "order needs exactly one of qty or notional, got qty=None, "
                        "notional=None"),
        ({"notional": D(100)}, "order needs exactly one of qty or notional, got qty=10, "
                               "notional=100"),
        ({"reference_price": None}, "no usable price to value the order (limit_price=None, "
                                    "reference_price=None)"),
        ({"reference_price": D(-1)}, "reference_price -1 is not a positive finite number"),
    ],
)
def test_sanity_reasons(kw: dict[str, object], reason: str) -> None:
    assert check(sig(**kw))[1:] == ("sanity", reason)


def test_notional_order_is_valued_through_the_price() -> None:
    d = evaluate(sig(qty=None, notional=D(1000), reference_price=D(300)), STATE, LIMITS, NOW)
    assert d.allowed
    assert d.reason == "allowed: buy 3.333333 MSFT (position 0, open), notional 1,000.00"


def test_limit_order_valued_at_limit_price() -> None:
    d = evaluate(sig(order_type=OrderType.LIMIT, limit_price=D(1_100), qty=D(10)), STATE,
                 LIMITS, NOW)
    assert (d.gate, d.reason) == (
        "max_order_notional", "order notional 11,000.00 exceeds max_order_notional 10,000.00")


def test_options() -> None:
    opt = "AAPL260320C00190000"
    assert check(sig(symbol=opt, qty=D(1), reference_price=D("2.50")))[1:] == (
        "options", "AAPL260320C00190000 is an option (AAPL 2026-03-20 190 call); "
                   "allow_options is false")
    allow = replace(LIMITS, allow_options=True)
    d = evaluate(sig(symbol=opt, qty=D(2), reference_price=D("2.50")), STATE, allow, NOW)
    assert d.allowed and d.notional == D(500)  # 2 x 2.50 x 100
    assert check(sig(symbol=opt, qty=D("1.5"), reference_price=D(1)), limits=allow)[1:] == (
        "options", "option orders need a whole number of contracts as qty, got qty=1.5, "
                   "notional=None")
    assert check(sig(symbol=opt, qty=D(41), reference_price=D("2.50")), limits=allow)[1:] == (
        "max_order_notional", "order notional 10,250.00 exceeds max_order_notional 10,000.00")


def test_short() -> None:
    assert check(sig(side=Side.SELL))[1:] == (
        "short", "order would leave a short position of -10 MSFT; allow_short is false")
    assert check(sig(side=Side.SELL), limits=replace(LIMITS, allow_short=True))[0] is True


def test_reduce_only_passes_exits_and_refuses_the_rest_whatever_allow_short_says() -> None:
    shorts = replace(LIMITS, allow_short=True)
    # AAPL: long 100. Reducing and closing pass, also as reduce-only.
    for qty in (D(40), D(100)):
        assert check(sig(symbol="AAPL", side=Side.SELL, qty=qty, reference_price=D(190),
                         reduce_only=True), limits=shorts)[0] is True
    # Flipping, growing, or opening where nothing is held: refused before the short gate.
    for s, what in (
        (sig(symbol="AAPL", side=Side.SELL, qty=D(150), reference_price=D(190)),
         "sell 150 AAPL (position 100, flip)"),
        (sig(symbol="AAPL", qty=D(1), reference_price=D(190)), "buy 1 AAPL (position 100, "
                                                               "increase)"),
        (sig(side=Side.SELL), "sell 10 MSFT (position 0, open)"),
    ):
        for limits in (LIMITS, shorts):
            assert check(replace(s, reduce_only=True), limits=limits)[1:] == (
                "reduce_only", f"reduce-only signal, but the order would not reduce the "
                               f"position: {what}")
    # Without the flag, shorting is the short gate's call.
    assert check(sig(side=Side.SELL), limits=shorts)[0] is True
    # A malformed reduce-only signal is refused for what is wrong with it.
    assert check(sig(qty=None, reduce_only=True))[1] == "sanity"


def test_symbol_notional_counts_position_and_open_orders() -> None:
    assert check(sig(symbol="AAPL", qty=D(5), reference_price=D(190)))[1:] == (
        "max_symbol_notional",
        "AAPL exposure 20,450.00 (position 19,000.00 + open orders 500.00 + this order "
        "950.00) exceeds max_symbol_notional 20,000.00")


def test_max_open_positions_only_for_new_symbols() -> None:
    full = replace(STATE, positions={
        s: PositionSnapshot(D(1), D(10)) for s in ("AAPL", "SPY", "QQQ")})
    assert check(sig(), full)[1:] == (
        "max_open_positions", "3 open positions, max_open_positions is 3: no new symbol MSFT")
    assert check(sig(symbol="SPY", qty=D(1), reference_price=D(10)), full)[0] is True


def test_buying_power() -> None:
    assert check(sig(), replace(STATE, buying_power=D("3999.99")))[1:] == (
        "buying_power", "order notional 4,000.00 exceeds buying power 3,999.99")


def test_daily_loss() -> None:
    st = replace(STATE, equity=D(98_750))
    assert check(sig(), st)[1:] == (
        "daily_loss", "daily loss 1,250.00 (equity 98,750.00 vs last_equity 100,000.00) "
                      "reaches daily_loss_limit 1,000.00")
    assert check(sig(symbol="AAPL", side=Side.SELL, qty=D(10), reference_price=D(190)),
                 st)[0] is True


def test_position_effect() -> None:
    assert position_effect(D(0), Side.BUY, D(1)) is Effect.OPEN
    assert position_effect(D(5), Side.BUY, D(1)) is Effect.INCREASE
    assert position_effect(D(5), Side.SELL, D(1)) is Effect.REDUCE
    assert position_effect(D(5), Side.SELL, D(5)) is Effect.CLOSE
    assert position_effect(D(5), Side.SELL, D(6)) is Effect.FLIP
    assert position_effect(D(-5), Side.BUY, D(2)) is Effect.REDUCE
    assert position_effect(D(-5), Side.SELL, D(2)) is Effect.INCREASE
    assert position_effect(D(5), Side.SELL, D("NaN")) is Effect.UNKNOWN
    assert reduces_position(sig(symbol="AAPL", side=Side.SELL, qty=D(1)), D(100))


def test_bad_state_and_limits_are_named() -> None:
    with pytest.raises(ValueError, match=r"AccountState.buying_power must be a finite "
                                         r"Decimal, got Decimal\('NaN'\)"):
        replace(STATE, buying_power=D("NaN"))
    with pytest.raises(ValueError, match="RiskLimits.max_qty must be >= 0, got -1"):
        replace(LIMITS, max_qty=D(-1))
    with pytest.raises(ValueError, match="RiskLimits.signal_ttl_s must be > 0"):
        replace(LIMITS, signal_ttl_s=0)


def test_signal_client_order_id() -> None:
    assert signal_client_order_id("large", 42) == "ops-large-sig-42"
    assert signal_client_order_id("large", "42") == "ops-large-sig-42"
    with pytest.raises(ValueError, match="signal id '4-2' unusable"):
        signal_client_order_id("large", "4-2")
    with pytest.raises(ValueError, match="account name 'a b' unusable"):
        signal_client_order_id("a b", 1)
    with pytest.raises(ValueError, match="signal id True unusable"):
        signal_client_order_id("large", True)


def test_limits_from_the_config_model() -> None:
    from ops.core import config

    cfg = config.RiskLimits(max_order_notional=D(10_000), max_symbol_notional=D(20_000),
                            max_open_positions=3, daily_loss_limit=D(1_000), max_qty=D(1_000),
                            signal_ttl_s=60)
    assert RiskLimits.from_config(cfg) == LIMITS
