"""The trade_updates WebSocket, with the real alpaca-py TradingStream and a raw client."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest, ReplaceOrderRequest

from ops.sim import SimConfig, Simulator
from tests.support import eventually

from .conftest import Recorder, raw_ws_messages, trading


def buy(symbol: str, qty: int, cid: str | None = None) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY,
                              time_in_force=TimeInForce.DAY, client_order_id=cid)


def auth_msg(sim: Simulator, name: str = "large", secret: str | None = None) -> str:
    spec = sim.account(name)
    return json.dumps({"action": "authenticate",
                       "data": {"key_id": spec.key_id, "secret_key": secret or spec.secret}})


LISTEN = json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}})


async def test_trading_stream_gets_new_then_fill(sim: Simulator) -> None:
    rec = await Recorder(sim).start()
    try:
        order = await trading(sim).submit(buy("AAPL", 5))
        oid = str(order.id)
        await rec.wait_for(lambda ms: "fill" in rec.events(oid))
        assert rec.events(oid) == ["new", "fill"]
        fill = rec.messages[-1]
        assert fill["stream"] == "trade_updates"
        data = fill["data"]
        assert data["qty"] == "5" and data["position_qty"] == "5"
        assert data["order"]["status"] == "filled" and data["order"]["filled_qty"] == "5"
        assert len(data["execution_id"]) == 36 and data["timestamp"].endswith("Z")
    finally:
        await rec.stop()


async def test_partial_fills_stream_matches_activities(sim: Simulator) -> None:
    rec = await Recorder(sim).start()
    try:
        c = trading(sim)
        order = await c.submit(buy("NVDA", 230))
        oid = str(order.id)
        sim.market.step()
        sim.market.step()
        await rec.wait_for(lambda ms: "fill" in rec.events(oid))
        assert rec.events(oid) == ["new", "partial_fill", "partial_fill", "fill"]
        fills = [m["data"] for m in rec.messages if m["data"]["event"] in ("partial_fill", "fill")]
        assert sum(int(f["qty"]) for f in fills) == 230
        assert [f["position_qty"] for f in fills] == ["100", "200", "230"]
        activities = await c.get("/account/activities/FILL", {"direction": "asc"})
        # Same executions, joined on what Alpaca documents (order, cumulative qty), never
        # on ids: the activity uuid and the stream's execution_id are unrelated.
        assert [(a["order_id"], a["cum_qty"], a["qty"]) for a in activities] == [
            (f["order"]["id"], f["order"]["filled_qty"], f["qty"]) for f in fills]
        assert not {a["id"].split("::")[1] for a in activities} & {
            f["execution_id"] for f in fills}
        assert [f["price"] for f in fills] == [f["order"]["filled_avg_price"] for f in fills]
    finally:
        await rec.stop()


async def test_replace_and_cancel_events(sim: Simulator) -> None:
    rec = await Recorder(sim).start()
    try:
        c = trading(sim)
        old = await c.submit(LimitOrderRequest(symbol="MSFT", qty=2, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.GTC, limit_price=10))
        new = await c.replace(old.id, ReplaceOrderRequest(limit_price=11))
        await c.cancel(new.id)
        await rec.wait_for(lambda ms: "canceled" in rec.events(str(new.id)))
        assert rec.events() == ["new", "replaced", "new", "canceled"]
        replaced = rec.messages[1]["data"]["order"]
        assert replaced["id"] == str(old.id) and replaced["status"] == "replaced"
        assert replaced["replaced_by"] == str(new.id)
    finally:
        await rec.stop()


async def test_accepted_when_closed_then_new_and_fill_at_open(sim: Simulator) -> None:
    rec = await Recorder(sim).start()
    try:
        sim.faults.set_clock("closed")
        order = await trading(sim).submit(buy("QQQ", 1))
        oid = str(order.id)
        await rec.wait_for(lambda ms: rec.events(oid) == ["accepted"])
        sim.faults.set_clock("open")
        await rec.wait_for(lambda ms: "fill" in rec.events(oid))
        assert rec.events(oid) == ["accepted", "new", "fill"]
    finally:
        await rec.stop()


async def test_protocol_no_greeting_binary_frames_and_auth(sim: Simulator) -> None:
    async with websockets.connect(sim.stream_url) as ws:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)  # nothing before the client speaks
        await ws.send(LISTEN)
        early = json.loads(await ws.recv())
        assert early == {"stream": "authorization",
                         "data": {"status": "unauthorized", "action": "listen"}}
        await ws.send(auth_msg(sim))
        raw = await ws.recv()
        assert isinstance(raw, bytes)
        assert json.loads(raw)["data"] == {"status": "authorized", "action": "authenticate"}
        await ws.send(LISTEN)
        ack = await ws.recv()
        assert isinstance(ack, bytes)
        assert json.loads(ack) == {"stream": "listening",
                                   "data": {"streams": ["trade_updates"]}}
        await trading(sim).submit(buy("AAPL", 1))
        frames = await raw_ws_messages(ws, 2)
        assert [f["data"]["event"] for f in frames] == ["new", "fill"]
    async with websockets.connect(sim.stream_url) as ws:
        await ws.send(auth_msg(sim, secret="wrong"))
        reply = json.loads(await ws.recv())
        assert reply["data"]["status"] == "unauthorized"


async def test_second_connection_for_a_key_is_refused_with_429(sim: Simulator) -> None:
    spec = sim.account("large")
    headers = {"APCA-API-KEY-ID": spec.key_id}
    async with websockets.connect(sim.stream_url, additional_headers=headers) as first:
        await first.send(auth_msg(sim))
        await first.recv()
        with pytest.raises(websockets.InvalidStatus) as err:
            async with websockets.connect(sim.stream_url, additional_headers=headers):
                pass
        assert err.value.response.status_code == 429
        # Without the header (alpaca-py sends the key only in the first message) the
        # duplicate is refused at authentication instead.
        async with websockets.connect(sim.stream_url) as second:
            await second.send(auth_msg(sim))
            reply = json.loads(await second.recv())
            assert reply["data"]["status"] == "unauthorized"
            assert reply["data"]["message"] == "connection limit exceeded"
        # Another account is not affected.
        async with websockets.connect(sim.stream_url) as tiny:
            await tiny.send(auth_msg(sim, "tiny"))
            assert json.loads(await tiny.recv())["data"]["status"] == "authorized"
    await _wait_gone(sim, "large")
    async with websockets.connect(sim.stream_url, additional_headers=headers) as again:
        await again.send(auth_msg(sim))
        assert json.loads(await again.recv())["data"]["status"] == "authorized"


async def test_reap_delay_keeps_the_slot_busy(sim: Simulator) -> None:
    sim.faults.set_reap_delay(30)
    spec = sim.account("large")
    headers = {"APCA-API-KEY-ID": spec.key_id}
    async with websockets.connect(sim.stream_url, additional_headers=headers) as ws:
        await ws.send(auth_msg(sim))
        await ws.recv()
    await _wait_gone(sim, "large")
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(sim.stream_url, additional_headers=headers):
            pass
    assert err.value.response.status_code == 429
    sim.faults.set_reap_delay(0)
    sim.hub._reserved_until.clear()
    async with websockets.connect(sim.stream_url, additional_headers=headers) as ws:
        await ws.send(auth_msg(sim))
        assert json.loads(await ws.recv())["data"]["status"] == "authorized"


async def _wait_gone(sim: Simulator, name: str) -> None:
    await eventually(lambda: name not in sim.hub.conns, f"{name}'s connection gone",
                     timeout_s=10)


async def test_events_while_nobody_listens_are_lost(sim: Simulator) -> None:
    await trading(sim).submit(buy("IWM", 1, cid="before"))
    rec = await Recorder(sim).start()
    try:
        await trading(sim).submit(buy("IWM", 1, cid="after"))
        await rec.wait_for(lambda ms: len(ms) == 2)
        cids = {m["data"]["order"]["client_order_id"] for m in rec.messages}
        assert cids == {"after"}
    finally:
        await rec.stop()



async def test_rejected_downstream_after_a_200(sim: Simulator) -> None:
    rec = await Recorder(sim).start()
    try:
        sim.faults.reject_next_orders(1, account="large")
        c = trading(sim)
        order = await c.submit(buy("AAPL", 1))
        assert order.status == "new"
        sim.market.step()
        oid = str(order.id)
        await rec.wait_for(lambda ms: "rejected" in rec.events(oid))
        assert rec.events(oid) == ["new", "rejected"]
        rejected = await c.order(order.id)
        assert rejected.status == "rejected" and rejected.failed_at is not None
        assert rejected.filled_qty == "0" and await c.positions() == []
        later = await c.submit(buy("AAPL", 1))  # only the next one
        assert later.status == "filled"
    finally:
        await rec.stop()


@pytest.mark.integration
async def test_timer_driven_partial_fills_reach_the_stream() -> None:
    async with Simulator(SimConfig(seed=5, market_step_s=0.01, fill_lot=40)) as s:
        rec = await Recorder(s).start()
        try:
            c = trading(s)
            order = await c.submit(buy("QQQ", 130))
            oid = str(order.id)
            await rec.wait_for(lambda ms: "fill" in rec.events(oid))  # no manual steps
            fills = [m["data"] for m in rec.messages
                     if m["data"]["event"] in ("partial_fill", "fill")]
            assert [f["qty"] for f in fills] == ["40", "40", "40", "10"]
            activities = await c.get("/account/activities/FILL", {"direction": "asc"})
            assert [a["cum_qty"] for a in activities] == [
                f["order"]["filled_qty"] for f in fills]
            assert (await c.position("QQQ")).qty == "130"
        finally:
            await rec.stop()
