"""Fills as Alpaca documents them, and no more: the simulator must not share our assumptions.

- The FILL activity id is `<timestamp>::<uuid>`; Alpaca documents no relation between that
  uuid and the stream's `execution_id`, so the simulator draws them independently.
- The stream's `price` is "the average price per share at which the order was filled"
  (the order's average after the execution), not the execution's price.
- The activities endpoints take `order_id` (Alpaca changelog 2026-07-29).
- Fills and activities go on whether or not a stream is connected.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import aiohttp
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from ops.sim import Simulator
from tests.support import eventually

from .conftest import Msg, Recorder, listening_ws, trading

FILL_EVENTS = ("partial_fill", "fill")


def buy(symbol: str, qty: int) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY,
                              time_in_force=TimeInForce.DAY)


def fills_of(rec: Recorder, order_id: str) -> list[dict[str, Any]]:
    return [m["data"] for m in rec.messages
            if m["data"]["event"] in FILL_EVENTS and m["data"]["order"]["id"] == order_id]


async def sim_state(sim: Simulator) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
        sim.rest_url + "/_sim/state"
    ) as resp:
        assert resp.status == 200
        state: dict[str, Any] = await resp.json()
        return state


async def test_activity_ids_share_no_uuid_with_execution_ids(sim: Simulator) -> None:
    rec = await Recorder(sim).start()
    try:
        c = trading(sim)
        orders = [await c.submit(buy("NVDA", 230)), await c.submit(buy("AMD", 40))]
        sim.market.step()
        sim.market.step()
        oids = [str(o.id) for o in orders]

        def all_filled(ms: list[Msg]) -> bool:
            return all("fill" in rec.events(oid) for oid in oids)

        await rec.wait_for(all_filled)
        execs = [f["execution_id"] for oid in oids for f in fills_of(rec, oid)]
        assert len(execs) == 4 and len(set(execs)) == 4
        for e in execs:
            assert str(uuid.UUID(e)) == e
        activities = await c.get("/account/activities/FILL", {"direction": "asc"})
        assert len(activities) == 4
        uids = set()
        for a in activities:
            assert "execution_id" not in a
            stamp, sep, uid = a["id"].partition("::")
            assert sep and len(stamp) == 17 and stamp.isdigit()
            assert str(uuid.UUID(uid)) == uid
            uids.add(uid)
        assert not uids & set(execs)
        # Nothing anywhere (REST, admin ground truth) names a stream execution id, so no
        # consumer can join the two feeds by id.
        state = await sim_state(sim)
        feeds = json.dumps(activities) + json.dumps(state)
        assert not [e for e in execs if e in feeds]
        truth = state["accounts"]["large"]["activities"]
        assert [a["id"] for a in truth] == [a["id"] for a in activities]
        for a in truth:
            assert {"order_id", "cum_qty", "qty", "price", "transaction_time"} <= set(a)
            assert "execution_id" not in a
        # The ids still sort chronologically (documented).
        assert [a["transaction_time"] for a in activities] == sorted(
            a["transaction_time"] for a in activities)
    finally:
        await rec.stop()


async def test_stream_price_is_the_order_average_not_the_execution_price(
    sim: Simulator,
) -> None:
    rec = await Recorder(sim).start()
    try:
        c = trading(sim)
        sim.market.set_price("NVDA", Decimal(100))
        order = await c.submit(buy("NVDA", 230))  # fill_lot 100: fills 100 now
        oid = str(order.id)
        await rec.wait_for(lambda ms: len(fills_of(rec, oid)) == 1)
        sim.market.set_price("NVDA", Decimal(150))  # the next execution is ~50 higher
        sim.market.step()
        await rec.wait_for(lambda ms: len(fills_of(rec, oid)) == 2)
        first, second = fills_of(rec, oid)
        acts = await c.get("/account/activities/FILL", {"direction": "asc", "order_id": oid})
        assert [a["cum_qty"] for a in acts] == ["100", "200"]
        p1, p2 = Decimal(acts[0]["price"]), Decimal(acts[1]["price"])
        assert p2 - p1 > 40  # the two executions were at different prices

        # One execution so far: its price is the average.
        assert Decimal(first["price"]) == p1
        # After the second one the stream's price is the order's average, which is not
        # the price of the execution the event reports (that is only in the activity).
        assert second["event"] == "partial_fill"
        assert second["qty"] == "100" and second["position_qty"] == "200"
        assert second["order"]["filled_qty"] == "200"
        assert second["price"] == second["order"]["filled_avg_price"]
        assert Decimal(second["price"]) == ((p1 + p2) / 2).quantize(Decimal("0.000001"))
        assert Decimal(second["price"]) != p2

        sim.market.step()
        await rec.wait_for(lambda ms: "fill" in rec.events(oid))
        last = fills_of(rec, oid)[-1]
        done = await c.order(order.id)
        assert last["event"] == "fill" and last["qty"] == "30"
        assert last["price"] == last["order"]["filled_avg_price"]
        assert Decimal(last["price"]) == Decimal(str(done.filled_avg_price))
        assert last["order"]["filled_qty"] == "230" and last["position_qty"] == "230"
    finally:
        await rec.stop()


async def test_activities_filter_by_order_id_on_both_endpoints(sim: Simulator) -> None:
    c = trading(sim)
    a = await c.submit(buy("SPY", 250))  # three executions: 100, 100, 50
    b = await c.submit(buy("QQQ", 150))  # two executions, interleaved with a's
    sim.market.step()
    sim.market.step()
    assert (await c.order(a.id)).status == "filled" and (await c.order(b.id)).status == "filled"
    everything = await c.get("/account/activities/FILL", {"direction": "asc"})
    assert len(everything) == 5
    a_id, b_id = str(a.id), str(b.id)
    only_a = await c.get("/account/activities/FILL", {"order_id": a_id, "direction": "asc"})
    assert [x["order_id"] for x in only_a] == [a_id] * 3
    assert [x["cum_qty"] for x in only_a] == ["100", "200", "250"]
    assert [x["id"] for x in only_a] == [x["id"] for x in everything if x["order_id"] == a_id]
    generic = await c.get("/account/activities", {"activity_types": "FILL", "order_id": b_id})
    assert [x["order_id"] for x in generic] == [b_id] * 2
    assert [x["cum_qty"] for x in generic] == ["150", "100"]  # desc by default

    # Combined with paging: page_size and page_token walk only that order's activities.
    page1 = await c.get("/account/activities/FILL", {
        "order_id": a_id, "direction": "asc", "page_size": 2})
    page2 = await c.get("/account/activities", {
        "activity_types": "FILL", "order_id": a_id, "direction": "asc", "page_size": 2,
        "page_token": page1[-1]["id"]})
    assert [x["id"] for x in page1 + page2] == [x["id"] for x in only_a]
    # ...and with after: strictly later than a's first execution.
    later = await c.get("/account/activities/FILL", {
        "order_id": a_id, "after": only_a[0]["transaction_time"], "direction": "asc"})
    assert [x["id"] for x in later] == [x["id"] for x in only_a[1:]]
    # An order with no executions, or none of this account's: nothing.
    assert await c.get("/account/activities/FILL", {"order_id": str(uuid.uuid4())}) == []
    assert await trading(sim, "tiny").get("/account/activities/FILL", {"order_id": a_id}) == []


async def test_fills_and_activities_go_on_with_no_stream_connected(sim: Simulator) -> None:
    c = trading(sim)
    async with listening_ws(sim):
        pass  # a stream came and went...
    await eventually(lambda: "large" not in sim.hub.conns, "large's connection gone",
                     timeout_s=10)
    order = await c.submit(buy("IWM", 230))  # ...and nobody listens while this fills
    sim.market.step()
    sim.market.step()
    done = await c.order(order.id)
    assert done.status == "filled" and done.filled_qty == "230"
    acts = await c.get("/account/activities/FILL", {"order_id": str(order.id),
                                                    "direction": "asc"})
    assert [x["cum_qty"] for x in acts] == ["100", "200", "230"]
    assert (await c.position("IWM")).qty == "230"
    state = await sim_state(sim)
    large = state["accounts"]["large"]
    assert large["stream_connected"] is False and len(large["activities"]) == 3
