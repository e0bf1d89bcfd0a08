"""TradeStream against the real simulator's trade_updates WebSocket (alpaca-py's
TradingStream underneath): delivery, tolerant parsing, reconnect hook, clean stop, and
the connectivity state machine (connecting / authenticating / connected / refused /
disconnected) as it really happens: drops, refused authentication, the one-connection-
per-key limit, forced reconnects, the backoff reset of a lasting connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from ops.broker import Broker, TradeStream
from ops.broker.stream import (
    Connectivity,
    StreamRefused,
    StreamState,
    classify_failure,
    refusal_kind,
)
from ops.core.models import OrderRequest, Side, TradeUpdate
from ops.sim import Simulator
from tests.frames import burst_fill
from tests.support import eventually

from .conftest import creds, endpoints
from .test_orders import limit_buy


@dataclass
class Recorder:
    updates: list[TradeUpdate] = field(default_factory=list)
    bad: list[tuple[object, str]] = field(default_factory=list)
    connects: int = 0
    fail_next_update: bool = False

    async def on_update(self, u: TradeUpdate) -> None:
        if self.fail_next_update:
            self.fail_next_update = False
            raise RuntimeError("handler bug")
        self.updates.append(u)

    async def on_bad_message(self, raw: object, error: str) -> None:
        self.bad.append((raw, error))

    async def on_connect(self) -> None:
        self.connects += 1

    def events(self, order_id: str) -> list[str]:
        return [u.event for u in self.updates if u.order.id == order_id]


@pytest.fixture
async def stream(sim: Simulator) -> AsyncIterator[tuple[TradeStream, Recorder]]:
    rec = Recorder()
    ts = TradeStream(endpoints(sim), creds(sim, "large"), rec.on_update, rec.on_bad_message,
                     rec.on_connect)
    await ts.start()
    try:
        await eventually(lambda: rec.connects == 1, "first connect")
        yield ts, rec
    finally:
        await ts.stop()


async def buy_market(broker: Broker, cid: str, qty: int = 5) -> str:
    res = await broker.submit_order(OrderRequest("AAPL", Side.BUY, cid, qty=Decimal(qty)))
    assert res.outcome == "accepted" and res.order is not None, res
    return res.order.id


async def test_new_then_fill_as_trade_updates(stream: tuple[TradeStream, Recorder],
                                              broker: Broker) -> None:
    ts, rec = stream
    oid = await buy_market(broker, "s-fill")
    await eventually(lambda: "fill" in rec.events(oid), "fill event")
    events = rec.events(oid)
    assert events.index("new") < events.index("fill")
    fill = next(u for u in rec.updates if u.order.id == oid and u.event == "fill")
    assert fill.execution_id and fill.event_key == f"fill:{oid}:5"  # order + cumulative
    assert fill.qty == Decimal(5) and fill.price is not None and fill.position_qty == Decimal(5)
    assert fill.order.status == "filled" and fill.order.client_order_id == "s-fill"
    new = next(u for u in rec.updates if u.order.id == oid and u.event == "new")
    assert new.event_key == f"{oid}:new:{new.timestamp.isoformat()}"
    c = ts.counters
    assert c.updates >= 2 and c.messages >= c.updates and c.bad_messages == 0
    assert c.connects == 1 and c.last_message_monotonic is not None

    # The REST truth matches what the stream delivered, by fill identity (activity ids
    # and execution ids are unrelated, as on Alpaca).
    stream_fills = {(u.order.id, u.fill_cum) for u in rec.updates
                    if u.event in ("fill", "partial_fill")}
    rest_fills = {(f.order_id, f.cum_qty) for f in await broker.list_fills()}
    assert stream_fills == rest_fills and len(rest_fills) == 1


async def test_unknown_event_and_malformed_frame_are_reported_and_stream_goes_on(
    sim: Simulator, stream: tuple[TradeStream, Recorder], broker: Broker
) -> None:
    ts, rec = stream
    res = await broker.submit_order(limit_buy("s-unk"))
    assert res.order is not None
    order_id = res.order.id
    await eventually(lambda: "new" in rec.events(order_id), "new event")

    sim.faults.emit_unknown_event("large", event="order_frozen", order_id=res.order.id)
    sim.faults.emit_malformed_frame("large")
    await eventually(lambda: len(rec.bad) == 2, "two bad-message reports")
    errors = [e for _, e in rec.bad]
    assert "unknown event 'order_frozen'" in errors[0]
    assert "malformed frame" in errors[1] and isinstance(rec.bad[1][0], bytes)
    # The unknown event is still delivered as-is: its order state must not be lost.
    assert "order_frozen" in rec.events(res.order.id)

    oid = await buy_market(broker, "s-after")
    await eventually(lambda: "fill" in rec.events(oid), "fill after bad frames")
    assert ts.counters.bad_messages == 2 and ts.counters.connects == 1


async def test_handler_exception_is_reported_and_never_kills_stream(
    stream: tuple[TradeStream, Recorder], broker: Broker
) -> None:
    ts, rec = stream
    rec.fail_next_update = True
    oid = await buy_market(broker, "s-bug")
    await eventually(lambda: "fill" in rec.events(oid), "fill after a failing handler")
    assert len(rec.bad) == 1
    raw, error = rec.bad[0]
    assert "on_update failed" in error and "RuntimeError: handler bug" in error
    assert isinstance(raw, dict) and raw["data"]["order"]["id"] == oid
    assert ts.counters.connects == 1


async def test_dropped_connection_calls_on_connect_again(
    sim: Simulator, stream: tuple[TradeStream, Recorder], broker: Broker
) -> None:
    ts, rec = stream
    assert await sim.faults.drop_streams("large") == 1
    await eventually(lambda: rec.connects == 2, "on_connect after the drop")
    assert ts.counters.connects == 2
    # And the new connection delivers.
    oid = await buy_market(broker, "s-reconn")
    await eventually(lambda: "fill" in rec.events(oid), "fill on the new connection")


async def test_on_connect_failure_is_counted_and_stream_keeps_running(
    sim: Simulator, broker: Broker
) -> None:
    rec = Recorder()

    async def failing_connect() -> None:
        rec.connects += 1
        raise RuntimeError("backfill failed")

    ts = TradeStream(endpoints(sim), creds(sim, "large"), rec.on_update, rec.on_bad_message,
                     failing_connect)
    await ts.start()
    try:
        await eventually(lambda: rec.connects == 1, "connect")
        oid = await buy_market(broker, "s-hookfail")
        await eventually(lambda: "fill" in rec.events(oid), "fill despite failing hook")
        assert ts.counters.connect_hook_errors == 1
    finally:
        await ts.stop()


async def test_stop_is_idempotent_and_ends_the_task(sim: Simulator) -> None:
    rec = Recorder()
    ts = TradeStream(endpoints(sim), creds(sim, "large"), rec.on_update, rec.on_bad_message,
                     rec.on_connect)
    await ts.stop()  # before start: nothing to do
    ts2 = TradeStream(endpoints(sim), creds(sim, "large"), rec.on_update, rec.on_bad_message,
                      rec.on_connect)
    await ts2.start()
    await eventually(lambda: rec.connects == 1, "connect")
    await ts2.stop()
    await ts2.stop()
    assert ts2.task is not None and ts2.task.done() and not ts2.task.cancelled()
    await eventually(lambda: sim.faults.state()["streams"] == [], "server saw the close")
    with pytest.raises(RuntimeError, match="already started or stopped"):
        await ts2.start()


async def test_stop_right_after_start(sim: Simulator) -> None:
    rec = Recorder()
    ts = TradeStream(endpoints(sim), creds(sim, "large"), rec.on_update, rec.on_bad_message)
    await ts.start()
    await asyncio.wait_for(ts.stop(grace_s=5.0), 10.0)
    # Ended by the stop request, not by the cancel fallback.
    assert ts.task is not None and ts.task.done() and not ts.task.cancelled()


async def test_forced_reconnect_of_a_muted_stream(
    sim: Simulator, stream: tuple[TradeStream, Recorder], broker: Broker
) -> None:
    ts, rec = stream
    sim.faults.mute("large")  # connected, answering pings, sending nothing (section 6.1)
    assert await ts.reconnect() is True
    await eventually(lambda: rec.connects == 2, "on_connect after a forced reconnect")
    snap = ts.connectivity()
    assert snap.forced_reconnects == 1 and snap.drops == 0  # ours, not the broker's
    assert snap.connected and snap.drop_times == ()
    sim.faults.unmute("large")
    oid = await buy_market(broker, "s-unmuted")
    await eventually(lambda: "fill" in rec.events(oid), "fill after the forced reconnect")


async def test_simulator_restart_reconnects_and_calls_on_connect(
    sim: Simulator, stream: tuple[TradeStream, Recorder], broker: Broker
) -> None:
    ts, rec = stream
    await sim.restart(down_s=0.5)
    await eventually(lambda: rec.connects == 2, "on_connect after the broker came back",
                     timeout_s=30.0)
    oid = await buy_market(broker, "s-restart")
    await eventually(lambda: "fill" in rec.events(oid), "fill after the restart")


async def test_bad_keys_never_connect_and_are_counted(sim: Simulator) -> None:
    from ops.runtime.credentials import Credentials

    rec = Recorder()
    ts = TradeStream(endpoints(sim), Credentials("x", "large", "badkey1234", "badsecret1234"),
                     rec.on_update, rec.on_bad_message, rec.on_connect)
    await ts.start()
    try:
        await eventually(lambda: ts.counters.connect_failures >= 1, "a failed connect")
        assert rec.connects == 0 and ts.counters.connects == 0
        err = ts.counters.last_connect_error or ""
        assert "authenticate" in err and "badkey1234" not in err and "badsecret" not in err
        snap = ts.connectivity()
        assert snap.state is StreamState.REFUSED and snap.refusal_kind == "auth"
        assert snap.refusal == "unauthorized: access key verification failed"
    finally:
        await ts.stop()


async def test_partial_fills_match_rest_fills(stream: tuple[TradeStream, Recorder],
                                              broker: Broker) -> None:
    _, rec = stream
    oid = await buy_market(broker, "s-partial", qty=250)  # fill_lot=100: 100 + 100 + 50
    await eventually(lambda: "fill" in rec.events(oid), "final fill")
    execs = [u for u in rec.updates if u.order.id == oid and u.event in ("partial_fill", "fill")]
    assert [u.event for u in execs] == ["partial_fill", "partial_fill", "fill"]
    assert [u.qty for u in execs] == [Decimal(100), Decimal(100), Decimal(50)]
    assert [u.order.filled_qty for u in execs] == [Decimal(100), Decimal(200), Decimal(250)]
    rest = await broker.list_fills(order_id=oid)
    assert [(f.order_id, f.cum_qty, f.qty) for f in rest] == [
        (u.order.id, u.fill_cum, u.qty) for u in execs
    ]
    # The stream's price is the order's average after the fill (documented), the
    # activity's the execution's; the activity ids say nothing of execution ids.
    assert [u.price for u in execs] == [u.order.filled_avg_price for u in execs]
    assert not {u.execution_id for u in execs} & {f.id.split("::")[-1] for f in rest}


async def test_duplicate_delivery_repeats_the_event_key(
    sim: Simulator, stream: tuple[TradeStream, Recorder], broker: Broker
) -> None:
    _, rec = stream
    sim.faults.duplicate_next_events(2, account="large")
    oid = await buy_market(broker, "s-dup")
    await eventually(lambda: rec.events(oid).count("fill") == 2, "duplicated fill")
    keys = [u.event_key for u in rec.updates if u.order.id == oid]
    assert len(keys) == 4 and len(set(keys)) == 2  # new x2, fill x2: two distinct keys


async def test_a_burst_arrives_whole_in_order_with_each_frames_text(
    sim: Simulator, stream: tuple[TradeStream, Recorder]
) -> None:
    ts, rec = stream
    n = 3000  # several times the socket's queue (max_queue 1024)
    frames = [burst_fill(i) for i in range(n)]
    seen_while_receiving: list[int] = []

    async def other_task() -> None:  # shares the loop with the stream, like the writer
        while len(rec.updates) < n:
            seen_while_receiving.append(len(rec.updates))
            await asyncio.sleep(0)

    other = asyncio.create_task(other_task())
    for f in frames:
        sim.hub.deliver("large", f, faults=False)
    await eventually(lambda: len(rec.updates) == n, "the whole burst", timeout_s=60.0)
    await other
    assert [u.execution_id for u in rec.updates] == [f"burst-{i}" for i in range(n)]
    assert all(u.raw_json == f.decode() for u, f in zip(rec.updates, frames, strict=True))
    # The loop was never starved: the other task ran while the burst was being received.
    assert any(0 < k < n for k in seen_while_receiving)
    assert ts.counters.bad_messages == 0 and ts.counters.updates == n


@dataclass
class States:
    seen: list[Connectivity] = field(default_factory=list)

    def __call__(self, snap: Connectivity) -> None:
        self.seen.append(snap)

    @property
    def names(self) -> list[str]:
        return [c.state.value for c in self.seen]


async def test_connectivity_follows_connect_drop_and_reconnect(
    sim: Simulator, broker: Broker
) -> None:
    rec, states = Recorder(), States()
    ts = TradeStream(endpoints(sim), creds(sim, "large"), rec.on_update, rec.on_bad_message,
                     rec.on_connect, on_state=states)
    assert ts.connectivity().state is StreamState.DISCONNECTED  # not started
    await ts.start()
    try:
        await eventually(lambda: rec.connects == 1, "connected")
        assert states.names == ["connecting", "authenticating", "connected"]
        up = ts.connectivity()
        assert up.connected and up.down_since is None and up.down_for(time.monotonic()) == 0
        assert up.error is None and up.refusal is None and up.connects == 1

        assert await sim.faults.drop_streams("large") == 1
        await eventually(lambda: rec.connects == 2, "reconnected after the drop")
        assert states.names[3:] == ["disconnected", "connecting", "authenticating",
                                    "connected"]
        dropped = states.seen[3]
        assert dropped.down_since is not None and dropped.drops == 1
        assert dropped.error is not None and "1011" in dropped.error
        snap = ts.connectivity()
        assert snap.connected and snap.drops == 1 and snap.connects == 2
        assert snap.last_drop is not None and "1011" in snap.last_drop
        assert snap.drops_within(60, time.monotonic()) == 1
        assert snap.drops_within(60, time.monotonic() + 120) == 0
        assert snap.failures == snap.refusals == snap.forced_reconnects == 0
    finally:
        await ts.stop()
    assert ts.connectivity().state is StreamState.DISCONNECTED
    assert ts.connectivity().drops == 1  # stopping is not a drop


async def test_refused_authentication_is_a_state_that_keeps_the_brokers_reason(
    sim: Simulator
) -> None:
    spec = sim.account("large")
    sim.faults.refuse_auth("large")  # the stream refuses the key REST still accepts
    rec, states = Recorder(), States()
    ts = TradeStream(endpoints(sim), creds(sim, "large"), rec.on_update, rec.on_bad_message,
                     rec.on_connect, on_state=states)
    await ts.start()
    try:
        await eventually(lambda: ts.connectivity().refusals >= 1, "a refusal")
        snap = ts.connectivity()
        assert snap.state is StreamState.REFUSED and snap.refusal_kind == "auth"
        assert snap.refusal == snap.last_refusal == (
            "unauthorized: access key verification failed")
        assert snap.down_since is not None and snap.connects == 0
        assert states.names[:3] == ["connecting", "authenticating", "refused"]
        texts = [snap.refusal, snap.error, ts.counters.last_connect_error]
        assert not any(spec.key_id in (t or "") or spec.secret in (t or "") for t in texts)

        sim.faults.refuse_auth("large", on=False)
        # alpaca-py retries with backoff (0.5..1 s, then 1..2 s, ...).
        await eventually(lambda: rec.connects == 1, "connected once the refusal is lifted")
        snap = ts.connectivity()
        assert snap.connected and snap.refusal is None and snap.refusal_kind is None
        assert snap.last_refusal == "unauthorized: access key verification failed"
        assert snap.drops == 0  # refusals are not drops
    finally:
        await ts.stop()


async def test_a_second_connection_for_the_key_is_refused_by_the_connection_limit(
    sim: Simulator, stream: tuple[TradeStream, Recorder]
) -> None:
    first, _ = stream
    rec = Recorder()
    second = TradeStream(endpoints(sim), creds(sim, "large"), rec.on_update,
                         rec.on_bad_message, rec.on_connect)
    await second.start()
    try:
        await eventually(lambda: second.connectivity().refusals >= 1, "the second refused")
        snap = second.connectivity()
        assert snap.state is StreamState.REFUSED
        assert snap.refusal_kind == "connection-limit"
        assert snap.refusal is not None and "connection limit exceeded" in snap.refusal
        assert first.connectivity().connected and rec.connects == 0
    finally:
        await second.stop()


async def test_a_lasting_connection_resets_the_reconnect_backoff(
    sim: Simulator
) -> None:
    """alpaca-py resets its backoff only when a trade update arrived: a quiet account's
    stream would wait longer after every drop (1, 2, 4, ... 30 s) however long each
    connection lasted. With `stable_s`, a connection up that long counts as a success."""
    rec = Recorder()
    ts = TradeStream(endpoints(sim), creds(sim, "large"), rec.on_update, rec.on_bad_message,
                     rec.on_connect, stable_s=0.3)
    await ts.start()
    try:
        await eventually(lambda: rec.connects == 1, "connected")
        for n in range(2, 6):
            await eventually(lambda: ts.connectivity().state_age(time.monotonic()) > 1.5,
                             "up longer than stable_s and the 1 s read poll")
            await sim.faults.drop_streams("large")
            dropped = time.monotonic()
            await eventually(lambda n=n: rec.connects == n, f"reconnect #{n}")  # type: ignore[misc]
            # First-retry backoff is 0.5..1 s; without the reset the 4th would be 4..8 s.
            assert time.monotonic() - dropped < 1.6, n
        assert ts.connectivity().drops == 4
    finally:
        await ts.stop()


class _Status(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"server rejected WebSocket connection: HTTP {status_code}")
        self.status_code = status_code


def test_failures_are_classified_refused_or_disconnected() -> None:
    assert classify_failure(_Status(429)) == (
        StreamState.REFUSED, "connection limit exceeded (HTTP 429 at upgrade)")
    assert classify_failure(_Status(401)) == (
        StreamState.REFUSED, "HTTP 401 at upgrade (key refused)")
    assert classify_failure(_Status(503)) == (StreamState.DISCONNECTED, "HTTP 503 at upgrade")
    assert classify_failure(ConnectionRefusedError(111, "Connect call failed")) == (
        StreamState.DISCONNECTED, "ConnectionRefusedError: [Errno 111] Connect call failed")
    assert classify_failure(StreamRefused("unauthorized")) == (
        StreamState.REFUSED, "unauthorized")
    assert refusal_kind("connection limit exceeded (HTTP 429 at upgrade)") == "connection-limit"
    assert refusal_kind("your connection is rejected while another connection is open "
                        "under the same account") == "connection-limit"
    assert refusal_kind("unauthorized: access key verification failed") == "auth"
