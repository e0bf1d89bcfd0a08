"""A WebSocket client connection read in batches: websockets' sans-I/O protocol
(`websockets.client.ClientProtocol`, public API) under an asyncio `Protocol`.

Why not websockets' own asyncio client: a burst of trade updates is thousands of small
frames, and here every frame the socket delivers is parsed in one go and handed over as
a list (`WsConnection.batch()`): no future, task wake-up or coroutine per frame. What the
asyncio client would do for us is done here: the opening handshake (a refusal raises
`InvalidStatus` with the HTTP status), replies to pings and to the closing handshake (the
protocol object queues them), keepalive pings with a timeout (a dead TCP path is noticed
within `ping_interval + ping_timeout`), reassembly of fragmented messages, and reading
paused while `max_queued` frames wait (the socket's buffers then hold the rest). A small
bound stores a burst faster: the reader goes back to the loop every 256 frames, where the
writer's Postgres replies wait too (22,000-event bursts, same host, minutes apart: 4,096
-> 13.9-16.1k events/s stored, 1,000,000 -> 11.1-13.1k, 256 -> 15.6-17.2k).

No permessage-deflate: inflating each small frame costs more CPU than it saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

CLOSE_TIMEOUT_S = 2.0


class WsConnection(asyncio.Protocol):
    """One client connection. Build it with `connect()`."""

    def __init__(self, proto: ClientProtocol, max_queued: int) -> None:
        loop = asyncio.get_running_loop()
        self._proto = proto
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._frames: deque[bytes] = deque()
        self._partial: list[bytes] = []  # a fragmented message's frames so far
        self._wake = asyncio.Event()
        self._max_queued = max_queued
        self._paused = False
        self._pong: asyncio.Event | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._abort_reason: str | None = None
        self._lost_exc: Exception | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        request = self._proto.connect()
        request.headers["User-Agent"] = "ops-pipeline"
        self._proto.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._proto.receive_data(data)
        self._events()
        self._flush()

    def eof_received(self) -> bool | None:
        self._proto.receive_eof()
        self._events()
        self._flush()
        return None  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost_exc = exc
        self._proto.receive_eof()  # idempotent: the protocol's state becomes CLOSED
        if not self._opened.done():
            self._opened.set_exception(self._proto.handshake_exc or ConnectionError(
                f"connection closed during the opening handshake ({exc or 'EOF'})"))
        if not self._lost.done():
            self._lost.set_result(None)
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._wake.set()

    # -- frames -------------------------------------------------------------------------

    def _events(self) -> None:
        frames = self._frames
        for event in self._proto.events_received():
            if type(event) is Frame:
                op, data = event.opcode, event.data
                if type(data) is not bytes:
                    data = bytes(data)
                if op is Opcode.TEXT or op is Opcode.BINARY:
                    if event.fin:
                        frames.append(data)
                    else:
                        self._partial = [data]
                elif op is Opcode.CONT:
                    self._partial.append(data)
                    if event.fin:
                        frames.append(b"".join(self._partial))
                        self._partial = []
                elif op is Opcode.PONG and self._pong is not None:
                    self._pong.set()
            elif isinstance(event, Response) and not self._opened.done():
                if self._proto.handshake_exc is not None:
                    self._opened.set_exception(self._proto.handshake_exc)
                else:
                    self._opened.set_result(None)
        if frames:
            self._wake.set()
            if len(frames) >= self._max_queued and not self._paused and self._transport:
                self._paused = True
                self._transport.pause_reading()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data in self._proto.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if self._proto.close_expected():
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, transport.abort)

    @property
    def open(self) -> bool:
        return self._proto.state is State.OPEN and not self._lost.done()

    def closed_error(self) -> ConnectionClosed | ConnectionError:
        """Why the connection is gone (the closing handshake's codes when there was one)."""
        if self._abort_reason is not None:
            return ConnectionError(self._abort_reason)
        if self._proto.state is State.CLOSED:
            return self._proto.close_exc
        return ConnectionError(f"connection lost ({self._lost_exc or 'EOF'})")

    async def batch(self, timeout_s: float) -> list[bytes]:
        """Every complete message received so far (bytes, text frames as UTF-8), waiting
        up to `timeout_s` for one; [] on timeout. Raises once the connection is gone and
        nothing is left to read."""
        if not self._frames:
            if self._lost.done():
                raise self.closed_error()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._wake.wait()
            if not self._frames:
                if self._lost.done():
                    raise self.closed_error()
                return []
        out = list(self._frames)
        self._frames.clear()
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return out

    async def send_text(self, text: str) -> None:
        if not self.open:
            raise self.closed_error()
        self._proto.send_text(text.encode())
        self._flush()

    # -- keepalive and closing ------------------------------------------------------------

    def start_keepalive(self, interval_s: float, timeout_s: float) -> None:
        self._keepalive = asyncio.create_task(self._ping_loop(interval_s, timeout_s),
                                              name="ws-keepalive")

    async def _ping_loop(self, interval_s: float, timeout_s: float) -> None:
        while self.open:
            await asyncio.sleep(interval_s)
            if not self.open:
                return
            self._pong = asyncio.Event()
            self._proto.send_ping(b"ka")
            self._flush()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._pong.wait()
            except TimeoutError:
                self.abort(f"keepalive ping timeout: no pong within {timeout_s:g}s")
                return

    def abort(self, reason: str) -> None:
        """Drop the TCP connection now (no closing handshake)."""
        self._abort_reason = reason
        if self._transport is not None:
            self._transport.abort()

    async def close(self) -> None:
        """The closing handshake (code 1000), then the TCP connection, within a bound."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._transport is None or self._lost.done():
            return
        if self._proto.state is State.OPEN:
            self._proto.send_close(1000)
            self._flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(self._lost)
        self._transport.abort()


async def connect(url: str, *, open_timeout_s: float = 10.0, max_size: int = 2**20,
                  max_queued: int = 256) -> WsConnection:
    """Open a connection to `url` (ws:// or wss://); raises `InvalidStatus` (its
    `response.status_code`) when the server refuses the upgrade, `OSError` when the TCP
    connection fails, `TimeoutError` after `open_timeout_s`."""
    uri = parse_uri(url)
    proto = ClientProtocol(uri, max_size=max_size)
    loop = asyncio.get_running_loop()
    ssl_ctx: Any = ssl.create_default_context() if uri.secure else None
    async with asyncio.timeout(open_timeout_s):
        _, conn = await loop.create_connection(
            lambda: WsConnection(proto, max_queued), uri.host, uri.port, ssl=ssl_ctx,
            server_hostname=uri.host if uri.secure else None)
        try:
            await conn._opened
        except BaseException:
            conn.abort("opening handshake failed")
            raise
    return conn


__all__ = ["ConnectionClosed", "InvalidHandshake", "WsConnection", "connect"]
