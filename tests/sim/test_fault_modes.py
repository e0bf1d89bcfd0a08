"""The persistent and timed stream fault modes, observed through real WebSocket clients.

set_stream_chaos (random duplicates and reorderings, seeded), drop_every (periodic
drops), mute(for_s=...) (a stall that ends by itself) and refuse_auth (the stream rejects
a key REST accepts); each via Python and the admin endpoint, reported by state(),
lifted by clear() and ended with the simulator.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiohttp
import pytest
import websockets
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from ops.sim import SimConfig, Simulator
from ops.sim.chaos import HOLD_S
from tests.support import eventually

from .conftest import Msg, Recorder, listening_ws, raw_ws_messages, trading

REFUSED = {"stream": "authorization",
           "data": {"status": "unauthorized", "action": "authenticate",
                    "message": "access key verification failed"}}


def buy(cid: str | None = None, qty: int = 1) -> MarketOrderRequest:
    return MarketOrderRequest(symbol="AAPL", qty=qty, side=OrderSide.BUY,
                              time_in_force=TimeInForce.DAY, client_order_id=cid)


def burst(sim: Simulator, prefix: str, n: int, name: str = "large") -> list[tuple[str, str]]:
    """Submit n one-share market orders inside this loop step (no await between them), so
    every trade update is published before any timer can fire. Each order gives `new` then
    `fill`; returns the published (client_order_id, event) sequence."""
    st = sim.engine.states[name]
    for i in range(n):
        sim.engine.submit(st, {"symbol": "AAPL", "qty": 1, "side": "buy", "type": "market",
                               "time_in_force": "day", "client_order_id": f"{prefix}{i}"})
    return [(f"{prefix}{i}", ev) for i in range(n) for ev in ("new", "fill")]


def key(frame: Msg) -> tuple[str, str]:
    return frame["data"]["order"]["client_order_id"], frame["data"]["event"]


async def admin(sim: Simulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(
        method, sim.rest_url + path, json=body
    ) as resp:
        return resp.status, await resp.json()


def reorder_model(n: int, seed: int, reorder: float) -> tuple[list[int], int]:
    """Where a burst of n events should land with duplicate=0 (a held event goes out right
    after the next event that is not held; what is still held at the end is flushed), and
    how many are held."""
    rng = random.Random(seed)
    out: list[int] = []
    held: list[int] = []
    n_held = 0
    for i in range(n):
        rng.random()  # the duplicate draw (p = 0: never)
        if rng.random() < reorder:
            held.append(i)
            n_held += 1
        else:
            out += [i, *held]
            held.clear()
    return out + held, n_held


# -- set_stream_chaos ----------------------------------------------------------------------

async def test_chaos_reorder_follows_the_seed_and_loses_nothing(sim: Simulator) -> None:
    seed = 4
    expected_order, n_held = reorder_model(20, seed, 0.4)
    assert expected_order != sorted(expected_order)  # the seed does reorder something
    async with listening_ws(sim) as ws:
        assert sim.faults.set_stream_chaos(reorder=0.4, account="large", seed=seed) == seed
        published = burst(sim, "a", 10)
        frames = await raw_ws_messages(ws, 20)
        assert [key(f) for f in frames] == [published[i] for i in expected_order]
        # The same seed again gives the same pattern on new events (reproducible).
        sim.faults.set_stream_chaos(reorder=0.4, account="large", seed=seed)
        again = burst(sim, "b", 10)
        frames = await raw_ws_messages(ws, 20)
        assert [key(f) for f in frames] == [again[i] for i in expected_order]
        chaos = sim.faults.state()["stream_chaos"]
        assert chaos["reordered"] == 2 * n_held
        assert chaos["held"] == {} and chaos["duplicated"] == 0


async def test_chaos_duplicates_come_later_and_identical(sim: Simulator) -> None:
    seed, p = 9, 0.5
    rng = random.Random(seed)
    dup_draws = []
    for _ in range(20):
        dup_draws.append(rng.random() < p)
        rng.random()  # the reorder draw (p = 0: never)
    async with listening_ws(sim) as ws:
        sim.faults.set_stream_chaos(duplicate=p, seed=seed)
        published = burst(sim, "d", 10)
        n_frames = 20 + sum(dup_draws)
        assert 20 < n_frames < 40
        raw: list[bytes] = []
        async with asyncio.timeout(5):
            for _ in range(n_frames):
                msg = await ws.recv()
                assert isinstance(msg, bytes)
                raw.append(msg)
    keys = [key(json.loads(r)) for r in raw]
    firsts = [i for i, k in enumerate(keys) if k not in keys[:i]]
    assert [keys[i] for i in firsts] == published  # originals keep their order
    copied = {keys[i] for i in range(len(keys)) if i not in firsts}
    assert copied == {published[i] for i, d in enumerate(dup_draws) if d}
    for k in copied:
        first, second = (i for i, x in enumerate(keys) if x == k)
        # At least one other frame in between, when there is one: the last event's copy
        # has nothing to follow and goes out after the hold bound.
        assert second - first >= 2 or k == published[-1]
        assert raw[first] == raw[second]  # the same event (same execution_id), twice
    assert sim.faults.state()["stream_chaos"]["duplicated"] == len(copied)


async def test_chaos_holds_no_longer_than_the_bound(sim: Simulator) -> None:
    async with listening_ws(sim) as ws:
        sim.faults.set_stream_chaos(reorder=1.0, seed=1)  # everything held, nothing after
        held_at = time.monotonic()
        published = burst(sim, "h", 1)
        assert sim.faults.state()["stream_chaos"]["held"] == {"large": 2}
        frames = await raw_ws_messages(ws, 2, within_s=5)
        assert time.monotonic() - held_at >= HOLD_S * 0.9
        assert [key(f) for f in frames] == published  # flushed in the order held
        # Turning the mode off sends what is held at once.
        burst(sim, "o", 1)
        assert sim.faults.state()["stream_chaos"]["held"] == {"large": 2}
        sim.faults.set_stream_chaos(0, 0)
        assert sim.faults.state()["stream_chaos"]["held"] == {}
        assert [key(f) for f in await raw_ws_messages(ws, 2)] == [("o0", "new"), ("o0", "fill")]
        assert sim.faults.state()["stream_chaos"]["settings"] == {}


async def test_chaos_is_per_account(sim: Simulator) -> None:
    sim.faults.set_stream_chaos(duplicate=1.0, reorder=1.0, account="tiny", seed=3)
    async with listening_ws(sim) as ws:
        published = burst(sim, "p", 3)
        frames = await raw_ws_messages(ws, 6)
        assert [key(f) for f in frames] == published
        # Nothing else comes for "large": the next frame is a marker sent after the burst.
        sim.faults.emit_unknown_event("large", event="marker")
        assert json.loads(await ws.recv())["data"]["event"] == "marker"
    # An account switched off under an all-accounts setting stays off.
    sim.faults.set_stream_chaos(duplicate=1.0, seed=3)
    sim.faults.set_stream_chaos(0, 0, account="large")
    async with listening_ws(sim) as ws:
        published = burst(sim, "q", 1)
        assert [key(f) for f in await raw_ws_messages(ws, 2)] == published
        sim.faults.emit_unknown_event("large", event="marker")
        assert json.loads(await ws.recv())["data"]["event"] == "marker"
    assert sim.faults.state()["stream_chaos"]["settings"] == {
        "*": {"duplicate": 1.0, "reorder": 0.0}, "large": {"duplicate": 0.0, "reorder": 0.0}}


async def test_chaos_seen_by_alpaca_trading_stream(sim: Simulator) -> None:
    rec = await Recorder(sim).start()
    try:
        sim.faults.set_stream_chaos(duplicate=1.0, seed=2)
        order = await trading(sim).submit(buy())
        oid = str(order.id)
        await rec.wait_for(lambda ms: rec.events(oid).count("fill") == 2)
        assert rec.events(oid) == ["new", "fill", "new", "fill"]
        fills = [m for m in rec.messages if m["data"]["event"] == "fill"]
        assert fills[0] == fills[1]  # one execution delivered twice: same execution_id
    finally:
        sim.faults.clear()
        await rec.stop()


async def test_chaos_admin_validation_and_clear(sim: Simulator) -> None:
    status, body = await admin(sim, "POST", "/_sim/faults", {
        "action": "set_stream_chaos", "duplicate": 0.25, "reorder": 0.5, "account": "tiny",
        "seed": 11})
    assert status == 200 and body["result"] == 11
    status, state = await admin(sim, "GET", "/_sim/state")
    chaos = state["faults"]["stream_chaos"]
    assert chaos["settings"] == {"tiny": {"duplicate": 0.25, "reorder": 0.5}}
    assert chaos["seed"] == 11
    status, body = await admin(sim, "POST", "/_sim/faults", {
        "action": "set_stream_chaos", "duplicate": 1.5})
    assert status == 400 and "probability" in body["message"]
    with pytest.raises(ValueError, match="unknown simulator account"):
        sim.faults.set_stream_chaos(0.1, account="nobody")
    drawn = sim.faults.set_stream_chaos(0.1)  # no seed: one is drawn and reported
    assert sim.faults.state()["stream_chaos"]["seed"] == drawn
    sim.faults.clear()
    assert sim.faults.state()["stream_chaos"]["settings"] == {}


# -- drop_every ----------------------------------------------------------------------------

async def closed_by_server(sim: Simulator, name: str = "large", within_s: float = 5) -> Any:
    """Connect, authenticate and listen, then read until the server ends the connection;
    the close frame received (None for a TCP reset). A drop may hit at any point."""
    await eventually(lambda: name not in sim.hub.conns, "the previous connection gone",
                     timeout_s=10)
    spec = sim.account(name)
    async with websockets.connect(sim.stream_url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as err:
            async with asyncio.timeout(within_s):
                await ws.send(json.dumps({"action": "authenticate", "data": {
                    "key_id": spec.key_id, "secret_key": spec.secret}}))
                await ws.send(json.dumps({"action": "listen",
                                          "data": {"streams": ["trade_updates"]}}))
                while True:
                    reply = json.loads(await ws.recv())
                    assert reply["data"].get("status") != "unauthorized", reply
        return err.value.rcvd


@pytest.mark.parametrize("mode", ["1011", "reset"])
async def test_drop_every_drops_one_account_until_stopped(sim: Simulator, mode: str) -> None:
    async with listening_ws(sim, "tiny") as tiny:
        sim.faults.drop_every(0.2, account="large", mode=mode)
        assert sim.faults.state()["drop_every"] == {"large": {"seconds": 0.2, "mode": mode}}
        for _ in range(2):  # again and again, not once
            rcvd = await closed_by_server(sim)
            if mode == "reset":
                assert rcvd is None
            else:
                assert rcvd is not None and rcvd.code == 1011
        await asyncio.wait_for(await tiny.ping(), 5)  # the other account is left alone
        assert "tiny" in sim.hub.conns
        task = sim.faults._droppers["large"][0]
        sim.faults.drop_every(0, account="large")
        await eventually(task.done, "the dropper task done", timeout_s=10)
        assert task.cancelled() and sim.faults.state()["drop_every"] == {}


async def test_drop_every_all_accounts_via_admin_and_alpaca_stream_reconnects(
    sim: Simulator,
) -> None:
    with pytest.raises(ValueError, match="drop mode"):
        sim.faults.drop_every(1, mode="gentle")
    rec = await Recorder(sim).start()
    try:
        seen = [sim.hub.conns["large"]]
        status, _ = await admin(sim, "POST", "/_sim/faults",
                                {"action": "drop_every", "seconds": 0.3})
        assert status == 200
        assert sim.faults.state()["drop_every"] == {"*": {"seconds": 0.3, "mode": "1011"}}

        def reconnected() -> bool:
            conn = sim.hub.conns.get("large")
            if conn is not None and conn.listening and conn is not seen[-1]:
                seen.append(conn)
            return len(seen) >= 3

        await eventually(reconnected, "dropped twice, back twice", timeout_s=20)
        await admin(sim, "POST", "/_sim/faults", {"action": "drop_every", "seconds": 0})
        assert sim.faults.state()["drop_every"] == {}
        await sim.wait_stream("large", within_s=15)
        order = await trading(sim).submit(buy())
        await rec.wait_for(lambda ms: "fill" in rec.events(str(order.id)), within_s=10)
    finally:
        await rec.stop()


# -- mute(for_s) ---------------------------------------------------------------------------

async def test_mute_for_a_duration_ends_by_itself_and_drops_what_was_held(
    sim: Simulator,
) -> None:
    c = trading(sim)
    async with listening_ws(sim) as ws:
        sim.faults.mute("large", for_s=0.3)
        assert 0 < sim.faults.state()["mute_for_s"]["large"] <= 0.3
        lost = await c.submit(buy("lost"))
        await asyncio.wait_for(await ws.ping(), 5)  # still answering pings
        assert sim.hub.faults.muted_buffer["large"]
        await eventually(lambda: sim.faults.state()["muted"] == [], "the mute lifted",
                         timeout_s=5)
        assert "large" not in sim.hub.faults.muted_buffer  # dropped, not delivered
        assert sim.faults.state()["mute_for_s"] == {}
        kept = await c.submit(buy("kept"))
        frames = await raw_ws_messages(ws, 2)
        assert {f["data"]["order"]["id"] for f in frames} == {str(kept.id)}
        assert str(lost.id) not in json.dumps(frames)


async def test_mute_timers_unmute_and_remute(sim: Simulator) -> None:
    sim.faults.mute("large", for_s=30)
    assert sim.faults.unmute("large") == 0
    assert sim.faults.state()["mute_for_s"] == {} and sim.faults.state()["muted"] == []
    sim.faults.mute("large", for_s=0.05)
    sim.faults.mute("large")  # muted again with no duration: stays muted
    assert sim.faults.state()["mute_for_s"] == {}
    # The all-accounts mute ending by itself leaves an account muted on its own muted.
    sim.faults.mute("tiny")
    status, _ = await admin(sim, "POST", "/_sim/faults", {"action": "mute", "for_s": 0.1})
    assert status == 200 and set(sim.faults.state()["mute_for_s"]) == {"*"}
    await eventually(lambda: "*" not in sim.faults.state()["muted"], "the timed mute lifted",
                     timeout_s=5)
    assert sim.faults.state()["muted"] == ["large", "tiny"]
    with pytest.raises(ValueError):
        sim.faults.mute(for_s=-1)


# -- refuse_auth ---------------------------------------------------------------------------

async def test_refuse_auth_rejects_the_stream_but_not_rest(sim: Simulator) -> None:
    c = trading(sim)
    async with listening_ws(sim) as already:
        sim.faults.refuse_auth("large")
        assert sim.faults.state()["refuse_auth"] == ["large"]
        order = await c.submit(buy())  # REST still accepts the key...
        frames = await raw_ws_messages(already, 2)  # ...and a live connection keeps going
        assert [f["data"]["event"] for f in frames] == ["new", "fill"]
        assert frames[0]["data"]["order"]["id"] == str(order.id)
    await eventually(lambda: "large" not in sim.hub.conns, "large's connection gone",
                     timeout_s=10)
    spec = sim.account("large")
    async with websockets.connect(sim.stream_url) as ws:
        await ws.send(json.dumps({"action": "authenticate",
                                  "data": {"key_id": spec.key_id, "secret_key": spec.secret}}))
        assert json.loads(await ws.recv()) == REFUSED
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert sim.faults.state()["refused_stream_auths"] == 1
    assert (await c.account()).account_number == "PASIM0000001"
    async with listening_ws(sim, "tiny"):
        pass  # other accounts authenticate
    sim.faults.refuse_auth("large", on=False)
    async with listening_ws(sim):
        pass


async def test_refuse_auth_seen_by_alpaca_trading_stream(sim: Simulator) -> None:
    status, _ = await admin(sim, "POST", "/_sim/faults", {"action": "refuse_auth"})
    assert status == 200 and sim.faults.state()["refuse_auth"] == ["*"]
    rec = Recorder(sim)
    starting = asyncio.create_task(rec.start())
    try:
        await eventually(lambda: sim.faults.state()["refused_stream_auths"] >= 1,
                         "a refused stream auth", timeout_s=10)
        assert not sim.hub.connected("large") and not starting.done()
        await admin(sim, "POST", "/_sim/faults", {"action": "refuse_auth", "on": False})
        assert sim.faults.state()["refuse_auth"] == []
        await starting  # alpaca-py retries, and now gets in
        order = await trading(sim).submit(buy())
        await rec.wait_for(lambda ms: "fill" in rec.events(str(order.id)))
    finally:
        if not starting.done():
            starting.cancel()
        await rec.stop()


# -- lifecycle -----------------------------------------------------------------------------

async def test_clear_lifts_the_timed_and_persistent_modes(sim: Simulator) -> None:
    sim.faults.drop_every(5)
    sim.faults.mute("tiny", for_s=30)
    sim.faults.refuse_auth()
    sim.faults.set_stream_chaos(duplicate=0.5, reorder=0.5)
    task = sim.faults._droppers["*"][0]
    state = sim.faults.state()
    assert state["drop_every"] and state["mute_for_s"] and state["refuse_auth"]
    assert state["stream_chaos"]["settings"]
    sim.faults.clear()
    state = sim.faults.state()
    assert state["drop_every"] == {} and state["mute_for_s"] == {} and state["muted"] == []
    assert state["refuse_auth"] == [] and state["stream_chaos"]["settings"] == {}
    await eventually(task.done, "the dropper task done", timeout_s=10)
    assert task.cancelled()
    async with listening_ws(sim) as ws:
        published = burst(sim, "c", 2)
        assert [key(f) for f in await raw_ws_messages(ws, 4)] == published


@pytest.mark.integration
async def test_timed_faults_end_with_the_simulator() -> None:
    s = Simulator(SimConfig(seed=7, market_step_s=None))
    await s.start()
    try:
        s.faults.drop_every(0.1)
        s.faults.mute(for_s=30)
        task = s.faults._droppers["*"][0]
    finally:
        await s.stop()
    assert task.cancelled()
    assert s.faults.state()["mute_for_s"] == {} and s.faults.state()["drop_every"] == {}
