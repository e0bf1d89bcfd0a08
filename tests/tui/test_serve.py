"""`ops dash --serve`: the dashboard in a browser on loopback, one `ops dash` per tab,
and no session outliving its tab or its server.

- a real headless Chromium (tests/tui/cdp.py) loads the page, which fetches nothing from
  outside the server; the screenshot shows the dashboard; `?` opens the help; closing the
  tab, killing the browser and SIGTERM to the server each end their session's process;
- without a browser: the page's WebSocket alone (as its JavaScript opens it) shows the
  fixture's figures, and a SIGKILLed server's session exits by itself;
- secrets within the served processes' reach (the database URL's password, in their
  environment; the broker keys in the home's credentials file) never reach the page, the
  screen or the server's log;
- a session app that ignores quit and SIGTERM (and has a child doing the same) is killed,
  group and all, after the graces: when its socket closes, when its peer goes silent
  (no pong to the heartbeat), and when SIGHUP stops the server.

Chromium is Debian's `chromium` (scripts/bootstrap.sh installs it where apt works): the
browser test fails without it under CI=true, and is skipped without it elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from textual.binding import Binding

from ops.core.config import Config
from ops.runtime.credentials import write_secrets_file
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from tests.support import eventually, eventually_sync, free_port
from tests.tui.cdp import (
    Chromium,
    Page,
    changed_fraction,
    chromium_binary,
    distinct_colours,
    png_rgba,
)
from tests.tui.conftest import CONFIG, ROOT
from tests.tui.fixtures import NUMBERS, write_fixture

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

#: Terminal control sequences (CSI ... final byte; OSC ... BEL/ST; single ESC x).
_CONTROL = re.compile(r"\x1b\[[0-9;?<=>]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b.")
#: Text of the fixture the dashboard must show in a browser window (1280x800: about 140
#: columns by 33 rows), and on a 160x48 terminal.
WANTED = ("Processes", "Positions", NUMBERS["large"])
WANTED_WIDE = (*WANTED, "AAPL 2026-06-19 190 call")
#: A session must be gone this long after its tab (quit, then SIGTERM, then SIGKILL).
GONE_WITHIN_S = 20.0


# -- processes -------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _environ(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")


def _sessions(server: subprocess.Popen[bytes]) -> set[int]:
    """The server's live `ops dash` children (one per browser tab)."""
    return {p for p in _children(server.pid)
            if _alive(p) and _cmdline(p).rstrip().endswith("-m ops dash")}


def _kill_all(server: subprocess.Popen[bytes], sessions: set[int]) -> None:
    """The test's own clean-up: whatever is left of the server and its sessions."""
    for pid in sessions | _children(server.pid):
        if not _alive(pid):
            continue  # its pid may be someone else's by now
        for kill in (os.killpg, os.kill):  # the group it leads, or it alone
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if server.poll() is None:
        server.kill()
    server.wait()


@dataclass(frozen=True)
class Served:
    """A running `ops dash --serve` over the dashboard fixture."""

    server: subprocess.Popen[bytes]
    port: int
    log: Path
    seen: set[int]  # the session pids a test saw: all killed at the end, whatever happened
    db_password: str  # in OPS_DATABASE_URL: every session connects with it
    secrets: tuple[str, ...]  # every secret value within reach, db_password included

    def assert_no_secret_in(self, where: str, text: str) -> None:
        shown = [s for s in self.secrets if s in text]
        assert not shown, f"a secret value reached {where}"


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{host}"))


@pytest.fixture
def served(ops_env: RuntimeEnv, config: Config, tmp_path: Path) -> Iterator[Served]:
    """`ops dash --serve` over the dashboard fixture, with real secret values where it can
    reach them: a password in its database URL (the test cluster trusts local sockets, so
    any password connects) and broker keys in the home's credentials file."""
    async def write() -> None:
        async with await Store.open(ops_env, process="fixture") as store:
            await write_fixture(store, datetime.now(UTC))

    asyncio.run(write())
    db_password = "pw-" + secrets.token_hex(12)
    keys = {account.secret_id: {"api_key": "PK" + secrets.token_hex(9).upper(),
                                "api_secret": secrets.token_urlsafe(30), "account_name": name}
            for name, account in config.enabled_accounts().items()}
    write_secrets_file(config.credentials.resolved_file_path(ops_env), keys)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as stream:
        server = subprocess.Popen(
            [sys.executable, "-m", "ops", "dash", "--serve", "--port", str(port)], cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
            env={**os.environ, "OPS_HOME": str(ops_env.home), "OPS_CONFIG": str(CONFIG),
                 "OPS_DATABASE_URL": _with_password(str(ops_env.database_url), db_password)})
    served = Served(server, port, log, set(), db_password, (
        db_password, *(k[f] for k in keys.values() for f in ("api_key", "api_secret"))))
    try:
        eventually_sync(lambda: _listening(port) or server.poll() is not None,
                        "ops dash --serve listening", timeout_s=60)
        assert server.poll() is None, log.read_text()
        yield served
    finally:
        _kill_all(server, served.seen)


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _one_new_session(server: subprocess.Popen[bytes], seen: set[int], log: Path) -> int:
    """Wait for the session a new tab started; return its pid (remembered in `seen`)."""
    eventually_sync(lambda: bool(_sessions(server) - seen), "the tab's ops dash process",
                    timeout_s=30)
    (pid,) = _sessions(server) - seen
    seen.add(pid)
    return pid


async def _gone(pid: int, what: str, log: Path) -> None:
    await eventually(lambda: not _alive(pid), f"session {pid} to end after {what}",
                     GONE_WITHIN_S, explain=lambda: f"server log:\n{_tail(log)}")


# -- the browser -----------------------------------------------------------------------

#: Keeps what the page's terminal receives (the bytes xterm.js draws) in window.__rx, so
#: the test can read the screen's text; the page itself runs unchanged.
_RECORD = """(() => {
  const Native = window.WebSocket, decoder = new TextDecoder();
  window.__rx = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        if (typeof e.data !== "string") window.__rx.push(decoder.decode(e.data, {stream: true}));
      });
    }
  };
})();"""


@pytest.fixture
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        reason = ("no `chromium` on PATH: the browser test of ops dash --serve needs "
                  "Debian's chromium (scripts/bootstrap.sh installs it where apt works)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


async def _open(browser: Chromium, port: int) -> Page:
    page = await browser.new_page()
    for domain in ("Page", "Network", "Log", "Runtime"):
        await page.send(f"{domain}.enable")
    await page.send("Page.addScriptToEvaluateOnNewDocument", source=_RECORD)
    await page.send("Page.navigate", url=f"http://127.0.0.1:{port}/")
    return page


async def _screen(page: Page, since: int = 0) -> str:
    raw = await page.evaluate(f"(window.__rx || []).slice({since}).join('')")
    return _CONTROL.sub("", str(raw))


async def _until(page: Page, what: str, predicate: str, within_s: float = 60) -> None:
    await eventually(lambda: page.evaluate(predicate), f"{what} ({predicate})", within_s, 0.1)


async def _showing(page: Page, wanted: tuple[str, ...], since: int = 0,
                   within_s: float = 60) -> str:
    """The screen's text once every `wanted` string is on it."""
    screen = ""

    async def shown() -> str | None:
        nonlocal screen
        screen = await _screen(page, since)
        return screen if all(w in screen for w in wanted) else None

    return await eventually(shown, f"{wanted} shown", within_s, 0.1,
                            explain=lambda: repr(screen[-2000:]))


async def _screenshot_until(page: Page, path: Path, what: str,
                            good: Callable[[list[bytes]], bool],
                            within_s: float = 30) -> list[bytes]:
    """Screenshots until `good(rows)` holds (the terminal fades in, redraws come later)."""
    async def shot() -> list[bytes] | None:
        _, _, rows = png_rgba(await page.screenshot(path))
        return rows if good(rows) else None

    return await eventually(shot, f"{what} in the screenshot {path}", within_s, 0.2)


def test_browser_session_shows_the_dashboard_and_ends_with_its_tab(
        chromium: str, served: Served, tmp_path: Path) -> None:
    server, port, log, seen = served.server, served.port, served.log, served.seen
    from tui.app import Dashboard

    # Descriptions only the help lists (keys hidden from the footer).
    hidden = [b.description for b in Dashboard.BINDINGS
              if isinstance(b, Binding) and not b.show and b.description]

    async def scenario() -> None:
        async with await Chromium.start(chromium, tmp_path / "profile1") as browser:
            page = await _open(browser, port)
            before = await _showing(page, WANTED)
            session = _one_new_session(server, seen, log)
            await _until(page, "the terminal shown", "document.body.classList"
                         ".contains('-first-byte')")
            # Not blank: a dashboard of text in many colours (a blank page has one, the
            # page's "connecting" box a few dozen).
            shot = await _screenshot_until(page, tmp_path / "dashboard.png", "the dashboard",
                                           lambda rows: distinct_colours(rows) > 400)

            # Nothing came from anywhere but this server; the terminal's font is its own.
            urls = [e["params"]["request"]["url"] for e in page.events
                    if e["method"] == "Network.requestWillBeSent"]
            urls += [e["params"]["url"] for e in page.events
                     if e["method"] == "Network.webSocketCreated"]
            local = (f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/")
            assert urls and all(u.startswith(local) for u in urls), urls
            assert any(u.endswith(".ttf") for u in urls), urls
            assert await page.evaluate("document.fonts.check('16px \"Roboto Mono\"')")
            refused = [e["params"]["entry"]["text"] for e in page.events
                       if e["method"] == "Log.entryAdded"
                       and "Content Security Policy" in e["params"]["entry"]["text"]]
            assert not refused, refused

            # A key changes the view: `?` opens the help over the dashboard.
            await page.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
            mark = await page.evaluate("window.__rx.length")
            await page.type_key("?", "Slash", 191, shift=True)
            new = [d for d in hidden if d not in before]
            assert new, (hidden, before[-500:])

            async def help_shown() -> bool:
                after = await _screen(page, mark)
                return any(d in after for d in new)

            await eventually(help_shown, f"the help ({new}) after '?'", 20, 0.1)
            await _screenshot_until(page, tmp_path / "help.png", "the help over the dashboard",
                                    lambda rows: changed_fraction(shot, rows) > 0.2)

            served.assert_no_secret_in("the screen", await _screen(page))

            # The tab closes: its process ends, nothing else is left.
            await page.close()
            await _gone(session, "its tab closed", log)
            assert _sessions(server) == set()

            # The browser dies without a word (SIGKILL): its session ends too.
            page = await _open(browser, port)
            await _showing(page, WANTED)
            session = _one_new_session(server, seen, log)
            await browser.kill()
            await _gone(session, "its browser was killed", log)

        async with await Chromium.start(chromium, tmp_path / "profile2") as browser:
            page = await _open(browser, port)
            await _showing(page, WANTED)
            session = _one_new_session(server, seen, log)
            # SIGTERM to the server: the session ends, the page says so, the server exits.
            server.send_signal(signal.SIGTERM)
            await _until(page, "the page's 'Session ended'",
                         "document.body.classList.contains('-closed')", within_s=20)
            await _gone(session, "SIGTERM to the server", log)

    asyncio.run(scenario())
    assert server.wait(timeout=20) == 0, log.read_text()[-3000:]
    assert not any(_alive(pid) for pid in seen)
    assert "serving on http://127.0.0.1" in log.read_text()
    served.assert_no_secret_in("the server's log", log.read_text())


# -- without a browser -----------------------------------------------------------------


async def _tab(port: int, wanted: tuple[str, ...], within_s: float) -> tuple[
        str, aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    """Open the page's WebSocket as its JavaScript does; read until `wanted` shows."""
    http = aiohttp.ClientSession()
    deadline = time.monotonic() + within_s
    raw = screen = ""
    try:
        ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws?width=160&height=48")
        while not all(w in screen for w in wanted):
            left = deadline - time.monotonic()
            missing = [w for w in wanted if w not in screen]
            assert left > 0, f"{missing} never shown; the socket saw: {screen[-3000:]}"
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
    except BaseException:
        await http.close()
        raise
    return screen, http, ws


def test_serve_page_and_socket_show_the_dashboard_and_outlive_no_server(
        served: Served) -> None:
    server, port, log, seen = served.server, served.port, served.log, served.seen

    async def scenario() -> tuple[str, str, int]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200
                page = await resp.text()
        screen, http, ws = await _tab(port, WANTED_WIDE, within_s=60)
        try:
            session = _one_new_session(server, seen, log)
            # The session has the database password in reach (and connected with it).
            assert served.db_password in _environ(session)
            # The server dies without a chance to stop anything: its session notices
            # (its input ends) and exits by itself.
            server.kill()
            await _gone(session, "its server was SIGKILLed", log)
        finally:
            await ws.close()
            await http.close()
        return page, screen, session

    page, screen, session = asyncio.run(scenario())
    assert "ops dash" in page and f"ws://127.0.0.1:{port}/ws" in page
    # The page names nothing outside this server (fonts, scripts, styles).
    assert re.findall(r"(?:https?|wss?)://(?!127\.0\.0\.1:)[^\"' )]+", page) == []
    # Secrets never reach the browser or the log.
    served.assert_no_secret_in("the page", page)
    served.assert_no_secret_in("the screen", screen)
    served.assert_no_secret_in("the server's log", log.read_text())


#: A session app that is deaf to quit and SIGTERM, with a child that is deaf to SIGTERM:
#: it says it is a Textual app (the prelude textual-serve waits for), then sleeps.
_STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c",
                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "time.sleep(600)"])
print("__GANGLION__", flush=True)
time.sleep(600)
"""

_SERVER = """
import sys
from ops.runtime.logs import configure_logging
from tui.serve import SessionServer
configure_logging("serve-test")
SessionServer([sys.executable, "-c", sys.argv[2]], port=int(sys.argv[1]), title="stubborn",
              quit_grace_s=0.5, term_grace_s=0.5).serve()
"""


def test_a_session_deaf_to_quit_and_sigterm_is_killed_with_its_group(
        tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as stream:
        server = subprocess.Popen([sys.executable, "-c", _SERVER, str(port), _STUBBORN],
                                  cwd=ROOT, stdin=subprocess.DEVNULL, stdout=stream,
                                  stderr=subprocess.STDOUT)
    seen: set[int] = set()

    def group(session: int) -> set[int]:
        eventually_sync(lambda: _children(session), "the session's own child")
        return {session, *_children(session)}

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            session = next(iter(_wait_children(server)))
            members = group(session)
            seen.update(members)
            await ws.close()  # the tab goes away; the app ignores quit, then SIGTERM
            for pid in members:
                await _gone(pid, "its socket closed", log)
            text = log.read_text()
            assert "ignored quit" in text and "ignored SIGTERM; SIGKILL" in text, text

            # A peer that went silent (a frozen browser, a dead network: no close, no
            # pong): the server's heartbeat gives up on it and stops its session.
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws", autoping=False)
            members = group(next(iter(_wait_children(server) - seen)))
            seen.update(members)
            for pid in members:
                await _gone(pid, "its peer went silent", log)
            await ws.close()

            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            members = group(next(iter(_wait_children(server) - seen)))
            seen.update(members)
            server.send_signal(signal.SIGHUP)  # the terminal the server ran in closed
            for pid in members:
                await _gone(pid, "SIGHUP to the server", log)
            await ws.close()

    try:
        eventually_sync(lambda: _listening(port) or server.poll() is not None,
                        "server listening")
        asyncio.run(scenario())
        assert server.wait(timeout=20) == 0, log.read_text()
    finally:
        _kill_all(server, seen)
    assert not any(_alive(pid) for pid in seen)


def _wait_children(server: subprocess.Popen[bytes]) -> set[int]:
    """The server's live children, once it has one."""
    eventually_sync(lambda: any(_alive(p) for p in _children(server.pid)),
                    "the session's process")
    return {p for p in _children(server.pid) if _alive(p)}
