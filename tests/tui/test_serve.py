"""`ops dash --serve`: the same dashboard in a browser, through textual-serve, on loopback.

A real `ops dash --serve` process; the test plays the browser: it loads the page, then
opens the page's WebSocket (as textual-serve's JavaScript does), which starts one
`ops dash` for that tab, and reads the terminal output the app sends until the
dashboard's panels show, with the fixture's figures in them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import aiohttp

from ops.env import RuntimeEnv
from ops.store import Store
from tests.support import free_port
from tests.tui.conftest import CONFIG, ROOT
from tests.tui.fixtures import write_fixture

#: Terminal control sequences (CSI ... final byte; OSC ... BEL/ST; single ESC x).
_CONTROL = re.compile(r"\x1b\[[0-9;?<=>]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b.")


async def _page_and_screen(port: int, wanted: tuple[str, ...], within_s: float) -> tuple[
        str, str]:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as http:
        while True:  # the server binds a moment after the process starts
            try:
                async with http.get(base + "/") as resp:
                    assert resp.status == 200
                    page = await resp.text()
                    break
            except aiohttp.ClientConnectorError:
                assert time.monotonic() < deadline, "ops dash --serve never listened"
                await asyncio.sleep(0.1)
        raw = screen = ""
        async with http.ws_connect(base + "/ws?width=160&height=48") as ws:
            while not all(w in screen for w in wanted):
                left = deadline - time.monotonic()
                missing = [w for w in wanted if w not in screen]
                assert left > 0, f"{missing} never shown; the browser saw: {screen[-3000:]}"
                try:
                    msg = await ws.receive(timeout=left)
                except TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.BINARY:
                    raw += msg.data.decode("utf-8", "replace")
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    raw += msg.data
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    raise AssertionError(f"the app's WebSocket closed: {screen[-2000:]!r}")
                screen = _CONTROL.sub("", raw)  # the text the browser's terminal shows
            await ws.send_str('["stdin", "q"]')  # quit the tab's app
    return page, screen


def test_serve_offers_the_dashboard_in_a_browser_on_loopback(ops_env: RuntimeEnv) -> None:
    async def write() -> None:
        async with await Store.open(ops_env, process="fixture") as store:
            await write_fixture(store, datetime.now(UTC))

    asyncio.run(write())
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops", "dash", "--serve", "--port", str(port)], cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OPS_HOME": str(ops_env.home), "OPS_CONFIG": str(CONFIG),
             "OPS_DATABASE_URL": str(ops_env.database_url)})
    try:
        page, screen = asyncio.run(_page_and_screen(
            port, ("Processes", "Positions", "PASIM0000001", "AAPL 2026-06-19 190 call"),
            within_s=60))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "ops dash" in page and "/ws" in page  # the page that runs the terminal
    assert f"serving on http://127.0.0.1:{port}" in err
    # Secrets never reach the browser (the demo's keys are in the environment of no
    # process here, but the account's API key id must not be on screen either way).
    assert "api_secret" not in screen
