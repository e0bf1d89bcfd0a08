"""Every fault knob does what it says (docs/broker-protocol.md section 6), via Python and admin
HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import websockets
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from multidict import CIMultiDict

from ops.sim import SimConfig, Simulator
from tests.support import eventually

from .conftest import Recorder, listening_ws, raw_ws_messages, trading


def buy(symbol: str = "AAPL", qty: int = 1, cid: str | None = None) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY,
                              time_in_force=TimeInForce.DAY, client_order_id=cid)


async def rest(sim: Simulator, method: str, path: str, name: str = "large",
               **kw: Any) -> tuple[int, Any, CIMultiDict[str]]:
    spec = sim.account(name)
    headers = {"APCA-API-KEY-ID": spec.key_id, "APCA-API-SECRET-KEY": spec.secret}
    async with aiohttp.ClientSession() as session, session.request(
        method, sim.rest_url + path, headers=headers, **kw
    ) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None, CIMultiDict(resp.headers)


async def admin(sim: Simulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(
        method, sim.rest_url + path, json=body
    ) as resp:
        return resp.status, await resp.json()


async def test_drop_streams_1011_and_trading_stream_reconnects(sim: Simulator) -> None:
    async with listening_ws(sim, "tiny") as ws:
        assert await sim.faults.drop_streams("tiny") == 1
        with pytest.raises(websockets.ConnectionClosedError) as err:
            await ws.recv()
        assert err.value.rcvd is not None and err.value.rcvd.code == 1011
    rec = await Recorder(sim).start()
    try:
        first = sim.hub.conns["large"]
        await sim.faults.drop_streams()
        await eventually(lambda: sim.hub.connected("large") and sim.hub.conns["large"] is not first,
                         "a new connection for large", timeout_s=10)
        order = await trading(sim).submit(buy())
        await rec.wait_for(lambda ms: "fill" in rec.events(str(order.id)))
    finally:
        await rec.stop()


async def test_drop_streams_tcp_reset(sim: Simulator) -> None:
    async with listening_ws(sim) as ws:
        await sim.faults.drop_streams("large", mode="reset")
        with pytest.raises(websockets.ConnectionClosedError) as err:
            await ws.recv()
        assert err.value.rcvd is None  # no close frame: the TCP connection just died
    with pytest.raises(ValueError, match="drop mode"):
        await sim.faults.drop_streams(mode="gentle")
    with pytest.raises(ValueError, match="unknown simulator account"):
        await sim.faults.drop_streams("nobody")


async def test_mute_answers_pings_and_loses_events_by_default(sim: Simulator) -> None:
    c = trading(sim)
    async with listening_ws(sim) as ws:
        sim.faults.mute("large")
        lost = await c.submit(buy(cid="lost"))
        await asyncio.wait_for(await ws.ping(), 5)  # still alive at the protocol level
        assert sim.hub.faults.muted_buffer["large"]  # the events were held back...
        assert sim.faults.unmute("large") == 0  # ...and are now dropped
        kept = await c.submit(buy(cid="kept"))
        frames = await raw_ws_messages(ws, 2)
        assert {f["data"]["order"]["id"] for f in frames} == {str(kept.id)}
        assert str(lost.id) not in json.dumps(frames)


async def test_unmute_can_deliver_the_queued_events(sim: Simulator) -> None:
    async with listening_ws(sim) as ws:
        sim.faults.mute()
        order = await trading(sim).submit(buy())
        assert sim.faults.unmute(deliver=True) == 2
        frames = await raw_ws_messages(ws, 2)
        assert [f["data"]["event"] for f in frames] == ["new", "fill"]
        assert frames[0]["data"]["order"]["id"] == str(order.id)


@pytest.mark.parametrize(
    ("knob", "expected"),
    [
        ("drop_next_events", ["fill", "new", "fill"]),
        ("duplicate_next_events", ["new", "new", "fill", "new", "fill"]),
        ("reorder_next_events", ["fill", "new", "new", "fill"]),
    ],
)
async def test_event_knobs(sim: Simulator, knob: str, expected: list[str]) -> None:
    c = trading(sim)
    async with listening_ws(sim) as ws:
        n = 2 if knob == "reorder_next_events" else 1
        getattr(sim.faults, knob)(n)
        await c.submit(buy())
        await c.submit(buy())
        frames = await raw_ws_messages(ws, len(expected))
        assert [f["data"]["event"] for f in frames] == expected
        if knob == "duplicate_next_events":
            assert frames[0] == frames[1]


async def test_unknown_event_and_malformed_frame(sim: Simulator) -> None:
    c = trading(sim)
    order = await c.submit(buy())
    async with listening_ws(sim) as ws:
        sim.faults.emit_unknown_event("large")
        sim.faults.emit_malformed_frame("large")
        frame = json.loads(await ws.recv())
        assert frame["data"]["event"] == "order_frozen"
        assert frame["data"]["order"]["id"] == str(order.id)
        bad = await ws.recv()
        with pytest.raises(ValueError):
            json.loads(bad)
    # alpaca-py's stream logs the bad frame, drops it and keeps going.
    rec = await Recorder(sim).start()
    try:
        sim.faults.emit_unknown_event("large", event="order_melted")
        sim.faults.emit_malformed_frame("large")
        later = await c.submit(buy())
        await rec.wait_for(lambda ms: "fill" in rec.events(str(later.id)))
        assert rec.events()[0] == "order_melted"
    finally:
        await rec.stop()


async def test_hang_until_released(sim: Simulator) -> None:
    sim.faults.hang_next(1, path="/v2/account")
    call = asyncio.create_task(rest(sim, "GET", "/v2/account"))
    await eventually(lambda: sim.faults.rest.hung_now == 1, "one hung REST call", timeout_s=10)
    status, _, _ = await rest(sim, "GET", "/v2/clock")  # other paths are not affected
    assert status == 200 and not call.done()
    with pytest.raises(TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as s:
            spec = sim.account("large")
            sim.faults.hang_next(1)
            await s.get(sim.rest_url + "/v2/account", headers={
                "APCA-API-KEY-ID": spec.key_id, "APCA-API-SECRET-KEY": spec.secret})
    assert sim.faults.release_hangs() >= 1
    status, body, _ = await call
    assert status == 200 and body["account_number"] == "PASIM0000001"


async def test_hang_for_a_duration_and_after_processing(sim: Simulator) -> None:
    sim.faults.hang_next(1, duration_s=0.05)
    status, _, _ = await rest(sim, "GET", "/v2/account")
    assert status == 200
    sim.faults.hang_next(1, path="/v2/orders", method="POST", after_processing=True)
    call = asyncio.create_task(rest(sim, "POST", "/v2/orders", json={
        "symbol": "AAPL", "qty": 1, "side": "buy", "type": "market", "time_in_force": "day",
        "client_order_id": "hung"}))
    await eventually(lambda: sim.faults.rest.hung_now == 1, "one hung REST call", timeout_s=10)
    assert "hung" in sim.engine.states["large"].by_client_id  # the order exists already
    sim.faults.release_hangs()
    status, body, _ = await call
    assert status == 200 and body["client_order_id"] == "hung"


async def test_fail_next_429_with_rate_headers(sim: Simulator) -> None:
    sim.faults.fail_next(1, status=429)
    status, body, headers = await rest(sim, "GET", "/v2/account")
    assert status == 429 and body == {"code": 42910000, "message": "rate limit exceeded"}
    assert headers["X-Ratelimit-Remaining"] == "0" and int(headers["X-Ratelimit-Reset"]) > 0
    assert headers["X-Ratelimit-Limit"] == "200"
    sim.faults.fail_next(1, status=429)
    with pytest.raises(APIError) as err:
        await trading(sim, retries=0).account()
    assert err.value.status_code == 429
    assert (await trading(sim).account()).account_number == "PASIM0000001"


async def test_fail_next_with_path_filter(sim: Simulator) -> None:
    sim.faults.fail_next(2, status=500, path="/v2/orders")
    assert (await rest(sim, "GET", "/v2/account"))[0] == 200
    assert (await rest(sim, "GET", "/v2/orders"))[0] == 500
    status, body, _ = await rest(sim, "GET", "/v2/orders")
    assert status == 500 and body["code"] == 50010000
    assert (await rest(sim, "GET", "/v2/orders"))[0] == 200


async def test_504_after_processing_makes_the_retried_post_a_duplicate(sim: Simulator) -> None:
    # alpaca-py retries POST on 504 (docs/broker-protocol.md 1.5): the first attempt created the
    # order.
    sim.faults.fail_next(1, status=504, path="/v2/orders", method="POST", after_processing=True)
    c = trading(sim, retry_wait=0)
    with pytest.raises(APIError) as err:
        await c.submit(buy(cid="ambiguous"))
    assert err.value.status_code == 422 and err.value.code == 40010001
    found = await c.order_by_cid("ambiguous")
    assert found.status == "filled"
    assert len(sim.engine.states["large"].orders) == 1


async def test_rest_and_stream_latency(sim: Simulator) -> None:
    sim.faults.set_rest_latency(0.2)
    started = time.monotonic()
    assert (await rest(sim, "GET", "/v2/clock"))[0] == 200
    assert time.monotonic() - started >= 0.2
    sim.faults.set_rest_latency(0)
    async with listening_ws(sim) as ws:
        sim.faults.set_stream_latency(0.2)
        sent = time.monotonic()
        await trading(sim).submit(buy())
        await raw_ws_messages(ws, 1)
        assert time.monotonic() - sent >= 0.2
    with pytest.raises(ValueError):
        sim.faults.set_rest_latency(-1)


async def test_per_key_rate_limit(sim: Simulator) -> None:
    sim.faults.set_rate_limit(3)
    remaining = []
    for _ in range(3):
        status, _, headers = await rest(sim, "GET", "/v2/clock")
        assert status == 200
        remaining.append(headers["X-Ratelimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    status, body, headers = await rest(sim, "GET", "/v2/clock")
    assert status == 429 and body["code"] == 42910000 and headers["X-Ratelimit-Limit"] == "3"
    assert (await rest(sim, "GET", "/v2/clock", name="tiny"))[0] == 200  # per key


async def test_admin_http_endpoints(sim: Simulator) -> None:
    status, body = await admin(sim, "POST", "/_sim/faults", {"action": "set_clock",
                                                               "mode": "closed"})
    assert status == 200 and body["ok"] is True
    assert (await trading(sim).clock()).is_open is False
    status, body = await admin(sim, "POST", "/_sim/faults", {"action": "fail_next",
                                                               "status": 503})
    assert status == 200 and (await rest(sim, "GET", "/v2/account"))[0] == 503
    status, body = await admin(sim, "POST", "/_sim/faults", {"action": "explode"})
    assert status == 400 and "unknown fault action" in body["message"]
    status, body = await admin(sim, "POST", "/_sim/faults", {"action": "set_clock",
                                                               "mode": "sometimes"})
    assert status == 400 and "clock mode" in body["message"]
    status, body = await admin(sim, "POST", "/_sim/market", {"action": "set_price",
                                                               "symbol": "MSFT", "price": "411"})
    assert status == 200 and sim.market.price("MSFT") == Decimal(411)
    await admin(sim, "POST", "/_sim/faults", {"action": "set_clock", "mode": "open"})
    status, body = await admin(sim, "POST", "/_sim/market", {"action": "step", "n": 3})
    assert status == 200 and body["steps"] == 3
    await trading(sim).submit(buy("MSFT", 2))
    await admin(sim, "POST", "/_sim/faults", {"action": "mute", "account": "tiny"})
    status, state = await admin(sim, "GET", "/_sim/state")
    assert status == 200
    large = state["accounts"]["large"]
    assert large["account"]["account_number"] == "PASIM0000001"
    assert [p["symbol"] for p in large["positions"]] == ["MSFT"]
    assert large["orders"][0]["status"] == "filled" and len(large["activities"]) == 1
    assert state["faults"]["muted"] == ["tiny"] and state["clock"]["mode"] == "open"
    assert sim.account("large").secret not in json.dumps(state)


async def test_clear_lifts_every_fault(sim: Simulator) -> None:
    sim.faults.fail_next(5, status=500)
    sim.faults.mute()
    sim.faults.set_rest_latency(5)
    sim.faults.clear()
    assert (await rest(sim, "GET", "/v2/account"))[0] == 200
    state = sim.faults.state()
    assert state["muted"] == [] and state["fails"] == [] and state["rest_latency_s"] == 0


async def test_restart_keeps_state_and_port(sim: Simulator) -> None:
    c = trading(sim)
    order = await c.submit(buy("SPY", 3))
    rec = await Recorder(sim).start()
    try:
        port, first = sim.port, sim.hub.conns["large"]
        await sim.faults.restart()
        assert sim.port == port
        assert (await c.order(order.id)).filled_qty == "3"
        assert (await c.position("SPY")).qty == "3"
        await eventually(lambda: sim.hub.connected("large") and sim.hub.conns["large"] is not first,
                         "a new connection for large", timeout_s=10)
        later = await c.submit(buy("SPY", 1))
        await rec.wait_for(lambda ms: "fill" in rec.events(str(later.id)))
    finally:
        await rec.stop()


async def test_admin_restart_with_downtime(sim: Simulator) -> None:
    status, body = await admin(sim, "POST", "/_sim/faults", {"action": "restart", "down_s": 0.3})
    assert status == 200
    await eventually(lambda: sim._runner is None, "the server stopped", timeout_s=10)
    with pytest.raises(aiohttp.ClientConnectionError):
        await rest(sim, "GET", "/v2/clock")
    await eventually(lambda: sim._runner is not None, "the server started", timeout_s=10)
    assert (await rest(sim, "GET", "/v2/clock"))[0] == 200


@pytest.mark.integration
async def test_state_file_survives_a_new_simulator(tmp_path: Any) -> None:
    path = tmp_path / "sim.json"
    cfg = SimConfig(seed=3, market_step_s=None, state_path=path)
    async with Simulator(cfg) as first:
        c = trading(first)
        order = await c.submit(buy("AMD", 7, cid="kept"))
        cash = (await c.account()).cash
    assert path.exists()
    async with Simulator(cfg) as second:
        c = trading(second)
        assert (await c.order_by_cid("kept")).id == order.id
        assert (await c.position("AMD")).qty == "7"
        assert (await c.account()).cash == cash
        with pytest.raises(APIError) as err:
            await c.submit(buy("AMD", 1, cid="kept"))
        assert err.value.status_code == 422
    path.write_text("{not json")
    with pytest.raises(ValueError, match="sim.json"):
        Simulator(cfg)
