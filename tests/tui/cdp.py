"""A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol with
aiohttp, for the browser test of `ops dash --serve`; plus a PNG reader for its screenshots.

`Chromium.start` launches the browser in a process group of its own with a fresh profile
and the flags that keep it off the network (no background requests, no QUIC, no updates),
and `kill` ends the whole group. One WebSocket to the browser carries every page's
commands (flattened target sessions); events are kept per page, in arrival order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import struct
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import eventually

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1280,800")


def chromium_binary() -> str | None:
    return shutil.which("chromium")


@dataclass
class Page:
    browser: Chromium
    target_id: str
    session_id: str
    events: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", expression=expression,
                                returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression!r} failed in the page: "
                                 f"{reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def screenshot(self, path: Path) -> bytes:
        """A PNG of the page at half size (kept in `path` for whoever debugs a failure)."""
        metrics = await self.send("Page.getLayoutMetrics")
        view = metrics["cssVisualViewport"]
        reply = await self.send("Page.captureScreenshot", format="png", clip={
            "x": 0, "y": 0, "width": view["clientWidth"], "height": view["clientHeight"],
            "scale": 0.5})
        data = base64.b64decode(reply["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data

    async def type_key(self, key: str, code: str, key_code: int, shift: bool = False) -> None:
        """One printable key, down and up, as a keyboard would send it."""
        modifiers = 8 if shift else 0
        await self.send("Input.dispatchKeyEvent", type="keyDown", key=key, code=code,
                        text=key, unmodifiedText=key, windowsVirtualKeyCode=key_code,
                        modifiers=modifiers)
        await self.send("Input.dispatchKeyEvent", type="keyUp", key=key, code=code,
                        windowsVirtualKeyCode=key_code, modifiers=modifiers)

    async def close(self) -> None:
        await self.browser.send("Target.closeTarget", {"targetId": self.target_id})


class Chromium:
    """One headless browser; `async with await Chromium.start(...)` kills it on the way out."""

    def __init__(self, proc: subprocess.Popen[bytes], ws: aiohttp.ClientWebSocketResponse,
                 http: aiohttp.ClientSession) -> None:
        self.proc = proc
        self._ws = ws
        self._http = http
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, binary: str, profile: Path, within_s: float = 30) -> Chromium:
        proc = await asyncio.to_thread(_launch, binary, profile)
        try:
            port_file = profile / "DevToolsActivePort"
            log = profile.parent / "chromium.log"

            async def opened() -> list[str] | None:
                lines = await asyncio.to_thread(_lines, port_file)
                assert lines[1:] or proc.poll() is None, f"chromium exited; see {log}"
                return lines if lines[1:] else None

            lines = await eventually(opened, f"chromium's DevTools port (see {log})",
                                     within_s, 0.05)
            port, path = lines[:2]
            http = aiohttp.ClientSession()
            ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        except BaseException:
            _kill_group(proc)
            raise
        return cls(proc, ws, http)

    async def __aenter__(self) -> Chromium:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL the browser's whole process group (as a crash or the OOM killer would)."""
        _kill_group(self.proc)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()
        await self._http.close()

    async def send(self, method: str, params: dict[str, Any] | None = None, *,
                   session_id: str | None = None, timeout_s: float = 30) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send_json(message)
        try:
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(ident, None)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget",
                                   {"targetId": target["targetId"], "flatten": True})
        page = Page(self, target["targetId"], attached["sessionId"])
        self._pages[page.session_id] = page
        return page

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.json()
            if "id" in data:
                future = self._pending.get(data["id"])
                if future is not None and not future.done():
                    future.set_result(data)
            elif (page := self._pages.get(data.get("sessionId", ""))) is not None:
                page.events.append(data)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(AssertionError("chromium's DevTools socket closed"))


def _launch(binary: str, profile: Path) -> subprocess.Popen[bytes]:
    """Chromium with a fresh profile, in a process group of its own (killed as one)."""
    profile.mkdir(parents=True, exist_ok=True)
    with (profile.parent / "chromium.log").open("wb") as log:
        return subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


def _lines(path: Path) -> list[str]:
    """DevToolsActivePort's lines (port, browser path) once chromium wrote both."""
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def png_rgba(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGBA rows of an 8-bit RGB/RGBA non-interlaced PNG (what
    Chromium writes), read with zlib alone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            channels = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind_byte, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        _unfilter(kind_byte, line, prev, channels)
        rows.append(bytes(line) if channels == 4 else _rgb_to_rgba(line))
        prev = line
    return width, height, rows


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    n = len(line)
    if kind == 1:
        for i in range(bpp, n):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif kind == 2:
        for i in range(n):
            line[i] = (line[i] + prev[i]) & 0xFF
    elif kind == 3:
        for i in range(n):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(n):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + pred) & 0xFF
    else:
        raise AssertionError(f"unknown PNG filter {kind}")


def _rgb_to_rgba(line: bytearray) -> bytes:
    out = bytearray()
    for i in range(0, len(line), 3):
        out += line[i:i + 3] + b"\xff"
    return bytes(out)


def distinct_colours(rows: list[bytes]) -> int:
    return len({row[i:i + 4] for row in rows for i in range(0, len(row), 4)})


def changed_fraction(a: list[bytes], b: list[bytes]) -> float:
    """The share of pixels that differ between two same-sized images."""
    total = changed = 0
    for row_a, row_b in zip(a, b, strict=True):
        for i in range(0, len(row_a), 4):
            total += 1
            changed += row_a[i:i + 4] != row_b[i:i + 4]
    return changed / total if total else 0.0
