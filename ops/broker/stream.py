"""`TradeStream`: one account's `trade_updates` WebSocket, run inside our own event loop.

Built on alpaca-py's TradingStream (its connect/auth/reconnect-with-backoff loop), with
two overrides of its private API (alpaca-py is pinned to 0.44.0; tests cover both):

- `_start_ws` -> after every successful connect + auth + listen, `on_connect()` runs, so
  the stream role can backfill over REST after EVERY (re)connect (alpaca-wire.md 4.4:
  events sent while disconnected are lost, alpaca-py does no replay). Frames arriving
  meanwhile queue in the socket and are processed afterwards.
- `_consume` -> our own read loop parses every frame tolerantly: malformed JSON, non-object
  frames, unknown streams and unconvertible updates go to `on_bad_message` (never silently
  dropped, alpaca-wire.md 6.3); an exception in `on_update` is reported there too and
  never kills the stream. Stop requests are noticed within a second.

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
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

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


@dataclass(slots=True)
class StreamCounters:
    """Progress counters for heartbeats."""

    messages: int = 0  # frames received (any kind)
    updates: int = 0  # TradeUpdates handed to on_update
    bad_messages: int = 0  # reports made to on_bad_message
    connects: int = 0  # successful connect + auth + listen
    connect_hook_errors: int = 0  # on_connect raised
    connect_failures: int = 0  # connect/auth attempts that failed (alpaca-py retries them)
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
                 url: str, ping_timeout_s: float) -> None:
        # alpaca-py's default ping timeout is 180 s: a dead TCP path would go unnoticed
        # for three minutes (alpaca-wire.md 4.4).
        # No permessage-deflate: inflating every small frame costs more CPU than the few
        # bytes a trade update saves on the wire (the server sends plain frames then).
        params = {"ping_interval": 10, "ping_timeout": ping_timeout_s, "max_queue": 1024,
                  "compression": None}
        super().__init__(key, secret, paper=paper, raw_data=True, url_override=url,
                         websocket_params=params)
        self._owner = owner

    async def _start_ws(self) -> None:
        try:
            await super()._start_ws()  # type: ignore[no-untyped-call]
        except Exception as e:
            # alpaca-py logs this and retries with backoff (forever, even for bad keys):
            # count it so a stream that never connects is visible in the heartbeat.
            self._owner._connect_failed(e)
            raise
        await self._owner._connected()

    async def _consume(self) -> None:
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
                    continue
            if await self._owner._frame(frame):
                self._data_received = True  # alpaca-py resets its reconnect backoff on this


class TradeStream:
    """Deliver trade updates for one account to async callbacks.

    `await start()` then later `await stop()` (idempotent). `task` completes only when
    stopped (alpaca-py reconnects forever); `counters` feed the heartbeat.
    """

    def __init__(
        self,
        endpoints: BrokerEndpoints,
        creds: Credentials,
        on_update: OnUpdate,
        on_bad_message: OnBadMessage,
        on_connect: OnConnect | None = None,
        *,
        ping_timeout_s: float = 30.0,
    ) -> None:
        self.account_name = creds.account_name
        self.counters = StreamCounters()
        self._on_update = on_update
        self._on_bad_message = on_bad_message
        self._on_connect = on_connect
        self._sdk = _HookedTradingStream(self, creds.api_key, creds.api_secret,
                                         endpoints.paper, endpoints.stream_url, ping_timeout_s)
        self._endpoint = endpoints.stream_url
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"TradeStream(account={self.account_name!r}, url={self._endpoint!r})"

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def start(self) -> None:
        if self._task is not None or self._stopped:
            raise RuntimeError(f"{self!r} already started or stopped; build a new one")
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
        if ws is None or self._stopped:
            return False
        log.warning("%r: forcing a reconnect", self)
        await ws.close()
        return True

    # -- callbacks from the SDK subclass -------------------------------------------------

    @staticmethod
    async def _unused_handler(msg: object) -> None:
        """alpaca-py needs a handler to start; our `_consume` never calls `_dispatch`."""

    async def _connected(self) -> None:
        self.counters.connects += 1
        log.info("%r connected (connect #%d)", self, self.counters.connects)
        if self._on_connect is None:
            return
        try:
            await self._on_connect()
        except Exception:
            # The stream keeps running; the role sees the counter and its own failure.
            self.counters.connect_hook_errors += 1
            log.exception("%r: on_connect failed", self)

    def _connect_failed(self, exc: Exception) -> None:
        self.counters.connect_failures += 1
        # alpaca-py's own messages ("failed to authenticate", refused, HTTP 429) hold no keys.
        self.counters.last_connect_error = f"{type(exc).__name__}: {exc}"[:300]
        log.warning("%r: connect failed: %s", self, self.counters.last_connect_error)

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
