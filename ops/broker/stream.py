"""`TradeStream`: one account's `trade_updates` WebSocket, run inside our own event loop.

Our own client of the documented protocol (docs/broker-protocol.md section 4; the wire in
`ops.broker.websocket`), no alpaca-py: its TradingStream could only be driven through
private methods (`_run_forever`, `_consume`, ...), which pinned the library.

- Each attempt: connect (TCP + upgrade), send `authenticate`, read the next frame as the
  reply, send `listen` (4.1). A refusal keeps the broker's words ("access key
  verification failed", "connection limit exceeded"). After every successful connect,
  `on_connect()` runs, so the stream role can check completeness over REST after EVERY
  (re)connect (4.4: events sent while disconnected are lost); frames arriving meanwhile
  wait and are read afterwards.
- Every frame is parsed tolerantly: malformed JSON, non-object frames, unknown streams
  and unconvertible updates go to `on_bad_message` (never silently dropped, 6.3); an
  exception in `on_update` is reported there too and never kills the stream.
- Any failure or drop is retried forever, after alpaca-py's backoff (4.4: equal jitter,
  cap 1, 2, 4, ... 30 s). The backoff resets after a connection that delivered a trade
  update, or that stayed up `stable_s` (a quiet account would otherwise wait up to 30 s
  after every drop, however long the connection had lasted).
- Keepalive: a ping every 10 s; no pong within `ping_timeout_s` drops the connection.

Connectivity (`TradeStream.connectivity()`, a `Connectivity` snapshot) follows what really
happens: `connecting` (TCP + WebSocket upgrade) -> `authenticating` (authenticate sent,
waiting for the reply; then listen) -> `connected`; a failed attempt ends in `refused` (the
broker answered the authentication with anything but "authorized", or refused the upgrade
with HTTP 401/403/429) or `disconnected` (any other failure), then the backoff; a connected
socket that closes is a drop -> `disconnected`. `since` is when the current state began,
`down_since` when the stream was last connected (or started). Reasons are the broker's or
the library's text with the key id and secret masked.

Receive cost (the ingest benchmark, docs/performance.md): frames come in batches, as the
socket delivers them (no task or future per frame); the frame's text is handed on as
`TradeUpdate.raw_json` (stored as is, never re-encoded); no permessage-deflate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Literal

from websockets.exceptions import WebSocketException

from ops.broker import websocket
from ops.broker.convert import trade_update_from_raw
from ops.broker.errors import BrokerDataError
from ops.broker.settings import BrokerEndpoints
from ops.core.models import TradeUpdate
from ops.runtime.credentials import Credentials

log = logging.getLogger(__name__)

OnUpdate = Callable[[TradeUpdate], Awaitable[None]]
OnBadMessage = Callable[[object, str], Awaitable[None]]
OnConnect = Callable[[], Awaitable[None]]
OnState = Callable[["Connectivity"], None]
RefusalKind = Literal["auth", "connection-limit"]

# Every event name Alpaca documents for trade_updates (docs/broker-protocol.md 4.3). Others are
# still delivered (the order state they carry matters) and also reported as bad messages.
KNOWN_EVENTS = frozenset({
    "new", "fill", "partial_fill", "canceled", "expired", "done_for_day", "replaced",
    "accepted", "pending_new", "rejected", "stopped", "pending_cancel", "pending_replace",
    "calculated", "suspended", "order_replace_rejected", "order_cancel_rejected", "restated",
    "held", "trade_bust", "trade_correct",
})
_CONTROL_STREAMS = frozenset({"authorization", "listening"})
_RECV_POLL_S = 1.0
# Keepalive: alpaca-py's ping interval; its 180 s ping timeout would leave a dead TCP path
# unnoticed for three minutes (docs/broker-protocol.md 4.4): ours is `ping_timeout_s` (30 s).
_PING_INTERVAL_S = 10.0
# Frames handled from the socket's backlog between yields to the loop. Each of the
# writer's steps (buffer check, send, reply) waits for the next yield: 32 -> 8 took a
# 20k burst from ~18.5k to ~20.5k events/s stored (receive-only ceiling -5%).
_YIELD_EVERY = 8
_REASON_MAX = 300
_DROP_TIMES_KEPT = 256  # recent drop times kept for the flapping window


class StreamState(StrEnum):
    """Where the stream's connection is (module docstring: the transitions)."""

    CONNECTING = "connecting"  # TCP + WebSocket upgrade
    AUTHENTICATING = "authenticating"  # authenticate sent; then listen
    CONNECTED = "connected"  # authorized and listening (trade_updates)
    REFUSED = "refused"  # the last attempt was refused; alpaca-py retries after backoff
    DISCONNECTED = "disconnected"  # dropped, or the last attempt failed otherwise


@dataclass(frozen=True, slots=True)
class Connectivity:
    """One snapshot of the stream's connectivity. Times are `time.monotonic()`."""

    state: StreamState
    since: float  # when `state` began
    down_since: float | None  # last connected (or started); None while connected
    error: str | None  # the latest failure of the current outage (drop, refusal, error)
    refusal: str | None  # the latest refusal of the current outage, the broker's words
    refusal_kind: RefusalKind | None  # ... what kind: bad/refused key, or one-per-key limit
    last_refusal: str | None  # the latest refusal ever (kept after reconnecting)
    connects: int  # successful connect + auth + listen
    drops: int  # connections lost once connected (forced reconnects and stop excluded)
    refusals: int  # attempts refused
    failures: int  # attempts that failed, refusals included
    forced_reconnects: int  # connections closed on purpose (`reconnect()`)
    drop_times: tuple[float, ...]  # the latest drops, oldest first
    last_drop: str | None  # why the latest drop happened

    @property
    def connected(self) -> bool:
        return self.state is StreamState.CONNECTED

    def state_age(self, now: float) -> float:
        return max(0.0, now - self.since)

    def down_for(self, now: float) -> float:
        """How long the stream has not been connected (0 while connected)."""
        return 0.0 if self.down_since is None else max(0.0, now - self.down_since)

    def drops_within(self, window_s: float, now: float) -> int:
        return sum(1 for t in self.drop_times if now - t <= window_s)


class StreamRefused(ValueError):  # noqa: N818 - alpaca-py's own is a ValueError too
    """The broker answered the authentication with something other than "authorized"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"failed to authenticate: {reason}")
        self.reason = reason


def refusal_kind(reason: str) -> RefusalKind:
    """Alpaca allows one stream connection per key (docs/broker-protocol.md 6.5); its refusals say
    "connection limit exceeded" or "... rejected while another connection is open"."""
    text = reason.lower()
    if "connection limit" in text or "another connection" in text or "429" in text:
        return "connection-limit"
    return "auth"


def classify_failure(exc: BaseException) -> tuple[StreamState, str]:
    """A failed connect/auth attempt: `refused` or `disconnected`, and why (unmasked)."""
    if isinstance(exc, StreamRefused):
        return StreamState.REFUSED, exc.reason
    # websockets' legacy InvalidStatusCode has .status_code; the new InvalidStatus a response.
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        if status == 429:
            return StreamState.REFUSED, "connection limit exceeded (HTTP 429 at upgrade)"
        if status in (401, 403):
            return StreamState.REFUSED, f"HTTP {status} at upgrade (key refused)"
        return StreamState.DISCONNECTED, f"HTTP {status} at upgrade"
    text = str(exc).strip()
    return StreamState.DISCONNECTED, f"{type(exc).__name__}: {text}" if text else type(
        exc).__name__


def _auth_reply_reason(reply: object) -> str | None:
    """None if the authentication reply says "authorized"; else the broker's reason."""
    if not isinstance(reply, dict):
        return f"unexpected authentication reply: {str(reply)[:100]}"
    data = reply.get("data")
    data = data if isinstance(data, dict) else {}
    status = data.get("status")
    if status == "authorized":
        return None
    for key in ("message", "error_message", "msg", "error"):
        text = data.get(key) if isinstance(data.get(key), str) else reply.get(key)
        if isinstance(text, str) and text.strip():
            return text.strip() if status is None else f"{status}: {text.strip()}"
    return str(status) if isinstance(status, str) and status else (
        f"unexpected authentication reply: {json.dumps(reply)[:100]}")


@dataclass(slots=True)
class StreamCounters:
    """Progress counters for heartbeats."""

    messages: int = 0  # frames received (any kind)
    updates: int = 0  # TradeUpdates handed to on_update
    bad_messages: int = 0  # reports made to on_bad_message
    connects: int = 0  # successful connect + auth + listen
    connect_hook_errors: int = 0  # on_connect raised
    connect_failures: int = 0  # connect/auth attempts that failed (alpaca-py retries them)
    refusals: int = 0  # ... of which the broker refused (auth, or the one-per-key limit)
    drops: int = 0  # connections lost once connected (not forced, not stop)
    forced_reconnects: int = 0  # connections closed by `reconnect()`
    last_connect_error: str | None = None
    last_message_monotonic: float | None = None

    def snapshot(self) -> dict[str, int | float | str]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def storable_text(raw: str | bytes) -> str:
    """`raw` as text Postgres can store: invalid UTF-8, lone surrogates and NUL escaped."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def _frame_text(frame: object) -> str | None:
    """The frame as JSON text to store verbatim (TradeUpdate.raw_json), when it is plain
    UTF-8; None otherwise (json.loads then decodes the bytes itself, UTF-16/32 or BOM)."""
    if isinstance(frame, str):
        return frame
    if isinstance(frame, bytes):
        try:
            text = frame.decode()
        except UnicodeDecodeError:
            return None
        return None if text.startswith("\ufeff") else text
    return None


class TradeStream:
    """Deliver trade updates for one account to async callbacks.

    `await start()` then later `await stop()` (idempotent). `task` completes only when
    stopped (alpaca-py reconnects forever); `counters` feed the heartbeat;
    `connectivity()` says where the connection is, and `on_state(snapshot)` (sync, cheap)
    is called at every change of state. `stable_s`: a connection up this long resets
    alpaca-py's reconnect backoff.
    """

    def __init__(
        self,
        endpoints: BrokerEndpoints,
        creds: Credentials,
        on_update: OnUpdate,
        on_bad_message: OnBadMessage,
        on_connect: OnConnect | None = None,
        *,
        on_state: OnState | None = None,
        ping_timeout_s: float = 30.0,
        stable_s: float = 60.0,
    ) -> None:
        self.account_name = creds.account_name
        self.counters = StreamCounters()
        self._on_update = on_update
        self._on_bad_message = on_bad_message
        self._on_connect = on_connect
        self._on_state = on_state
        self._key, self._secret = creds.api_key, creds.api_secret
        self._ping_timeout_s = ping_timeout_s
        self._stable_s = stable_s
        self._conn: websocket.WsConnection | None = None
        self._stop_event = asyncio.Event()
        self._attempt = 0  # failed attempts since the last success: the backoff's exponent
        self._delivered = False  # the current connection delivered, or lasted `stable_s`
        # Never let key material into a reason (a broker could echo what it refused).
        self._masks = tuple(m for m in (creds.api_key, creds.api_secret) if len(m) >= 4)
        self._endpoint = endpoints.stream_url
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        now = time.monotonic()
        self._state = StreamState.DISCONNECTED
        self._since = now
        self._down_since: float | None = now
        self._connected_mono: float | None = None
        self._error: str | None = None
        self._refusal: str | None = None
        self._refusal_kind: RefusalKind | None = None
        self._last_refusal: str | None = None
        self._forcing = False
        self._drop_times: deque[float] = deque(maxlen=_DROP_TIMES_KEPT)
        self._last_drop: str | None = None

    def __repr__(self) -> str:
        return f"TradeStream(account={self.account_name!r}, url={self._endpoint!r})"

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def connectivity(self) -> Connectivity:
        """The connectivity state now (cheap: heartbeats read it every beat)."""
        c = self.counters
        return Connectivity(
            state=self._state, since=self._since, down_since=self._down_since,
            error=self._error, refusal=self._refusal, refusal_kind=self._refusal_kind,
            last_refusal=self._last_refusal, connects=c.connects, drops=c.drops,
            refusals=c.refusals, failures=c.connect_failures,
            forced_reconnects=c.forced_reconnects, drop_times=tuple(self._drop_times),
            last_drop=self._last_drop)

    async def start(self) -> None:
        if self._task is not None or self._stopped:
            raise RuntimeError(f"{self!r} already started or stopped; build a new one")
        self._down_since = time.monotonic()
        self._enter(StreamState.CONNECTING)
        self._task = asyncio.create_task(self._run(), name=f"trade-stream-{self.account_name}")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Close the socket and end the task; cancel it if it overstays `grace_s`."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        task = self._task
        if task is None:
            return
        self._lost("stopped")
        conn = self._conn
        if conn is not None:
            await conn.close()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except TimeoutError:
            log.warning("%r did not stop within %.1fs; cancelling", self, grace_s)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # stop() itself was cancelled
        except Exception:
            log.exception("%r: stream task had failed", self)

    async def reconnect(self) -> bool:
        """Close the current socket so the stream reconnects (and on_connect runs again).

        For a stream that looks connected but has gone quiet (docs/broker-protocol.md 6.1).
        Returns False when there is no open socket to close.
        """
        conn = self._conn
        if conn is None or self._stopped or self._state is not StreamState.CONNECTED:
            return False
        log.warning("%r: forcing a reconnect", self)
        self._forcing = True
        await conn.close()
        return True

    # -- the connection loop ----------------------------------------------------------------

    def _backoff_s(self) -> float:
        """alpaca-py's schedule, kept (docs/broker-protocol.md 4.4): equal jitter, cap 1, 2, 4, ...
        30 s by failed attempts since the last success."""
        cap = min(30.0, 2.0 ** self._attempt)
        return random.uniform(cap / 2, cap)

    async def _run(self) -> None:
        """Connect, authenticate, listen, read; after any failure or drop wait the backoff
        and start again, forever, until `stop()`."""
        while not self._stopped:
            try:
                conn, early = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._stopped:
                    return
                self._attempt_failed(e)
            else:
                self._conn = conn
                self._delivered = False
                try:
                    await self._connected()
                    await self._read(conn, early)
                except (WebSocketException, ConnectionError) as e:
                    self._dropped(e)
                finally:
                    self._conn = None
                    await conn.close()
                if self._delivered:
                    self._attempt = 0
                if self._stopped:
                    return
                if self._state is StreamState.CONNECTED:  # closed without an error
                    self._dropped(ConnectionError("connection closed"))
            delay = self._backoff_s()
            self._attempt += 1
            try:
                async with asyncio.timeout(delay):
                    await self._stop_event.wait()
            except TimeoutError:
                pass

    async def _open(self) -> tuple[websocket.WsConnection, list[bytes]]:
        """TCP + upgrade, then authenticate and listen (docs/broker-protocol.md 4.1), each a
        state."""
        self._enter(StreamState.CONNECTING)
        conn = await websocket.connect(self._endpoint)
        try:
            self._enter(StreamState.AUTHENTICATING)
            await conn.send_text(json.dumps({"action": "authenticate", "data": {
                "key_id": self._key, "secret_key": self._secret}}))
            reply, early = await self._auth_reply(conn)
            reason = _auth_reply_reason(reply)
            if reason is not None:
                raise StreamRefused(reason)
            await conn.send_text(json.dumps(
                {"action": "listen", "data": {"streams": ["trade_updates"]}}))
        except BaseException:
            await conn.close()
            raise
        conn.start_keepalive(_PING_INTERVAL_S, self._ping_timeout_s)
        return conn, early

    async def _auth_reply(self, conn: websocket.WsConnection) -> tuple[object, list[bytes]]:
        """The next frame is the reply (docs/broker-protocol.md 4.1); frames after it are returned
        with it, to be read as any other."""
        async with asyncio.timeout(self._ping_timeout_s):
            frames: list[bytes] = []
            while not frames:
                frames = await conn.batch(_RECV_POLL_S)
        try:
            return json.loads(frames[0]), frames[1:]
        except (ValueError, TypeError) as e:
            raise ValueError(f"failed to authenticate: the reply is not JSON ({e})") from None

    async def _read(self, conn: websocket.WsConnection, frames: list[bytes]) -> None:
        """Handle frames until the connection ends (raises) or stop. Sets `_delivered`
        once a trade update came or the connection lasted `stable_s`: the backoff then
        starts over."""
        while not self._stopped:
            unyielded = 0
            for frame in frames:
                if await self._frame(frame):
                    self._delivered = True
                # Yield now and then in a burst, or the backlog starves the loop (the
                # writer's Postgres replies wait).
                unyielded += 1
                if unyielded >= _YIELD_EVERY:
                    unyielded = 0
                    await asyncio.sleep(0)
            try:
                frames = await conn.batch(_RECV_POLL_S)
            finally:
                if self._up_for() >= self._stable_s:
                    self._delivered = True
            if self._forcing and not conn.open:
                return

    # -- state ---------------------------------------------------------------------------

    def _enter(self, state: StreamState) -> None:
        if state is self._state:
            return
        self._state = state
        self._since = time.monotonic()
        if self._on_state is not None:
            try:
                self._on_state(self.connectivity())
            except Exception:
                log.exception("%r: on_state failed", self)

    def _mask(self, text: str) -> str:
        for secret in self._masks:
            text = text.replace(secret, "***")
        return storable_text(text)[:_REASON_MAX]

    def _up_for(self) -> float:
        return 0.0 if self._connected_mono is None else time.monotonic() - self._connected_mono

    def _lost(self, why: str) -> None:
        """Connected -> disconnected (a drop, a forced reconnect, stop)."""
        self._connected_mono = None
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._error = why
        self._enter(StreamState.DISCONNECTED)

    async def _connected(self) -> None:
        self.counters.connects += 1
        self._connected_mono = time.monotonic()
        self._down_since = None
        self._forcing = False
        self._error = self._refusal = self._refusal_kind = None
        self._enter(StreamState.CONNECTED)
        log.info("%r connected (connect #%d)", self, self.counters.connects)
        if self._on_connect is None:
            return
        try:
            await self._on_connect()
        except Exception:
            # The stream keeps running; the role sees the counter and its own failure.
            self.counters.connect_hook_errors += 1
            log.exception("%r: on_connect failed", self)

    def _attempt_failed(self, exc: Exception) -> None:
        state, reason = classify_failure(exc)
        reason = self._mask(reason)
        c = self.counters
        c.connect_failures += 1
        c.last_connect_error = self._mask(f"{type(exc).__name__}: {exc}")
        self._error = reason
        if state is StreamState.REFUSED:
            c.refusals += 1
            self._refusal = self._last_refusal = reason
            self._refusal_kind = refusal_kind(reason)
            log.warning("%r: the broker refused the stream: %s", self, reason)
        else:
            log.warning("%r: connect failed: %s", self, reason)
        self._enter(state)

    def _dropped(self, exc: Exception) -> None:
        if self._stopped:
            return
        why = self._mask(f"{type(exc).__name__}: {exc}")
        if self._forcing:
            self._forcing = False
            self.counters.forced_reconnects += 1
            self._lost(f"forced reconnect ({why})")
            return
        self.counters.drops += 1
        self._drop_times.append(time.monotonic())
        self._last_drop = why
        log.warning("%r: connection dropped: %s", self, why)
        self._lost(why)

    async def _bad(self, raw: object, error: str) -> None:
        self.counters.bad_messages += 1
        # The report is stored as Postgres text, which refuses NUL and lone surrogates: a
        # frame holding them would lose its record. Raw frames become escaped text.
        error = storable_text(error)
        if isinstance(raw, str):
            raw = storable_text(raw)
        elif isinstance(raw, bytes):  # stays bytes, now valid UTF-8 without NUL
            raw = storable_text(raw).encode()
        log.warning("%r: bad message: %s", self, error)
        try:
            await self._on_bad_message(raw, error)
        except Exception:
            log.exception("%r: on_bad_message failed for: %s", self, error)

    async def _frame(self, frame: object) -> bool:
        """Handle one frame; True if it was a trade_updates message."""
        self.counters.messages += 1
        self.counters.last_message_monotonic = time.monotonic()
        text = _frame_text(frame)
        try:
            msg = (json.loads(text if text is not None else frame)
                   if isinstance(frame, str | bytes) else None)
        except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
            await self._bad(frame, f"malformed frame (not JSON): {e}")
            return False
        if not isinstance(msg, dict):
            await self._bad(frame, "frame is not a JSON object")
            return False
        stream = msg.get("stream")
        if not isinstance(stream, str):  # e.g. a list: unhashable, and no stream name
            await self._bad(msg, f"unexpected stream {stream!r}")
            return False
        if stream in _CONTROL_STREAMS:
            return False
        if stream != "trade_updates":
            await self._bad(msg, f"unexpected stream {stream!r}")
            return False
        try:
            update = trade_update_from_raw(msg, text)
        except BrokerDataError as e:
            await self._bad(msg, f"unreadable trade update: {e}")
            return True
        if update.event not in KNOWN_EVENTS:
            await self._bad(msg, f"unknown event {update.event!r} for order {update.order.id} "
                                 "(delivered as-is)")
        self.counters.updates += 1
        try:
            await self._on_update(update)
        except Exception as e:
            log.exception("%r: on_update failed for %s", self, update.event_key)
            await self._bad(msg, f"on_update failed for {update.event_key}: "
                                 f"{type(e).__name__}: {e}")
        return True
