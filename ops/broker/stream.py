"""`TradeStream`: one account's `trade_updates` WebSocket, run inside our own event loop.

Built on alpaca-py's TradingStream (its connect/auth/reconnect-with-backoff loop), with
three overrides of its private API (alpaca-py is pinned to 0.44.0; tests cover them):

- `_start_ws` -> the same steps (connect, authenticate, listen), each one a state of the
  connectivity machine below; after every successful connect + auth + listen,
  `on_connect()` runs, so the stream role can backfill over REST after EVERY (re)connect
  (alpaca-wire.md 4.4: events sent while disconnected are lost, alpaca-py does no
  replay). Frames arriving meanwhile queue in the socket and are processed afterwards.
- `_auth` -> the same exchange as alpaca-py's, but a refusal keeps the broker's words
  ("access key verification failed", "connection limit exceeded") instead of a bare
  "failed to authenticate".
- `_consume` -> our own read loop parses every frame tolerantly: malformed JSON, non-object
  frames, unknown streams and unconvertible updates go to `on_bad_message` (never silently
  dropped, alpaca-wire.md 6.3); an exception in `on_update` is reported there too and
  never kills the stream. Stop requests are noticed within a second. A connection that
  stayed up `stable_s` counts as a success for alpaca-py's backoff, as one that received
  a trade update does (alpaca-py resets its backoff only on data: a quiet account would
  otherwise wait up to 30 s after every drop, however long the connection had lasted).

Connectivity (`TradeStream.connectivity()`, a `Connectivity` snapshot) follows what really
happens, not what alpaca-py logs: `connecting` (TCP + WebSocket upgrade) ->
`authenticating` (authenticate sent, waiting for the reply; then listen) -> `connected`;
a failed attempt ends in `refused` (the broker answered the authentication with anything
but "authorized", or refused the upgrade with HTTP 401/403/429) or `disconnected` (any
other failure), and alpaca-py retries after its backoff (alpaca-wire.md 4.4: 0.5..30 s,
forever); a connected socket that closes is a drop -> `disconnected`. `since` is when the
current state began, `down_since` when the stream was last connected (or started). Reasons
are the broker's or the library's text with the key id and secret masked.

Receive cost (the ingest benchmark, docs/performance.md): no alpaca-py models (raw_data),
frames already queued in the socket are read without a timeout task each, the frame's
text is handed on as `TradeUpdate.raw_json` (stored as is, never re-encoded), and
permessage-deflate is off (inflating each small frame cost more than it saved).

alpaca-py's `run()`/`stop()` are never used: they deadlock inside a running loop (4.5).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal

from websockets.exceptions import WebSocketException

from ops.broker import _sdk as sdk
from ops.broker.convert import trade_update_from_raw
from ops.broker.errors import BrokerDataError
from ops.broker.settings import BrokerEndpoints
from ops.credentials import Credentials
from ops.models import TradeUpdate

log = logging.getLogger(__name__)

OnUpdate = Callable[[TradeUpdate], Awaitable[None]]
OnBadMessage = Callable[[object, str], Awaitable[None]]
OnConnect = Callable[[], Awaitable[None]]
OnState = Callable[["Connectivity"], None]
RefusalKind = Literal["auth", "connection-limit"]

# Every event name Alpaca documents for trade_updates (alpaca-wire.md 4.3). Others are
# still delivered (the order state they carry matters) and also reported as bad messages.
KNOWN_EVENTS = frozenset({
    "new", "fill", "partial_fill", "canceled", "expired", "done_for_day", "replaced",
    "accepted", "pending_new", "rejected", "stopped", "pending_cancel", "pending_replace",
    "calculated", "suspended", "order_replace_rejected", "order_cancel_rejected", "restated",
    "held", "trade_bust", "trade_correct",
})
_CONTROL_STREAMS = frozenset({"authorization", "listening"})
_RECV_POLL_S = 1.0
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
    """Alpaca allows one stream connection per key (alpaca-wire.md 6.5); its refusals say
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


class _HookedTradingStream(sdk.TradingStream):
    def __init__(self, owner: TradeStream, key: str, secret: str, paper: bool,
                 url: str, ping_timeout_s: float, stable_s: float) -> None:
        # alpaca-py's default ping timeout is 180 s: a dead TCP path would go unnoticed
        # for three minutes (alpaca-wire.md 4.4).
        # No permessage-deflate: inflating every small frame costs more CPU than the few
        # bytes a trade update saves on the wire (the server sends plain frames then).
        params = {"ping_interval": 10, "ping_timeout": ping_timeout_s, "max_queue": 1024,
                  "compression": None}
        super().__init__(key, secret, paper=paper, raw_data=True, url_override=url,
                         websocket_params=params)
        self._owner = owner
        self._stable_s = stable_s

    async def _start_ws(self) -> None:
        # alpaca-py's steps (connect, auth, listen), each a state. A failure is re-raised:
        # alpaca-py closes the socket and retries with backoff (forever, even for bad
        # keys); the state says so meanwhile.
        owner = self._owner
        owner._enter(StreamState.CONNECTING)
        try:
            await self._connect()  # type: ignore[no-untyped-call]
            owner._enter(StreamState.AUTHENTICATING)
            await self._auth()
            await self._subscribe_trade_updates()
        except Exception as e:
            owner._attempt_failed(e)
            raise
        log.info("connected to: %s", self._endpoint)
        await owner._connected()

    async def _auth(self) -> None:
        # alpaca-py's exchange (alpaca-wire.md 4.1: the next frame is the reply), keeping
        # the broker's reason when it is not "authorized".
        ws: Any = self._ws
        await ws.send(json.dumps({"action": "authenticate", "data": {
            "key_id": self._api_key, "secret_key": self._secret_key}}))
        raw = await ws.recv()
        try:
            reply = json.loads(raw)
        except (ValueError, TypeError) as e:
            raise ValueError(f"failed to authenticate: the reply is not JSON ({e})") from None
        reason = _auth_reply_reason(reply)
        if reason is not None:
            raise StreamRefused(reason)

    async def _consume(self) -> None:
        try:
            await self._read_frames()
        except WebSocketException as e:
            # alpaca-py closes, then reconnects after its backoff.
            self._owner._dropped(e)
            raise

    async def _read_frames(self) -> None:
        ws: Any = self._ws
        unyielded = 0
        while True:
            if not self._stop_stream_queue.empty():
                self._stop_stream_queue.get(timeout=1)
                await self.close()
                break
            if getattr(ws, "messages", None):
                # Frames already queued (a burst): recv() returns without suspending, so
                # skip wait_for's task and timer per frame. Yield now and then, or a
                # backlog would starve the loop (the writer's Postgres replies wait).
                unyielded += 1
                if unyielded >= _YIELD_EVERY:
                    unyielded = 0
                    await asyncio.sleep(0)
                frame = await ws.recv()
            else:
                unyielded = 0
                try:
                    frame = await asyncio.wait_for(ws.recv(), _RECV_POLL_S)
                except TimeoutError:
                    if not self._data_received and self._owner._up_for() >= self._stable_s:
                        self._data_received = True  # a lasting connection: reset backoff
                    continue
            if await self._owner._frame(frame):
                self._data_received = True  # alpaca-py resets its reconnect backoff on this


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
        self._sdk = _HookedTradingStream(self, creds.api_key, creds.api_secret,
                                         endpoints.paper, endpoints.stream_url, ping_timeout_s,
                                         stable_s)
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
        self._sdk.subscribe_trade_updates(self._unused_handler)  # before running: no thread hop
        self._task = asyncio.create_task(self._sdk._run_forever(),  # type: ignore[no-untyped-call]
                                         name=f"trade-stream-{self.account_name}")
        # Let _run_forever pass its start-up (it drains the stop queue there), so that a
        # stop() right after start() is not lost.
        await asyncio.sleep(0)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Close the socket and end the task; cancel it if it overstays `grace_s`."""
        if self._stopped:
            return
        self._stopped = True
        task = self._task
        if task is None:
            return
        self._lost("stopped")
        await self._sdk.stop_ws()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except TimeoutError:
            log.warning("%r did not stop within %.1fs; cancelling", self, grace_s)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            await self._sdk.close()
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # stop() itself was cancelled
        except Exception:
            log.exception("%r: stream task had failed", self)

    async def reconnect(self) -> bool:
        """Close the current socket so alpaca-py reconnects (and on_connect runs again).

        For a stream that looks connected but has gone quiet (alpaca-wire.md 6.1).
        Returns False when there is no open socket to close.
        """
        ws: Any = self._sdk._ws
        if ws is None or self._stopped or self._state is not StreamState.CONNECTED:
            return False
        log.warning("%r: forcing a reconnect", self)
        self._forcing = True
        await ws.close()
        return True

    # -- callbacks from the SDK subclass -------------------------------------------------

    @staticmethod
    async def _unused_handler(msg: object) -> None:
        """alpaca-py needs a handler to start; our `_consume` never calls `_dispatch`."""

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
