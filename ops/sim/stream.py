"""The `trade_updates` WebSocket at /stream, with the stream-side fault knobs.

Protocol (docs/broker-protocol.md section 4): no greeting; the client authenticates, then listens;
every frame is a BINARY frame holding one JSON object. One connection per key: an upgrade
that names an already-connected key in `APCA-API-KEY-ID` is refused with HTTP 429; since
alpaca-py sends its key only in the first message, a second authenticated connection for
a busy key is answered "unauthorized: connection limit exceeded" and closed instead.
Events published while nobody listens are lost, as on the real service.

Fault state lives here too (`EventFaults`: one-shot drop/duplicate/reorder counters, mute,
refused authentication; `StreamChaos`: the persistent random mode); `FaultController`
is the surface that sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from ops.sim.chaos import StreamChaos

log = logging.getLogger(__name__)
Authenticate = Callable[[str | None, str | None], str | None]  # (key, secret) -> account name
DROP_MODES = ("1011", "reset", "1000", "1001", "1012")


def frame(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error_frame(message: str) -> bytes:
    return frame({"stream": "error", "data": {"error_message": message}})


def auth_reply(status: str, action: str, message: str | None = None) -> bytes:
    data: dict[str, Any] = {"status": status, "action": action}
    if message:
        data["message"] = message
    return frame({"stream": "authorization", "data": data})


@dataclass(eq=False)
class Connection:
    name: str
    ws: web.WebSocketResponse
    request: web.Request
    listening: bool = False
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None


@dataclass
class EventFaults:
    """Counters keyed by account name, or "*" for any account."""

    drop: dict[str, int] = field(default_factory=dict)
    duplicate: dict[str, int] = field(default_factory=dict)
    reorder: dict[str, int] = field(default_factory=dict)
    reorder_held: dict[str, list[bytes]] = field(default_factory=dict)
    muted: set[str] = field(default_factory=set)
    muted_buffer: dict[str, list[bytes]] = field(default_factory=dict)
    refuse_auth: set[str] = field(default_factory=set)
    latency_s: float = 0.0
    reap_delay_s: float = 0.0

    @staticmethod
    def applies(names: set[str], name: str) -> bool:
        return name in names or "*" in names

    @staticmethod
    def take(counters: dict[str, int], name: str) -> bool:
        for k in (name, "*"):
            if counters.get(k, 0) > 0:
                counters[k] -= 1
                return True
        return False


def check_drop_mode(mode: str) -> None:
    if mode not in DROP_MODES:
        raise ValueError(f"drop mode must be 1011, reset, 1000, 1001 or 1012, got {mode!r}")


class StreamHub:
    """Registry of live stream connections and the fan-out of trade updates."""

    def __init__(self, authenticate: Authenticate, name_for_key: Callable[[str], str | None]):
        self._authenticate = authenticate
        self._name_for_key = name_for_key
        self.conns: dict[str, Connection] = {}
        self._reserved_until: dict[str, float] = {}
        self.faults = EventFaults()
        self.chaos = StreamChaos(self._send_to)
        self.refused_upgrades = 0
        self.refused_auths = 0
        self._conn_events: dict[str, asyncio.Event] = {}

    # -- bookkeeping -----------------------------------------------------------------------
    def busy(self, name: str) -> bool:
        if name in self.conns:
            return True
        until = self._reserved_until.get(name, 0.0)
        return until > asyncio.get_running_loop().time()

    def connected(self, name: str) -> bool:
        conn = self.conns.get(name)
        return conn is not None and conn.listening

    async def wait_listening(self, name: str, within_s: float = 10.0) -> None:
        """Wait until `name` has an authenticated, listening connection (for tests)."""
        async with asyncio.timeout(within_s):
            while not self.connected(name):
                ev = self._conn_events.setdefault(name, asyncio.Event())
                await ev.wait()
                ev.clear()

    def _changed(self, name: str) -> None:
        ev = self._conn_events.get(name)
        if ev is not None:
            ev.set()

    # -- publishing ------------------------------------------------------------------------
    def publish(self, name: str, data: dict[str, Any]) -> None:
        self.deliver(name, frame({"stream": "trade_updates", "data": data}), faults=True)

    def deliver(self, name: str, payload: bytes, *, faults: bool) -> None:
        conn = self.conns.get(name)
        if conn is None or not conn.listening:
            log.debug("trade update for %s lost: no listening connection", name)
            return
        f = self.faults
        if faults:
            if f.take(f.drop, name):
                log.info("fault: dropped a trade update for %s", name)
                return
            if f.take(f.duplicate, name):
                self._send(name, [payload, payload])
                return
            if f.take(f.reorder, name):
                f.reorder_held.setdefault(name, []).append(payload)
                if f.reorder.get(name, 0) == 0 and f.reorder.get("*", 0) == 0:
                    # The last held event arrived: release everything held, newest first.
                    for held_name, held in list(f.reorder_held.items()):
                        self._send(held_name, list(reversed(held)))
                    f.reorder_held.clear()
                return
            if self.chaos.active_for(name) is not None:
                self.chaos.route(name, conn, payload)
                return
        self._send(name, [payload])

    def _send_to(self, name: str, conn: object, frames: list[bytes]) -> None:
        """Send frames meant for one connection; lost if that connection is gone meanwhile."""
        if self.conns.get(name) is conn:
            self._send(name, frames)

    def _send(self, name: str, frames: list[bytes]) -> None:
        conn = self.conns.get(name)
        if conn is None:
            return
        if self.faults.applies(self.faults.muted, name):
            self.faults.muted_buffer.setdefault(name, []).extend(frames)
            return
        for fr in frames:
            conn.queue.put_nowait(fr)

    def unmute(self, account: str | None, deliver: bool) -> int:
        """Lift mute; queued frames are delivered or dropped. Returns frames delivered."""
        names = list(self.faults.muted_buffer) if account is None else [account]
        if account is None:
            self.faults.muted.clear()
        else:
            self.faults.muted.discard(account)
        delivered = 0
        for name in names:
            if account is None or name == account:
                buffered = self.faults.muted_buffer.pop(name, [])
                conn = self.conns.get(name)
                if deliver and conn is not None:
                    for fr in buffered:
                        conn.queue.put_nowait(fr)
                    delivered += len(buffered)
        return delivered

    def end_mute(self, key: str) -> None:
        """End one mute entry (an account, or "*" for the all-accounts one) and drop the
        frames it held; accounts still muted by another entry keep theirs."""
        f = self.faults
        f.muted.discard(key)
        for name in list(f.muted_buffer):
            if (key in ("*", name)) and not f.applies(f.muted, name):
                del f.muted_buffer[name]

    # -- dropping --------------------------------------------------------------------------
    async def drop(self, account: str | None, mode: str) -> int:
        check_drop_mode(mode)
        targets = [c for n, c in list(self.conns.items()) if account is None or n == account]
        for conn in targets:
            if mode == "reset":
                transport = conn.request.transport
                if transport is not None:
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        # SO_LINGER 0 turns close() into a TCP RST: an abrupt network failure.
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    transport.abort()
            else:
                await conn.ws.close(code=int(mode), message=b"simulated failure")
        return len(targets)

    async def close_all(self) -> None:
        for conn in list(self.conns.values()):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1012, message=b"service restart")

    # -- the handler -----------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        header_key = request.headers.get("APCA-API-KEY-ID")
        if header_key:
            name = self._name_for_key(header_key)
            if name is not None and self.busy(name):
                self.refused_upgrades += 1
                log.info("refused a second stream connection for %s (HTTP 429)", name)
                return web.json_response(
                    {"code": 42910000, "message": "connection limit exceeded"}, status=429
                )
        ws = web.WebSocketResponse(autoping=True, timeout=2.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn: Connection | None = None
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                try:
                    body = json.loads(msg.data)
                except (ValueError, UnicodeDecodeError):
                    await self._reply(ws, conn, error_frame("invalid syntax"))
                    continue
                action = body.get("action") if isinstance(body, dict) else None
                data = body.get("data") if isinstance(body, dict) else None
                data = data if isinstance(data, dict) else {}
                if action == "authenticate":
                    if conn is not None:
                        await self._reply(ws, conn, auth_reply("authorized", "authenticate"))
                        continue
                    name = self._authenticate(data.get("key_id"), data.get("secret_key"))
                    if name is None:
                        await ws.send_bytes(auth_reply("unauthorized", "authenticate",
                                                       "access key verification failed"))
                        break
                    if self.faults.applies(self.faults.refuse_auth, name):
                        # Fault: the stream rejects a valid key while REST accepts it.
                        self.refused_auths += 1
                        log.info("fault: refused stream authentication for %s", name)
                        await ws.send_bytes(auth_reply("unauthorized", "authenticate",
                                                       "access key verification failed"))
                        break
                    if self.busy(name):
                        self.refused_upgrades += 1
                        await ws.send_bytes(auth_reply("unauthorized", "authenticate",
                                                       "connection limit exceeded"))
                        break
                    conn = Connection(name, ws, request)
                    self.conns[name] = conn
                    await ws.send_bytes(auth_reply("authorized", "authenticate"))
                    conn.writer = asyncio.create_task(self._write(conn))
                    log.info("stream connected for %s", name)
                elif action == "listen":
                    if conn is None:
                        await ws.send_bytes(auth_reply("unauthorized", "listen"))
                        continue
                    streams = data.get("streams")
                    streams = [s for s in streams if isinstance(s, str)] if isinstance(
                        streams, list) else []
                    conn.listening = "trade_updates" in streams
                    ack = {"stream": "listening", "data": {"streams": streams}}
                    conn.queue.put_nowait(frame(ack))
                    self._changed(conn.name)
                else:
                    await self._reply(ws, conn, error_frame("invalid action"))
        except ConnectionResetError:
            pass
        finally:
            if conn is not None:
                await self._unregister(conn)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    @staticmethod
    async def _reply(ws: web.WebSocketResponse, conn: Connection | None, payload: bytes) -> None:
        """Answer the client; once authenticated, through the writer so frames never interleave."""
        if conn is None:
            await ws.send_bytes(payload)
        else:
            conn.queue.put_nowait(payload)

    async def _unregister(self, conn: Connection) -> None:
        if self.conns.get(conn.name) is conn:
            del self.conns[conn.name]
            loop_time = asyncio.get_running_loop().time()
            self._reserved_until[conn.name] = loop_time + self.faults.reap_delay_s
            log.info("stream disconnected for %s", conn.name)
        if conn.writer is not None:
            conn.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await conn.writer
        self._changed(conn.name)

    async def _write(self, conn: Connection) -> None:
        while True:
            payload = await conn.queue.get()
            if self.faults.latency_s > 0:
                await asyncio.sleep(self.faults.latency_s)
            try:
                await conn.ws.send_bytes(payload)
            except (ConnectionResetError, RuntimeError):
                return
