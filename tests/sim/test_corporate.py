"""Position changes without a fill (ops.sim.corporate): external orders, splits, option
expiry, exercise and assignment, with the non-trade activities Alpaca documents
(docs/broker-protocol.md 3.7a; the OPEXC/OPTRD and OPASN/OPTRD example pairs), through Python, the
admin HTTP API, raw REST and alpaca-py; and no HTTP 500 once a held option has expired."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest

from ops.core.models import OptionSymbol
from ops.sim import Simulator
from ops.sim.accounts import PositionState
from ops.sim.clock import EASTERN
from ops.sim.wire import stable_uuid

from .conftest import Recorder, trading

NTA_KEYS = {"id", "activity_type", "date", "net_amount", "description", "symbol", "qty",
            "status"}


def order(symbol: str, qty: int, side: OrderSide = OrderSide.BUY,
          cid: str | None = None) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=TimeInForce.DAY,
                              client_order_id=cid)


async def admin(sim: Simulator, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            sim.rest_url + "/_sim/faults", json=body) as resp:
        return resp.status, await resp.json()


def contract(sim: Simulator, underlying: str, right: str, strike_offset: int,
             days: int = 0) -> OptionSymbol:
    """A contract expiring in `days` (New York), strike = spot + offset (whole dollars)."""
    spot = sim.market.price(underlying)
    expiry = sim.clock.today() + timedelta(days=days)
    return OptionSymbol(underlying, expiry, right, Decimal(int(spot) + strike_offset))


async def non_trade(sim: Simulator, types: str = "OPEXP,OPEXC,OPASN,OPTRD,SPLIT",
                    name: str = "large") -> list[dict[str, Any]]:
    return await trading(sim, name).get("/account/activities",
                                        {"activity_types": types, "direction": "asc"})


def shape(a: dict[str, Any]) -> None:
    assert NTA_KEYS <= set(a), a
    assert a["status"] == "executed" and "transaction_time" not in a
    stamp, _, uid = a["id"].partition("::")
    assert len(stamp) == 17 and stamp.isdigit() and len(uid) == 36


# --- external orders ---------------------------------------------------------------------------


async def test_external_order_fills_like_one_placed_by_hand(sim: Simulator) -> None:
    status, body = await admin(sim, {"action": "external_order", "account": "large",
                                     "symbol": "AAPL", "qty": 3})
    assert status == 200 and body["ok"] is True
    placed = body["result"]
    assert placed["status"] == "filled" and not placed["client_order_id"].startswith("ops-")
    pos = await trading(sim).position("AAPL")
    assert pos.qty == "3"
    fills = await trading(sim).get("/account/activities/FILL", {"direction": "asc"})
    assert [f["order_id"] for f in fills] == [placed["id"]]
    # The pipeline's prefix is refused: an external order must not look like its own.
    status, body = await admin(sim, {"action": "external_order", "account": "large",
                                     "symbol": "AAPL", "qty": 1,
                                     "client_order_id": "ops-large-x"})
    assert status == 400 and "ops-" in body["message"]
    named = sim.faults.external_order("tiny", "MSFT", 1, client_order_id="web-1")
    assert named["client_order_id"] == "web-1"


# --- splits ------------------------------------------------------------------------------------


async def test_forward_split_rebases_positions_prices_and_cancels_open_orders(
        sim: Simulator) -> None:
    t = trading(sim)
    await t.submit(order("AAPL", 10))
    before = await t.position("AAPL")
    price = sim.market.price("AAPL")
    resting = await t.submit(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.GTC,
                                               limit_price=float(price / 2)))
    rec = await Recorder(sim).start()
    try:
        status, body = await admin(sim, {"action": "split", "symbol": "AAPL", "ratio": "2:1"})
        assert status == 200 and body["result"] == {"large": {"before": "10", "after": "20"}}
        await rec.wait_for(lambda msgs: any(m["data"]["event"] == "canceled" for m in msgs))
        await asyncio.sleep(0.2)
        # A split is not a trade update: only the canceled order is on the stream.
        assert rec.events() == ["canceled"]
        assert rec.messages[0]["data"]["order"]["id"] == str(resting.id)
    finally:
        await rec.stop()
    after = await t.position("AAPL")
    assert after.qty == "20"
    assert Decimal(after.avg_entry_price) == Decimal(before.avg_entry_price) / 2
    assert Decimal(after.cost_basis) == Decimal(before.cost_basis)  # cost basis unchanged
    assert sim.market.price("AAPL") == (price / 2).quantize(Decimal("0.01"))
    (split,) = await non_trade(sim)
    shape(split)
    assert (split["activity_type"], split["symbol"], split["qty"]) == ("SPLIT", "AAPL", "10")
    assert split["date"] == sim.clock.today().isoformat() and "price" not in split
    assert await non_trade(sim, name="tiny") == []  # tiny held none


async def test_reverse_split_and_ratio_forms(sim: Simulator) -> None:
    t = trading(sim)
    await t.submit(order("MSFT", 10))
    assert sim.faults.split("MSFT", "1:2") == {"large": {"before": "10", "after": "5"}}
    assert (await t.position("MSFT")).qty == "5"
    sim.faults.split("MSFT", Decimal("0.2"))  # 1:5 reverse: fractional shares are kept
    assert (await t.position("MSFT")).qty == "1"
    sim.faults.split("MSFT", 3)
    assert (await t.position("MSFT")).qty == "3"
    acts = await non_trade(sim, "SPLIT")
    assert [a["qty"] for a in acts] == ["-5", "-4", "2"]
    for bad in ("1:1", "0", "x", "2:0"):
        status, body = await admin(sim, {"action": "split", "symbol": "MSFT", "ratio": bad})
        assert status == 400 and "ratio" in body["message"], bad


# --- options -----------------------------------------------------------------------------------


async def test_expiry_otm_gives_opexp_with_the_contracts_removed(sim: Simulator) -> None:
    t = trading(sim)
    otm = contract(sim, "AAPL", "C", 40)
    await t.submit(order(str(otm), 2))
    status, body = await admin(sim, {"action": "expire_options"})
    assert status == 200
    assert [(r["contract"], r["outcome"]) for r in body["result"]] == [(str(otm), "expired")]
    assert await t.positions() == []
    (exp,) = await non_trade(sim)
    shape(exp)
    # OPEXP: "qty = contracts removed", unsigned (the simulator's least convenient reading).
    assert (exp["activity_type"], exp["symbol"], exp["qty"], exp["net_amount"]) == (
        "OPEXP", str(otm), "2", "0")
    assert exp["date"] == otm.expiry.isoformat()


async def test_exercise_pairs_opexc_with_optrd_at_the_strike(sim: Simulator) -> None:
    t = trading(sim)
    itm = contract(sim, "AAPL", "C", -20, days=14)
    await t.submit(order(str(itm), 2))
    cash = Decimal(str((await t.account()).cash))
    status, body = await admin(sim, {"action": "exercise", "account": "large",
                                     "contract": str(itm)})
    assert status == 200 and body["result"] == {"contract": "0", "underlying": "200"}
    opexc, optrd = await non_trade(sim)
    for a in (opexc, optrd):
        shape(a)
    assert (opexc["activity_type"], opexc["symbol"], opexc["qty"]) == ("OPEXC", str(itm), "-2")
    assert (optrd["activity_type"], optrd["symbol"], optrd["qty"]) == ("OPTRD", "AAPL", "200")
    assert Decimal(optrd["price"]) == itm.strike
    assert Decimal(optrd["net_amount"]) == -200 * itm.strike
    assert opexc["id"] < optrd["id"] and opexc["date"] == sim.clock.today().isoformat()
    (shares,) = await t.positions()
    assert shares.symbol == "AAPL" and shares.qty == "200"
    assert Decimal(shares.avg_entry_price) == itm.strike
    assert Decimal(str((await t.account()).cash)) == cash - 200 * itm.strike
    # Only a long option is exercised.
    status, body = await admin(sim, {"action": "exercise", "account": "large",
                                     "contract": str(itm)})
    assert status == 400 and "holds no option" in body["message"]


def give_short(sim: Simulator, symbol: str, qty: int, account: str = "large") -> None:
    """A short option position, as if written earlier (the simulator's order rules do not
    open short options)."""
    st = sim.engine.states[account]
    st.positions[symbol] = PositionState(symbol, "us_option", stable_uuid("asset", symbol),
                                         Decimal(-qty), Decimal("1.5"))


async def test_assignment_pairs_opasn_with_optrd_and_can_leave_short_shares(
        sim: Simulator) -> None:
    t = trading(sim)
    call = contract(sim, "MSFT", "C", -10, days=7)
    give_short(sim, str(call), 1)
    status, body = await admin(sim, {"action": "assign", "account": "large",
                                     "contract": str(call)})
    assert status == 200 and body["result"] == {"contract": "0", "underlying": "-100"}
    opasn, optrd = await non_trade(sim)
    assert (opasn["activity_type"], opasn["qty"]) == ("OPASN", "1")
    assert (optrd["activity_type"], optrd["symbol"], optrd["qty"]) == ("OPTRD", "MSFT", "-100")
    assert Decimal(optrd["net_amount"]) == 100 * call.strike
    (pos,) = await t.positions()
    assert (pos.symbol, pos.qty) == ("MSFT", "-100")
    # A partial assignment of a put: shares bought at the strike.
    put = contract(sim, "SPY", "P", 10, days=7)
    give_short(sim, str(put), 3)
    sim.faults.assign("large", str(put), qty=2)
    assert (await t.position(str(put))).qty == "-1"
    assert (await t.position("SPY")).qty == "200"


async def test_automatic_expiry_settles_itm_and_otm_by_moneyness(sim: Simulator) -> None:
    t = trading(sim)
    otm = contract(sim, "AAPL", "C", 40)
    itm_call = contract(sim, "AAPL", "C", -20)
    itm_put = contract(sim, "MSFT", "P", 20)  # long put without shares: not exercised
    short_itm = contract(sim, "SPY", "C", -10)
    for c in (otm, itm_call, itm_put):
        await t.submit(order(str(c), 1))
    give_short(sim, str(short_itm), 1)
    done = sim.faults.expire_options(sim.clock.today().isoformat())
    assert {r["contract"]: r["outcome"] for r in done} == {
        str(otm): "expired", str(itm_call): "exercised", str(itm_put): "expired",
        str(short_itm): "assigned"}
    assert {(p.symbol, p.qty) for p in await t.positions()} == {("AAPL", "100"),
                                                                 ("SPY", "-100")}
    kinds = sorted((a["activity_type"], a["symbol"]) for a in await non_trade(sim))
    assert kinds == sorted([("OPEXP", str(otm)), ("OPEXC", str(itm_call)), ("OPTRD", "AAPL"),
                            ("OPEXP", str(itm_put)), ("OPASN", str(short_itm)),
                            ("OPTRD", "SPY")])


async def test_a_held_option_past_expiry_never_gives_a_500(sim: Simulator) -> None:
    t = trading(sim)
    held = contract(sim, "AAPL", "C", 40)
    await t.submit(order(str(held), 2))
    resting = await t.submit(LimitOrderRequest(symbol=str(held), qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.DAY,
                                               limit_price=0.01))
    tomorrow = datetime.combine(held.expiry + timedelta(days=1), time(12), tzinfo=EASTERN)
    sim.clock.freeze(tomorrow.astimezone(UTC))
    # Before the simulator settles it (no market step yet): priced, not a 500.
    (pos,) = await t.positions()
    assert pos.symbol == str(held) and pos.qty == "2" and pos.current_price == "0"
    assert Decimal(str((await t.account()).equity)) > 0
    sim.market.step()  # the engine settles what expired
    assert await t.positions() == []
    assert (await t.order(resting.id)).status.value == "expired"
    (exp,) = await non_trade(sim)
    assert (exp["activity_type"], exp["date"]) == ("OPEXP", held.expiry.isoformat())
    assert (await t.account()).status is not None


async def test_nyse_clock_settles_at_the_expiry_close(sim: Simulator) -> None:
    t = trading(sim)
    sim.clock.set_mode("nyse")
    day = datetime(2026, 11, 23, tzinfo=EASTERN).date()  # a Monday
    sim.clock.freeze(datetime.combine(day, time(10), tzinfo=EASTERN))
    c = OptionSymbol("AAPL", day, "C", Decimal(int(sim.market.price("AAPL")) + 40))
    await t.submit(order(str(c), 1))
    sim.market.step()
    assert len(await t.positions()) == 1  # still the session: not settled
    sim.clock.freeze(datetime.combine(day, time(16, 0, 1), tzinfo=EASTERN))
    sim.market.step()
    assert await t.positions() == []
    assert [a["activity_type"] for a in await non_trade(sim)] == ["OPEXP"]


# --- the activities feed -----------------------------------------------------------------------


async def test_activities_feed_filters_types_dates_and_pages(sim: Simulator) -> None:
    t = trading(sim)
    await t.submit(order("AAPL", 4))
    for _ in range(3):
        sim.faults.split("AAPL", 2)
    everything = await t.get("/account/activities", {"direction": "asc"})
    assert [a["activity_type"] for a in everything] == ["FILL", "SPLIT", "SPLIT", "SPLIT"]
    assert [a["activity_type"] for a in await t.get("/account/activities/FILL", {})] == ["FILL"]
    splits = await t.get("/account/activities/SPLIT", {"direction": "asc"})
    assert [a["qty"] for a in splits] == ["4", "8", "16"]
    page1 = await t.get("/account/activities", {"activity_types": "SPLIT", "page_size": 2,
                                                "direction": "asc"})
    page2 = await t.get("/account/activities", {"activity_types": "SPLIT", "page_size": 2,
                                                "direction": "asc",
                                                "page_token": page1[-1]["id"]})
    assert [a["id"] for a in page1 + page2] == [a["id"] for a in splits]
    desc = await t.get("/account/activities", {"activity_types": "SPLIT"})
    assert [a["id"] for a in desc] == [a["id"] for a in reversed(splits)]
    today = sim.clock.today()
    start = datetime.combine(today, time(0), tzinfo=EASTERN)
    # A non-trade activity has a date, no time: it counts as the start of that day.
    assert len(await t.get("/account/activities/SPLIT", {
        "after": (start - timedelta(seconds=1)).isoformat()})) == 3
    assert await t.get("/account/activities/SPLIT", {"after": start.isoformat()}) == []
    assert len(await t.get("/account/activities/SPLIT", {"date": today.isoformat()})) == 3
    # FILL-only filters leave the non-trade ones out.
    fill_id = everything[0]["order_id"]
    assert [a["activity_type"] for a in await t.get("/account/activities", {
        "order_id": fill_id})] == ["FILL"]
