"""Options and day-trading gates (issue 14.4): options trading level, options buying power,
position_intent, and the pattern-day-trading guard -- by example and by hypothesis."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.models import KillSwitch, OptionSymbol, OrderType, Side
from ops.core.risk import (
    GATES,
    NEW_YORK,
    PDT_EQUITY,
    PDT_LIMIT,
    AccountState,
    Effect,
    PdtGuard,
    PositionIntent,
    PositionSnapshot,
    RiskLimits,
    SignalIntent,
    evaluate,
    option_requirement,
    pdt_refusal,
    position_intent,
    same_day_exit,
)

D = Decimal
# Monday 2026-03-02, 10:30 New York: the session closes at 16:00 (5.5 h later).
NOW = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
CLOSE = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)
CALL = "AAPL260320C00190000"  # strike 190
PUT = "AAPL260320P00150000"  # strike 150
TODAY_CALL = "AAPL260302C00190000"  # expires today

LIMITS = RiskLimits(
    max_order_notional=D(10_000), max_symbol_notional=D(20_000), max_open_positions=5,
    daily_loss_limit=D(1_000), max_qty=D(100), allow_short=True, allow_options=True,
    signal_ttl_s=60,
)
SMALL = AccountState(
    account="tiny", kill_switch=KillSwitch.OFF, market_open=True, buying_power=D(2_000),
    equity=D(1_000), last_equity=D(1_000), reconciled=True,
    options_buying_power=D(800), options_trading_level=2, pattern_day_trader=False,
    daytrade_count=0, session_close=CLOSE,
)


def sig(symbol: str = CALL, side: Side = Side.BUY, qty: str = "1", price: str = "2.5",
        account: str = "tiny") -> SignalIntent:
    return SignalIntent(signal_id=1, account=account, symbol=symbol, side=side,
                        created_at=NOW, qty=D(qty), order_type=OrderType.LIMIT,
                        limit_price=D(price))


def decide(s: SignalIntent, state: AccountState = SMALL, limits: RiskLimits = LIMITS
           ) -> tuple[bool, str, str]:
    d = evaluate(s, state, limits, NOW)
    return d.allowed, d.gate, d.reason


def test_gate_order_places_the_new_gates_before_the_exposure_gates() -> None:
    order = {g: i for i, g in enumerate(GATES)}
    assert order["short"] < order["options_level"] < order["pdt"] < order["max_order_notional"]
    assert order["buying_power"] < order["options_buying_power"] < order["daily_loss"]


# --- position_intent ---------------------------------------------------------------------------


def test_position_intent_from_side_and_position() -> None:
    assert position_intent(Side.BUY, D(0)) is PositionIntent.BUY_TO_OPEN
    assert position_intent(Side.BUY, D(3)) is PositionIntent.BUY_TO_OPEN
    assert position_intent(Side.BUY, D(-2)) is PositionIntent.BUY_TO_CLOSE
    assert position_intent(Side.SELL, D(2)) is PositionIntent.SELL_TO_CLOSE
    assert position_intent(Side.SELL, D(0)) is PositionIntent.SELL_TO_OPEN
    assert position_intent(Side.SELL, D(-1)) is PositionIntent.SELL_TO_OPEN


def test_every_option_decision_carries_its_intent_and_stocks_none() -> None:
    d = evaluate(sig(), SMALL, LIMITS, NOW)
    assert d.allowed and d.position_intent is PositionIntent.BUY_TO_OPEN
    held = replace(SMALL, positions={CALL: PositionSnapshot(D(2), D(500))})
    d = evaluate(sig(side=Side.SELL, qty="2"), held, LIMITS, NOW)
    assert d.allowed and d.position_intent is PositionIntent.SELL_TO_CLOSE
    d = evaluate(sig(symbol="AAPL", price="190"), SMALL, LIMITS, NOW)
    assert d.position_intent is None
    # Refused decisions carry it too (the dispatcher never sends them, but it is known).
    d = evaluate(sig(), replace(SMALL, options_trading_level=1), LIMITS, NOW)
    assert not d.allowed and d.position_intent is PositionIntent.BUY_TO_OPEN


def test_an_option_order_through_zero_is_refused() -> None:
    held = replace(SMALL, positions={CALL: PositionSnapshot(D(1), D(250))})
    ok, gate, reason = decide(sig(side=Side.SELL, qty="3"), held)
    assert (ok, gate) == (False, "options")
    assert "would go through zero" in reason and "close the position first" in reason


# --- options trading level --------------------------------------------------------------------


def test_a_long_option_needs_level_2() -> None:
    ok, gate, reason = decide(sig(), replace(SMALL, options_trading_level=1))
    assert (ok, gate) == (False, "options_level")
    assert "buy_to_open 1 AAPL260320C00190000" in reason
    assert "needs options_trading_level 2, the account has level 1" in reason
    ok, gate, reason = decide(sig(), replace(SMALL, options_trading_level=0))
    assert (ok, gate) == (False, "options_level") and "not enabled" in reason
    assert decide(sig(), replace(SMALL, options_trading_level=2))[0]
    assert decide(sig(), replace(SMALL, options_trading_level=3))[0]


def test_unknown_level_is_left_to_the_broker() -> None:
    assert decide(sig(), replace(SMALL, options_trading_level=None))[0]


def test_exits_are_never_refused_for_the_level() -> None:
    held = replace(SMALL, options_trading_level=0,
                   positions={CALL: PositionSnapshot(D(2), D(500))})
    ok, gate, _ = decide(sig(side=Side.SELL, qty="2"), held)
    assert ok and gate == "all"


def test_a_call_sold_to_open_needs_the_shares() -> None:
    state = replace(SMALL, options_trading_level=3, buying_power=D(50_000),
                    positions={"AAPL": PositionSnapshot(D(150), D(28_500))})
    ok, gate, reason = decide(sig(side=Side.SELL, qty="2"), state)
    assert (ok, gate) == (False, "options_level")
    assert "uncovered call" in reason and "200 AAPL shares" in reason and "150 held" in reason
    ok, gate, _ = decide(sig(side=Side.SELL, qty="1"), state)
    assert ok, gate
    # An existing short call already uses 100 of the shares.
    shorted = replace(state, positions={**state.positions,
                                        CALL: PositionSnapshot(D(-1), D(-250))})
    ok, gate, reason = decide(sig(side=Side.SELL, qty="1"), shorted)
    assert (ok, gate) == (False, "options_level") and "2 short call(s)" in reason


def test_a_put_sold_to_open_is_cash_secured_by_options_buying_power() -> None:
    state = replace(SMALL, options_trading_level=1, options_buying_power=D(14_999))
    ok, gate, reason = decide(sig(symbol=PUT, side=Side.SELL, qty="1", price="3"), state)
    assert (ok, gate) == (False, "options_buying_power")
    assert "cash-secured put collateral (strike x 100 x contracts) 15,000.00" in reason
    assert "exceeds options_buying_power 14,999.00" in reason
    assert decide(sig(symbol=PUT, side=Side.SELL, qty="1", price="3"),
                  replace(state, options_buying_power=D(15_000)))[0]


# --- options buying power ---------------------------------------------------------------------


def test_option_entries_use_options_buying_power_not_buying_power() -> None:
    # buying_power is plenty; options_buying_power is not.
    state = replace(SMALL, buying_power=D(100_000), options_buying_power=D(200))
    ok, gate, reason = decide(sig(qty="1", price="2.5"), state)
    assert (ok, gate) == (False, "options_buying_power")
    assert "option order notional 250.00 exceeds options_buying_power 200.00" in reason
    # The reverse: stocks use buying_power whatever options_buying_power says.
    stock = replace(SMALL, buying_power=D(100), options_buying_power=D(100_000))
    ok, gate, _ = decide(sig(symbol="AAPL", price="190"), stock)
    assert (ok, gate) == (False, "buying_power")


def test_without_options_buying_power_options_fall_back_to_buying_power() -> None:
    state = replace(SMALL, buying_power=D(200), options_buying_power=None)
    ok, gate, reason = decide(sig(qty="1", price="2.5"), state)
    assert (ok, gate) == (False, "options_buying_power")
    assert "buying_power (the broker reports no options_buying_power) 200.00" in reason


def test_option_requirement() -> None:
    call, put = OptionSymbol.parse(CALL), OptionSymbol.parse(PUT)
    assert call is not None and put is not None
    assert option_requirement(call, PositionIntent.BUY_TO_OPEN, D(2), D(500))[0] == D(500)
    assert option_requirement(put, PositionIntent.SELL_TO_OPEN, D(2), D(600))[0] == D(30_000)
    assert option_requirement(call, PositionIntent.SELL_TO_OPEN, D(2), D(600))[0] == D(0)


# --- pattern-day-trading guard ----------------------------------------------------------------


AT_LIMIT = replace(SMALL, daytrade_count=3)
INTRADAY = replace(LIMITS, max_hold_s=3600.0)  # closes an entry within the session


def test_an_entry_the_exit_rules_close_today_is_refused_at_the_limit() -> None:
    ok, gate, reason = decide(sig(symbol="AAPL", price="50"), AT_LIMIT, INTRADAY)
    assert (ok, gate) == (False, "pdt")
    for needle in ("pattern-day-trading guard", "under 25,000.00", "equity 1,000.00",
                   "3 day trade(s) in 5 business days", "limit 3",
                   "max_hold_s 3,600 ends before the session closes (16:00 New York time)",
                   "could only be exited as a day trade"):
        assert needle in reason, (needle, reason)


def test_below_the_limit_or_with_a_long_max_hold_it_passes() -> None:
    assert decide(sig(symbol="AAPL", price="50"), replace(AT_LIMIT, daytrade_count=2),
                  INTRADAY)[0]
    overnight = replace(LIMITS, max_hold_s=86_400.0)
    assert decide(sig(symbol="AAPL", price="50"), AT_LIMIT, overnight)[0]
    assert decide(sig(symbol="AAPL", price="50"), AT_LIMIT, LIMITS)[0]  # no max hold


def test_strict_refuses_every_entry_at_the_limit_but_never_an_exit() -> None:
    strict = replace(LIMITS, pdt_guard=PdtGuard.STRICT)
    ok, gate, reason = decide(sig(symbol="AAPL", price="50"), AT_LIMIT, strict)
    assert (ok, gate) == (False, "pdt") and "pdt_guard is strict" in reason
    held = replace(AT_LIMIT, positions={"AAPL": PositionSnapshot(D(2), D(100))},
                   opened_today=frozenset({"AAPL"}))
    ok, gate, _ = decide(sig(symbol="AAPL", side=Side.SELL, qty="2", price="50"), held, strict)
    assert ok and gate == "all"


def test_positions_opened_today_spend_the_budget() -> None:
    strict = replace(LIMITS, pdt_guard=PdtGuard.STRICT)
    state = replace(SMALL, daytrade_count=1, opened_today=frozenset({"MSFT", "SPY"}))
    ok, gate, reason = decide(sig(symbol="AAPL", price="50"), state, strict)
    assert (ok, gate) == (False, "pdt")
    assert "1 day trade(s) in 5 business days + 2 position(s) opened today still held " \
           "(MSFT, SPY)" in reason
    # Adding to a position opened today needs no new day trade: it is not counted twice.
    state = replace(SMALL, daytrade_count=2, opened_today=frozenset({"AAPL"}))
    assert decide(sig(symbol="AAPL", price="50"), state, strict)[0]


def test_a_large_account_or_unknown_count_or_guard_off_is_never_refused() -> None:
    strict = replace(LIMITS, pdt_guard=PdtGuard.STRICT)
    rich = replace(AT_LIMIT, equity=PDT_EQUITY, last_equity=PDT_EQUITY,
                   buying_power=D(50_000))
    assert decide(sig(symbol="AAPL", price="50"), rich, strict)[0]
    # Under 25k by last_equity only: protected (the broker may judge by either).
    poorer = replace(rich, last_equity=PDT_EQUITY - 1)
    assert not decide(sig(symbol="AAPL", price="50"), poorer, strict)[0]
    unknown = replace(AT_LIMIT, daytrade_count=None, pattern_day_trader=None)
    assert decide(sig(symbol="AAPL", price="50"), unknown, strict)[0]
    off = replace(LIMITS, pdt_guard=PdtGuard.OFF, max_hold_s=60.0)
    assert decide(sig(symbol="AAPL", price="50"), AT_LIMIT, off)[0]


def test_a_flagged_pattern_day_trader_under_25k_is_at_the_limit() -> None:
    strict = replace(LIMITS, pdt_guard=PdtGuard.STRICT)
    flagged = replace(SMALL, daytrade_count=None, pattern_day_trader=True)
    ok, gate, reason = decide(sig(symbol="AAPL", price="50"), flagged, strict)
    assert (ok, gate) == (False, "pdt")
    assert "day-trade count unknown" in reason and "pattern day trader" in reason


def test_an_option_expiring_today_is_a_same_day_exit() -> None:
    ok, gate, reason = decide(sig(symbol=TODAY_CALL), AT_LIMIT)
    assert (ok, gate) == (False, "pdt")
    assert "expires today (2026-03-02)" in reason and "liquidation window" in reason
    # The expiry-day exit off and no days rule: it would be held to expiry, no day trade.
    held_to_expiry = replace(LIMITS, options_expiry_day_exit=False)
    assert decide(sig(symbol=TODAY_CALL), AT_LIMIT, held_to_expiry)[0]
    days = replace(LIMITS, close_options_days_before_expiry=30)
    ok, gate, reason = decide(sig(symbol=CALL), AT_LIMIT, days)
    assert (ok, gate) == (False, "pdt") and "close_options_days_before_expiry 30" in reason


def test_same_day_exit_needs_a_known_session() -> None:
    assert same_day_exit("AAPL", NOW, None, INTRADAY) is None
    after_close = CLOSE + timedelta(minutes=1)
    assert same_day_exit("AAPL", after_close, CLOSE, INTRADAY) is None
    assert same_day_exit("AAPL", NOW, CLOSE, replace(LIMITS, max_hold_s=5.5 * 3600)) is not None
    assert same_day_exit("AAPL", NOW, CLOSE, replace(LIMITS, max_hold_s=5.5 * 3600 + 1)) is None


def test_from_config_carries_the_guard_and_the_exit_rules() -> None:
    from ops.core import config

    risk = config.RiskLimits(max_order_notional=D(100), max_symbol_notional=D(200),
                             max_open_positions=2, daily_loss_limit=D(50), max_qty=D(5),
                             pdt_guard="strict")
    exits = config.ExitRules(max_hold_s=600.0, close_options_days_before_expiry=1,
                             options_expiry_day_exit_by="off")
    limits = RiskLimits.from_config(risk, exits)
    assert limits.pdt_guard is PdtGuard.STRICT and limits.max_hold_s == 600.0
    assert limits.close_options_days_before_expiry == 1
    assert limits.options_expiry_day_exit is False
    plain = RiskLimits.from_config(risk)
    assert plain.max_hold_s is None and plain.options_expiry_day_exit is True


# --- properties -------------------------------------------------------------------------------

SYMBOLS = ["AAPL", "MSFT", CALL, PUT, TODAY_CALL]
amounts = st.decimals(min_value=D(0), max_value=D(60_000), places=2)


@st.composite
def small_states(draw: st.DrawFn) -> AccountState:
    positions = {}
    for sym in draw(st.lists(st.sampled_from(SYMBOLS), unique=True, max_size=3)):
        q = D(draw(st.integers(-5, 300) if sym in ("AAPL", "MSFT") else st.integers(-3, 3)))
        positions[sym] = PositionSnapshot(q, q * D(2) * (100 if len(sym) > 5 else 1))
    equity = draw(amounts)
    return AccountState(
        account="tiny", kill_switch=KillSwitch.OFF, market_open=True,
        buying_power=draw(amounts), equity=equity,
        last_equity=draw(st.sampled_from([equity, equity + 500, max(D(0), equity - 500)])),
        positions=positions, reconciled=True,
        options_buying_power=draw(st.one_of(st.none(), amounts)),
        options_trading_level=draw(st.one_of(st.none(), st.integers(0, 3))),
        pattern_day_trader=draw(st.one_of(st.none(), st.booleans())),
        daytrade_count=draw(st.one_of(st.none(), st.integers(0, 6))),
        opened_today=frozenset(draw(st.lists(st.sampled_from(SYMBOLS), max_size=3))),
        session_close=draw(st.sampled_from([None, CLOSE])),
    )


@st.composite
def option_signals(draw: st.DrawFn) -> SignalIntent:
    return SignalIntent(
        signal_id=1, account="tiny", symbol=draw(st.sampled_from(SYMBOLS)),
        side=draw(st.sampled_from(list(Side))), created_at=NOW,
        qty=D(draw(st.integers(1, 5))), order_type=OrderType.LIMIT,
        limit_price=draw(st.decimals(min_value=D("0.05"), max_value=D(300), places=2)),
    )


limits_st = st.builds(
    RiskLimits, max_order_notional=st.just(D(10**7)), max_symbol_notional=st.just(D(10**7)),
    max_open_positions=st.just(10), daily_loss_limit=st.just(D(10**7)),
    max_qty=st.just(D(1000)), allow_short=st.booleans(), allow_options=st.just(True),
    signal_ttl_s=st.just(60.0), pdt_guard=st.sampled_from(list(PdtGuard)),
    max_hold_s=st.sampled_from([None, 60.0, 3600.0, 86_400.0]),
    close_options_days_before_expiry=st.sampled_from([None, 0, 1, 30]),
    options_expiry_day_exit=st.booleans(),
)


@settings(max_examples=2000, deadline=None)
@given(option_signals(), small_states(), limits_st)
def test_allowed_option_and_pdt_decisions_keep_the_broker_rules(
    s: SignalIntent, state: AccountState, limits: RiskLimits
) -> None:
    d = evaluate(s, state, limits, NOW)
    assert evaluate(s, state, limits, NOW) == d  # pure
    option = OptionSymbol.parse(s.symbol)
    pos = state.positions.get(s.symbol)
    current = pos.qty if pos is not None else D(0)
    assert s.qty is not None
    new = current + (s.qty if s.side is Side.BUY else -s.qty)
    if option is not None:
        assert d.position_intent == position_intent(s.side, current)
    else:
        assert d.position_intent is None
    if not d.allowed:
        assert d.gate in GATES and d.reason
        return
    exit_ = current != 0 and abs(new) < abs(current) and (new == 0 or (new > 0) == (current > 0))
    if option is not None:
        assert (new > 0) == (current > 0) or new == 0 or current == 0, "never through zero"
    if exit_:
        return  # exits pass the options-level, pdt and buying-power gates by design
    if option is not None:
        level = state.options_trading_level
        intent = position_intent(s.side, current)
        if level is not None:
            assert level >= 1
            if intent is PositionIntent.BUY_TO_OPEN:
                assert level >= 2
        need, _ = option_requirement(option, intent, s.qty, s.qty * s.limit_price * 100)  # type: ignore[operator]
        power = (state.options_buying_power if state.options_buying_power is not None
                 else state.buying_power)
        assert need <= power
    # The pdt guard: never an entry that must become a 4th day trade.
    small = min(state.equity, state.last_equity) < PDT_EQUITY
    known = state.daytrade_count is not None or state.pattern_day_trader is True
    if limits.pdt_guard is not PdtGuard.OFF and small and known:
        used = (state.daytrade_count or 0) + len(state.opened_today - {s.symbol})
        if used >= PDT_LIMIT or state.pattern_day_trader:
            assert limits.pdt_guard is PdtGuard.NORMAL
            assert same_day_exit(s.symbol, NOW, state.session_close, limits) is None


@settings(max_examples=500, deadline=None)
@given(option_signals(), small_states(), limits_st)
def test_the_pdt_gate_never_refuses_an_exit_and_is_pure(
    s: SignalIntent, state: AccountState, limits: RiskLimits
) -> None:
    d = evaluate(s, state, limits, NOW)
    if d.effect in (Effect.REDUCE, Effect.CLOSE):
        assert d.gate != "pdt"
    assert pdt_refusal(s.symbol, state, limits, NOW) == pdt_refusal(s.symbol, state, limits,
                                                                     NOW)


@settings(max_examples=300, deadline=None)
@given(option_signals(), small_states(), limits_st)
def test_flatten_all_refuses_everything_like_flatten(
    s: SignalIntent, state: AccountState, limits: RiskLimits
) -> None:
    for mode in (KillSwitch.FLATTEN, KillSwitch.FLATTEN_ALL):
        d = evaluate(s, replace(state, kill_switch=mode), limits, NOW)
        assert not d.allowed and d.gate == "kill_switch"
        assert d.reason.startswith(f"kill switch {mode.value}: every order refused")


def test_new_york_zone_is_the_session_zone() -> None:
    assert NOW.astimezone(NEW_YORK).date() == date(2026, 3, 2)
