"""Property: any signal row the schema admits -> an order or a reason, never an exception.

`parse_signal` (the dispatcher's shape check) then `ops.core.risk.evaluate` (every gate) are
fed arbitrary rows within the DB schema of `signals` (side is CHECKed to buy/sell; qty /
notional / limit_price are any numeric, NaN and +-Infinity included, which Postgres 16
numeric stores; text columns are any text; exactly one of qty/notional is set), arbitrary
reference prices and account states. The result is either an allowed decision for a
well-formed request, or a refusal whose reason is non-empty text.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.models import KillSwitch
from ops.core.risk import AccountState, PositionSnapshot, RiskLimits, evaluate
from ops.roles.dispatcher import ParsedSignal, parse_signal
from ops.store.signals import SignalRow

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
LIMITS = RiskLimits(max_order_notional=Decimal(5000), max_symbol_notional=Decimal(9000),
                    max_open_positions=5, daily_loss_limit=Decimal(500),
                    max_qty=Decimal(1000), allow_options=True, signal_ttl_s=300.0)

numeric = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal(0), Decimal("-0"), Decimal("1e131071"), Decimal("-1e-16383"),
                     Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")]),
    st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(10_000), places=4),
)
finite = st.decimals(min_value=-10**9, max_value=10**9, places=2)
symbols = st.one_of(st.text(max_size=40),
                    st.sampled_from(["NVDA", "BRK.B", "BTC/USD", "AAPL270117C00190000",
                                     "AAPL200117P00100000", "nvda", "-X", "A" * 33]))
stamps = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),  # noqa: DTZ001 (hypothesis wants naive bounds)
                      timezones=st.just(UTC))


@st.composite
def rows(draw: st.DrawFn) -> SignalRow:
    amount = draw(numeric)
    by_qty = draw(st.booleans())
    return SignalRow(
        id=draw(st.integers(min_value=1, max_value=2**63 - 1)),
        account="tiny", symbol=draw(symbols), side=draw(st.sampled_from(["buy", "sell"])),
        qty=amount if by_qty else None, notional=None if by_qty else amount,
        order_type=draw(st.one_of(st.sampled_from(["market", "limit", "stop", "stop_limit",
                                                   "trailing_stop"]), st.text(max_size=12))),
        limit_price=draw(st.none() | numeric),
        time_in_force=draw(st.one_of(st.sampled_from(["day", "gtc", "ioc", "fok", "opg",
                                                      "cls"]), st.text(max_size=8))),
        strategy=draw(st.none() | st.text(max_size=20)),
        created_at=draw(stamps), expires_at=draw(st.none() | stamps),
        status="claimed", reason=None, client_order_id=None, broker_order_id=None,
        attempts=1,
    )


@st.composite
def states(draw: st.DrawFn) -> AccountState:
    positions = draw(st.dictionaries(
        st.sampled_from(["NVDA", "BRK.B", "AAPL270117C00190000"]),
        st.builds(PositionSnapshot, finite, finite), max_size=3))
    return AccountState(
        account="tiny", kill_switch=draw(st.sampled_from(list(KillSwitch))),
        market_open=draw(st.booleans()), buying_power=draw(finite), equity=draw(finite),
        last_equity=draw(finite), positions=positions,
        open_order_notional=draw(st.dictionaries(st.sampled_from(["NVDA", "BRK.B"]), finite)),
        drift_blocked=draw(st.booleans()), reconciled=draw(st.booleans()))


@settings(max_examples=400, deadline=None)
@given(rows(), st.none() | numeric, states(),
       st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2)))
def test_any_row_becomes_an_order_or_a_reason(row: SignalRow, price: Decimal | None,
                                              state: AccountState, age: timedelta) -> None:
    row = dataclasses.replace(row, created_at=min(row.created_at, NOW))
    parsed = parse_signal(row)
    if isinstance(parsed, str):
        assert parsed.strip(), "a refusal needs a reason"
        return
    assert isinstance(parsed, ParsedSignal)
    req = parsed.request
    assert req.symbol == row.symbol and req.client_order_id == row.cid
    assert (req.qty is None) != (req.notional is None)
    intent = dataclasses.replace(parsed.intent, reference_price=price)
    decision = evaluate(intent, state, LIMITS, NOW + age)
    assert decision.reason.strip()
    if decision.allowed:
        # Whatever reaches the broker is a positive, finite, bounded order.
        assert decision.notional is not None and decision.notional.is_finite()
        amount = req.qty if req.qty is not None else req.notional
        assert amount is not None and amount.is_finite() and amount > 0
        if req.qty is not None:
            assert req.qty <= LIMITS.max_qty
        assert state.reconciled and state.market_open
        assert row.expires_at is None or NOW + age < row.expires_at
    else:
        assert decision.gate != "all"


@settings(max_examples=200, deadline=None)
@given(rows())
def test_parse_refusals_name_the_field(row: SignalRow) -> None:
    parsed = parse_signal(row)
    if isinstance(parsed, str):
        named = ("symbol", "order_type", "TimeInForce", "OrderType", "limit_price",
                 "qty or notional", "Side")
        assert any(n in parsed for n in named), parsed
