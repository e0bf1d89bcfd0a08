"""Property: any frame the trade stream can receive -> a TradeUpdate or a bad-message report.

Two levels, both fed arbitrary JSON values, dicts with missing / wrong-typed fields and
raw bytes:
- `trade_update_from_raw` returns a TradeUpdate or raises BrokerDataError (naming the
  field), nothing else;
- `TradeStream._frame` (the stream's per-frame handler, exactly what its read loop calls)
  never lets an exception escape: each frame is either handed to on_update or reported to
  on_bad_message (control frames: neither); unknown event names are delivered verbatim.
No socket is opened: `_frame` is the whole parse path after `ws.recv()`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ops.broker import BrokerEndpoints
from ops.broker.convert import trade_update_from_raw
from ops.broker.errors import BrokerDataError
from ops.broker.stream import TradeStream
from ops.core.models import TradeUpdate
from ops.runtime.credentials import Credentials
from ops.store import Store

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                    st.text(max_size=30), st.sampled_from(["", "NaN", "1e999", "-0",
                                                           "2026-11-24T15:00:00Z", "abc"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)

GOOD_ORDER: dict[str, Any] = {
    "id": "o-1", "client_order_id": "ops-tiny-sig-1", "symbol": "NVDA", "side": "buy",
    "type": "market", "time_in_force": "day", "status": "filled", "qty": "1",
    "filled_qty": "1", "filled_avg_price": "100.5", "created_at": "2026-11-24T15:00:00Z",
    "updated_at": "2026-11-24T15:00:01.123456789Z",
}
GOOD_DATA: dict[str, Any] = {"event": "fill", "execution_id": "x-1", "price": "100.5",
                             "qty": "1", "position_qty": "1",
                             "timestamp": "2026-11-24T15:00:01.123456789Z",
                             "order": GOOD_ORDER}


@st.composite
def damaged_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed trade update with fields dropped or replaced by arbitrary values."""
    order = dict(GOOD_ORDER)
    data = dict(GOOD_DATA)
    for target in (order, data):
        for key in draw(st.lists(st.sampled_from(sorted(target)), max_size=4, unique=True)):
            if draw(st.booleans()):
                del target[key]
            else:
                target[key] = draw(json_values)
    data["order"] = order if "order" in data and data["order"] is GOOD_ORDER else \
        data.get("order", order)
    env: dict[str, Any] = {"stream": "trade_updates", "data": data}
    if draw(st.booleans()):
        env["stream"] = draw(json_values)
    return env


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, damaged_envelopes()))
def test_converter_returns_an_update_or_a_named_error(msg: object) -> None:
    try:
        update = trade_update_from_raw(msg)
    except BrokerDataError as e:
        assert str(e)
        return
    assert isinstance(update, TradeUpdate)
    assert isinstance(msg, dict)
    assert update.event == msg["data"]["event"]  # verbatim, known or not
    assert update.event_key


class Recorder:
    def __init__(self) -> None:
        self.updates: list[TradeUpdate] = []
        self.bad: list[tuple[object, str]] = []

    async def on_update(self, u: TradeUpdate) -> None:
        self.updates.append(u)

    async def on_bad(self, raw: object, error: str) -> None:
        self.bad.append((raw, error))


def _stream(rec: Recorder) -> TradeStream:
    return TradeStream(BrokerEndpoints("http://127.0.0.1:9", "ws://127.0.0.1:9/stream",
                                       "http://127.0.0.1:9"),
                       Credentials("test/tiny", "tiny", "PKTESTKEY", "test-secret-value"),
                       rec.on_update, rec.on_bad)


def _frames() -> st.SearchStrategy[object]:
    as_text = st.one_of(json_values, damaged_envelopes()).map(json.dumps)
    return st.one_of(
        as_text, as_text.map(str.encode), st.binary(max_size=40), st.text(max_size=40),
        json_values,  # a non-str/bytes frame object
        st.sampled_from(["[" * 5000 + "]" * 5000,  # deeper than json's recursion limit
                         '{"stream": ["trade_updates"]}', '{"stream": {"a": 1}}',
                         '{"stream": "trade_updates", "data": []}', "NaN", "\udcff",
                         b"\xff\x00{", "a\x00b"]),
    )


def _handle(frame: object) -> Recorder:
    rec = Recorder()
    asyncio.run(_stream(rec)._frame(frame))
    return rec


@settings(max_examples=400, deadline=None)
@given(_frames())
def test_every_frame_is_delivered_or_reported_never_raised(frame: object) -> None:
    rec = _handle(frame)  # must not raise
    delivered, reported = len(rec.updates), len(rec.bad)
    assert delivered <= 1
    control = False
    try:
        msg = json.loads(frame) if isinstance(frame, str | bytes) else None
        control = isinstance(msg, dict) and msg.get("stream") in ("authorization",
                                                                  "listening")
    except (ValueError, RecursionError, TypeError):
        pass
    if not control:
        assert delivered or reported, f"frame silently dropped: {frame!r:.200}"
    for raw, error in rec.bad:
        assert error.strip()
        shown = raw.decode("utf-8") if isinstance(raw, bytes) else raw  # valid UTF-8
        for text in (error, shown if isinstance(shown, str) else ""):
            # Stored as Postgres text (incidents): no NUL, no lone surrogates.
            assert "\x00" not in text
            text.encode("utf-8")


def test_unknown_event_is_delivered_verbatim_and_reported() -> None:
    env = {"stream": "trade_updates", "data": {**GOOD_DATA, "event": "Fill_Busted_v2"}}
    rec = _handle(json.dumps(env))
    assert [u.event for u in rec.updates] == ["Fill_Busted_v2"]
    assert len(rec.bad) == 1 and "unknown event 'Fill_Busted_v2'" in rec.bad[0][1]


def test_missing_order_id_is_reported_naming_the_field() -> None:
    order = {k: v for k, v in GOOD_ORDER.items() if k != "id"}
    rec = _handle(json.dumps({"stream": "trade_updates", "data": {**GOOD_DATA,
                                                                   "order": order}}))
    assert not rec.updates
    assert len(rec.bad) == 1 and "'id'" in rec.bad[0][1] and "missing" in rec.bad[0][1]


HOSTILE_FRAMES: list[str | bytes] = ["a\x00b", b"\xff\xfe\x00", "\udcff{", '{"stream": "\u0000"}',
                                     json.dumps({"stream": "trade_updates", "data": {
                                         **GOOD_DATA, "order": {**GOOD_ORDER, "id": 7}}})]


async def test_bad_message_reports_are_storable_in_postgres(ops_store: Store) -> None:
    """What the stream role does with a report: an incident whose detail holds the error
    and the raw frame. Postgres refuses NUL and lone surrogates; the reports carry none."""
    rec = Recorder()
    ts = _stream(rec)
    for frame in HOSTILE_FRAMES:
        await ts._frame(frame)
    assert len(rec.bad) == len(HOSTILE_FRAMES) and not rec.updates
    for i, (raw, error) in enumerate(rec.bad):
        shown = raw if isinstance(raw, str) else (
            raw.decode() if isinstance(raw, bytes) else json.dumps(raw))
        await ops_store.open_incident("stream-bad-message", detail=f"{error}; message: {shown}",
                                      process="tiny-stream", dedupe_key=f"bad-{i}")
    snap = await ops_store.open_incidents()
    assert snap.source == "postgres" and len(snap.rows) == len(HOSTILE_FRAMES)
    assert not await ops_store.buffer.has_pending()
