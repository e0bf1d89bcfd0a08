"""The simulator's options and day-trading rules (issue 14.4/14.5): the account's
options_trading_level / options_buying_power / pattern_day_trader / daytrade_count, the
options-level refusal (403), Alpaca's PDT refusal of a 4th day trade in 5 business days on
an account under 25,000 -- exits included -- and single-leg option stop / stop_limit
orders with day or gtc."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from ops.core.models import OptionSymbol
from ops.sim import Simulator
from ops.sim.accounts import AccountState, default_accounts
from ops.sim.clock import EASTERN
from ops.sim.ledger import daytrade_count, window_start

from .conftest import trading
from .test_faults import rest

PDT = {"code": 40310100, "message": "trade denied due to pattern day trading protection"}


def _next_monday() -> datetime:
    # The engine's timestamps never go backwards: a frozen clock must lie ahead of now.
    today = datetime.now(EASTERN).date() + timedelta(days=7)
    day = today + timedelta(days=(7 - today.weekday()) % 7)
    return datetime.combine(day, datetime.min.time(), tzinfo=EASTERN).replace(hour=10)


MONDAY = _next_monday()


def body(symbol: str = "NVDA", side: str = "buy", qty: int = 1, **kw: Any) -> dict[str, Any]:
    return {"symbol": symbol, "qty": qty, "side": side, "type": "market",
            "time_in_force": "day", **kw}


async def order(sim: Simulator, name: str = "tiny", **kw: Any) -> tuple[int, Any]:
    status, answer, _ = await rest(sim, "POST", "/v2/orders", name=name, json=body(**kw))
    return status, answer


async def account(sim: Simulator, name: str = "tiny") -> dict[str, Any]:
    status, answer, _ = await rest(sim, "GET", "/v2/account", name=name)
    assert status == 200
    assert isinstance(answer, dict)
    return answer


def limit_for(sim: Simulator, symbol: str) -> str:
    """A marketable buy limit for a cheap contract (well within tiny's 1,000)."""
    return str(max(sim.market.price(symbol) * Decimal("1.5"), Decimal("0.05"))
               .quantize(Decimal("0.01")))


def cheap_call(sim: Simulator, underlying: str = "AAPL", days: int = 30) -> str:
    """A far out-of-the-money call: a few dollars a contract, within tiny's means."""
    expiry = sim.clock.today() + timedelta(days=days)
    strike = (sim.market.price(underlying) * 2).to_integral_value()
    return str(OptionSymbol(underlying, expiry, "C", strike))


async def round_trip(sim: Simulator, symbol: str = "NVDA", name: str = "tiny") -> None:
    assert (await order(sim, name, symbol=symbol))[0] == 200
    assert (await order(sim, name, symbol=symbol, side="sell"))[0] == 200


# --- the account's fields ------------------------------------------------------------------------


async def test_account_carries_options_and_day_trading_fields(sim: Simulator) -> None:
    large, tiny = await account(sim, "large"), await account(sim, "tiny")
    assert large["options_trading_level"] == 3 and tiny["options_trading_level"] == 2
    assert large["options_approved_level"] == 3
    assert Decimal(tiny["options_buying_power"]) == Decimal(1000)
    for a in (large, tiny):
        assert a["pattern_day_trader"] is False and a["daytrade_count"] == 0
    # alpaca-py's own model reads them.
    model = await trading(sim, "tiny").account()
    assert model.options_trading_level == 2 and model.daytrade_count == 0
    assert model.pattern_day_trader is False


def test_default_levels_are_documented() -> None:
    specs = {s.name: s for s in default_accounts()}
    assert specs["large"].options_trading_level == 3
    assert specs["tiny"].options_trading_level == 2
    assert "options_trading_level=2" in repr(specs["tiny"])


async def test_daytrade_count_counts_each_closing_order_of_a_position_opened_today(
        sim: Simulator) -> None:
    sim.clock.freeze(MONDAY)
    await round_trip(sim)  # 1
    assert (await account(sim))["daytrade_count"] == 1
    # Bought once, closed in two orders: each closing order is a day trade (the least
    # convenient reading of what Alpaca leaves unsaid).
    assert (await order(sim, symbol="AMD", qty=2))[0] == 200
    assert (await order(sim, symbol="AMD", side="sell"))[0] == 200
    assert (await account(sim))["daytrade_count"] == 2
    # Held overnight, sold the next day: not a day trade.
    sim.clock.freeze(MONDAY + timedelta(days=1))
    assert (await order(sim, symbol="AMD", side="sell"))[0] == 200
    assert (await account(sim))["daytrade_count"] == 2
    # Buying more of yesterday's position today, then selling: a day trade.
    assert (await order(sim, symbol="NVDA"))[0] == 200
    sim.clock.freeze(MONDAY + timedelta(days=2))
    assert (await order(sim, symbol="NVDA"))[0] == 200
    assert (await order(sim, symbol="NVDA", side="sell", qty=2))[0] == 200
    assert (await account(sim))["daytrade_count"] == 3
    # The window is 5 business days: Monday's two drop out the next Monday.
    sim.clock.freeze(MONDAY + timedelta(days=7))
    assert (await account(sim))["daytrade_count"] == 1
    sim.clock.freeze(MONDAY + timedelta(days=9))
    assert (await account(sim))["daytrade_count"] == 0


def test_window_is_five_weekdays() -> None:
    assert window_start(date(2026, 3, 6)) == date(2026, 3, 2)  # Fri -> Mon
    assert window_start(date(2026, 3, 9)) == date(2026, 3, 3)  # Mon -> previous Tue
    assert window_start(date(2026, 3, 8)) == date(2026, 3, 2)  # Sun -> Mon


# --- pattern-day-trading protection -------------------------------------------------------------


async def test_a_4th_day_trade_is_refused_even_an_exit(sim: Simulator) -> None:
    sim.clock.freeze(MONDAY)
    for _ in range(3):
        await round_trip(sim)
    assert (await order(sim, symbol="AMD"))[0] == 200  # an entry is not a day trade
    st = sim.engine.states["tiny"]
    before = len(st.orders)
    status, answer = await order(sim, symbol="AMD", side="sell")  # the exit would be #4
    assert (status, answer) == (403, PDT)
    assert len(st.orders) == before  # nothing created
    # DELETE /v2/positions/AMD: the same refusal; close-all: the refusal as its 207 item.
    status, answer, _ = await rest(sim, "DELETE", "/v2/positions/AMD", name="tiny")
    assert (status, answer) == (403, PDT)
    status, items, _ = await rest(sim, "DELETE", "/v2/positions", name="tiny")
    assert status == 207 and items == [{"symbol": "AMD", "status": 403, "body": PDT}]
    # The next session it is no longer a day trade.
    sim.clock.freeze(MONDAY + timedelta(days=1))
    assert (await order(sim, symbol="AMD", side="sell"))[0] == 200
    a = await account(sim)
    assert a["daytrade_count"] == 3 and a["pattern_day_trader"] is False


async def test_close_all_closes_what_it_may_and_refuses_the_day_trade(sim: Simulator) -> None:
    sim.clock.freeze(MONDAY)
    assert (await order(sim, symbol="SPY"))[0] == 200  # held since Monday
    sim.clock.freeze(MONDAY + timedelta(days=1))
    for _ in range(3):
        await round_trip(sim)
    assert (await order(sim, symbol="AMD"))[0] == 200  # opened today
    status, items, _ = await rest(sim, "DELETE", "/v2/positions", name="tiny")
    assert status == 207
    by_symbol = {i["symbol"]: i for i in items}
    assert by_symbol["AMD"] == {"symbol": "AMD", "status": 403, "body": PDT}
    assert by_symbol["SPY"]["status"] == 200 and by_symbol["SPY"]["body"]["side"] == "sell"


async def test_accounts_of_25k_and_more_are_not_protected(sim: Simulator) -> None:
    sim.clock.freeze(MONDAY)
    for _ in range(4):
        await round_trip(sim, name="large")
    a = await account(sim, "large")
    assert a["daytrade_count"] == 4 and a["pattern_day_trader"] is True  # flagged for good
    await round_trip(sim, name="large")
    sim.clock.freeze(MONDAY + timedelta(days=14))
    a = await account(sim, "large")
    assert a["daytrade_count"] == 0 and a["pattern_day_trader"] is True


async def test_under_25k_by_last_equity_alone_is_protected(sim: Simulator) -> None:
    st = sim.engine.states["large"]
    st.last_equity = Decimal(24_000)
    sim.clock.freeze(MONDAY)
    for _ in range(3):
        await round_trip(sim, name="large")
    assert (await order(sim, "large", symbol="AMD"))[0] == 200
    assert await order(sim, "large", symbol="AMD", side="sell") == (403, PDT)


async def test_a_resent_client_order_id_gets_duplicate_not_a_pdt_refusal(sim: Simulator) -> None:
    """A client re-sending after a timeout must find its order (422 duplicate)."""
    sim.clock.freeze(MONDAY)
    for _ in range(2):
        await round_trip(sim)
    assert (await order(sim, symbol="AMD"))[0] == 200
    assert (await order(sim, symbol="AMD", side="sell", client_order_id="exit-1"))[0] == 200
    assert (await account(sim))["daytrade_count"] == 3
    status, answer = await order(sim, symbol="AMD", side="sell", client_order_id="exit-1")
    assert status == 422 and answer["message"] == "client_order_id must be unique"


def test_day_trades_survive_a_state_file() -> None:
    spec = default_accounts()[1]
    st = AccountState(spec, Decimal(1000), Decimal(1000))
    st.opened_on = {"NVDA": "2026-03-02"}
    st.day_trades = [{"date": "2026-03-02", "symbol": "AMD", "order_id": "x"}]
    st.pattern_day_trader = True
    back = AccountState.from_json(spec, st.to_json())
    assert (back.opened_on, back.day_trades, back.pattern_day_trader) == (
        st.opened_on, st.day_trades, True)
    assert daytrade_count(back, date(2026, 3, 2)) == 1
    old = {k: v for k, v in st.to_json().items()
           if k not in ("opened_on", "day_trades", "pattern_day_trader")}
    fresh = AccountState.from_json(spec, old)  # a state file from before: none made
    assert fresh.day_trades == [] and fresh.opened_on == {} and not fresh.pattern_day_trader


# --- options level ------------------------------------------------------------------------------


async def test_an_option_beyond_the_level_is_refused_like_alpaca(sim: Simulator) -> None:
    call = cheap_call(sim)
    st = sim.engine.states["tiny"]
    st.spec = dataclasses.replace(st.spec, options_trading_level=1)
    limit = limit_for(sim, call)
    status, answer = await order(sim, symbol=call, type="limit", limit_price=limit,
                                 position_intent="buy_to_open")
    assert status == 403 and answer["code"] == 40310000
    assert "long options" in answer["message"] and "level 2 required" in answer["message"]
    st.spec = dataclasses.replace(st.spec, options_trading_level=2)
    status, answer = await order(sim, symbol=call, type="limit", limit_price=limit)
    assert status == 200 and answer["position_intent"] is None  # none sent, none echoed
    # Closing never needs a level.
    st.spec = dataclasses.replace(st.spec, options_trading_level=0)
    status, answer = await order(sim, symbol=call, side="sell", type="limit",
                                 limit_price="0.01", position_intent="sell_to_close")
    assert status == 200, answer


async def test_level_0_refuses_every_opening_order(sim: Simulator) -> None:
    st = sim.engine.states["tiny"]
    st.spec = dataclasses.replace(st.spec, options_trading_level=0)
    call = cheap_call(sim)
    status, answer = await order(sim, symbol=call, type="limit",
                                 limit_price=limit_for(sim, call))
    assert status == 403 and "not eligible to trade options" in answer["message"]


async def test_an_intent_that_contradicts_the_position_is_refused(sim: Simulator) -> None:
    call = cheap_call(sim)
    status, answer = await order(sim, symbol=call, type="limit",
                                 limit_price=limit_for(sim, call), position_intent="buy_to_close")
    assert status == 422 and "does not match the position" in answer["message"]


async def test_a_naked_call_is_refused_at_every_level(sim: Simulator) -> None:
    status, answer = await order(sim, "large", symbol=cheap_call(sim), side="sell",
                                 type="limit", limit_price="0.05",
                                 position_intent="sell_to_open")
    assert status == 403
    assert answer["message"].startswith("insufficient underlying qty available for covered call")


async def test_a_covered_call_and_a_cash_secured_put_may_be_written(sim: Simulator) -> None:
    """Level 1 writes: a call covered by 100 shares per contract, a put whose strike the
    options buying power secures (refused beyond it). The written contract is a short."""
    st = sim.engine.states["large"]
    st.spec = dataclasses.replace(st.spec, options_trading_level=1)
    assert (await order(sim, "large", symbol="AAPL", qty=100))[0] == 200
    call = cheap_call(sim)
    status, answer = await order(sim, "large", symbol=call, side="sell", type="limit",
                                 limit_price="0.01", position_intent="sell_to_open")
    assert status == 200, answer
    assert st.positions[call].qty == -1
    expiry = sim.clock.today() + timedelta(days=30)
    spot = sim.market.price("AAPL")
    put = str(OptionSymbol("AAPL", expiry, "P", (spot / 2).to_integral_value()))
    status, answer = await order(sim, "large", symbol=put, side="sell", type="limit",
                                 limit_price="0.01")
    assert status == 200, answer
    assert st.positions[put].qty == -1
    secured = (await account(sim, "large"))["options_buying_power"]
    too_many = int(Decimal(secured) / ((spot / 2).to_integral_value() * 100)) + 1
    status, answer = await order(sim, "large", symbol=put, side="sell", type="limit",
                                 limit_price="0.01", qty=too_many)
    assert status == 403 and answer["message"] == "insufficient buying power", answer


# --- single-leg option order types --------------------------------------------------------------


async def test_option_stop_and_stop_limit_with_day_or_gtc(sim: Simulator) -> None:
    call = cheap_call(sim)
    price = sim.market.price(call)
    assert (await order(sim, "large", symbol=call, type="limit",
                        limit_price=str(price * 2)))[0] == 200
    for kind, tif in (("stop", "day"), ("stop", "gtc"), ("stop_limit", "day"),
                      ("stop_limit", "gtc")):
        extra: dict[str, Any] = {"stop_price": str((price / 2).quantize(Decimal("0.01")))}
        if kind == "stop_limit":
            extra["limit_price"] = str((price / 3).quantize(Decimal("0.01")))
        status, answer = await order(sim, "large", symbol=call, side="sell", type=kind,
                                     time_in_force=tif, qty=1, **extra)
        assert status == 200, (kind, tif, answer)
        assert answer["type"] == kind and answer["time_in_force"] == tif
        cancel = await rest(sim, "DELETE", f"/v2/orders/{answer['id']}")
        assert cancel[0] == 204
    for tif in ("ioc", "fok", "opg", "cls"):
        status, answer = await order(sim, "large", symbol=call, side="sell", type="stop",
                                     time_in_force=tif, stop_price="0.01")
        assert status == 422, tif
        assert answer["message"] == "order_time_in_force provided not supported for " \
                                    "options trading"
