"""`ops dash --serve`: textual-serve, with sessions that end with their browser tab.

Each browser tab's WebSocket runs one `ops dash` process. textual-serve 1.1 alone leaked
them (issue 16): it starts the app through `sh -c` (a signal to its child reaches the
shell, not the app), its `stop()` sends a "quit" and then waits for the app's output to
end with no deadline, and when the server dies (SIGHUP from a closed terminal, SIGKILL,
a crash) the app's input reaches EOF, textual's web driver ends its input thread without
a word and the app runs on, polling and drawing into a dead pipe; a SIGTERM then starts
its exit, which hangs joining threads nobody stops.

Here, without patching the library:
- `Session` (an `AppService`) starts the app with exec in a process group of its own and
  stops it by quit -> SIGTERM -> SIGKILL to the group, each after a grace; its process is
  killed even when the stop is cancelled midway;
- `SessionServer` (a `Server`) runs one `Session` per WebSocket, ends it when the socket
  closes (tab closed, browser gone: heartbeats catch a silent peer), closes the socket
  when the app ends, and on SIGTERM / SIGINT / SIGHUP stops every session before it exits;
  the page it serves loads nothing from outside this server (the library's template
  asks a web font service for Roboto Mono: here the font file it ships is used);
- `SessionDriver` (the app's driver in a session) exits the app when its input ends,
  with `os._exit` if that exit hangs: a session outlives no server, even a killed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import shlex
import signal
import threading
from asyncio.subprocess import Process
from collections.abc import Sequence
from string import Template
from typing import Any

from aiohttp import WSCloseCode, web
from textual import messages
from textual.drivers.web_driver import WebDriver
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

log = logging.getLogger(__name__)

#: After its input ends, the app has this long to exit on its own before `os._exit`.
ORPHAN_EXIT_S = 5.0


class SessionDriver(WebDriver):
    """textual's web driver, but an app whose server is gone (input at EOF) exits."""

    def run_input_thread(self) -> None:
        super().run_input_thread()
        if self.exit_event.is_set():  # the app is stopping the driver: its normal exit
            return
        self._app.post_message(messages.ExitApp())
        # The exit can hang (output into a dead pipe, threads never told to stop): the
        # process must end regardless, and a daemon timer still runs while it hangs.
        timer = threading.Timer(ORPHAN_EXIT_S, os._exit, args=(3,))
        timer.daemon = True
        timer.start()


class Session(AppService):
    """One browser tab's app process: exec'd in its own process group, stopped for sure."""

    def __init__(self, argv: Sequence[str], *, quit_grace_s: float, term_grace_s: float,
                 **kwargs: Any) -> None:
        super().__init__(shlex.join(argv), **kwargs)
        self.argv = list(argv)
        self.quit_grace_s = quit_grace_s
        self.term_grace_s = term_grace_s

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
        environment = super()._build_environment(width, height)
        environment["TEXTUAL_DRIVER"] = f"{__name__}:{SessionDriver.__name__}"
        return environment

    async def _open_app_process(self, width: int = 80, height: int = 24) -> Process:
        # exec, not a shell: signals reach the app; a new session (and process group):
        # the whole group can be killed, and the terminal's Ctrl-C / hangup reach only
        # the server, which stops its sessions in order.
        self._process = process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self._build_environment(width, height),
            start_new_session=True)
        assert process.stdin is not None
        self._stdin = process.stdin
        return process

    async def run(self) -> None:
        await super().run()  # returns when the app's output ends
        # The app is gone (quit, crash): close the tab's socket so the page says so and
        # the server's handler stops this session.
        with contextlib.suppress(Exception):
            await self.remote_close()

    async def stop(self) -> None:
        """Quit, then SIGTERM, then SIGKILL the process group, each after its grace.
        Idempotent; if cancelled midway the group is killed before the cancel goes on."""
        process = self._process
        if process is None:
            return
        try:
            await self._download_manager.cancel_app_downloads(
                app_service_id=self.app_service_id)
            if process.returncode is None:
                await self.send_meta({"type": "quit"})  # the app's own way out
            if not await _exited(process, self.quit_grace_s):
                log.warning("ops dash --serve: session %d ignored quit; SIGTERM", process.pid)
                self.signal_group(signal.SIGTERM)
                if not await _exited(process, self.term_grace_s):
                    log.warning("ops dash --serve: session %d ignored SIGTERM; SIGKILL",
                                process.pid)
                    self.signal_group(signal.SIGKILL)
                    await process.wait()
        finally:
            if process.returncode is None:
                self.signal_group(signal.SIGKILL)
            if self._task is not None and not self._task.done():
                self._task.cancel()
            self._task = None

    def signal_group(self, signum: signal.Signals) -> None:
        """Send `signum` to the app's process group (a no-op once it is reaped)."""
        process = self._process
        if process is None or process.returncode is not None:
            return  # reaped: its pid may belong to someone else by now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)


async def _exited(process: Process, within_s: float) -> bool:
    try:
        await asyncio.wait_for(process.wait(), within_s)
    except TimeoutError:
        return False
    return True


class SessionServer(Server):
    """textual-serve's server, running each tab's app as a `Session` (see module doc)."""

    def __init__(self, argv: Sequence[str], *, host: str = "127.0.0.1", port: int,
                 title: str, quit_grace_s: float = 5.0, term_grace_s: float = 3.0,
                 heartbeat_s: float = 5.0) -> None:
        super().__init__(shlex.join(argv), host=host, port=port, title=title)
        self.argv = list(argv)
        self.quit_grace_s = quit_grace_s
        self.term_grace_s = term_grace_s
        self.heartbeat_s = heartbeat_s
        self.sessions: dict[Session, web.WebSocketResponse] = {}

    def initialize_logging(self) -> None:
        """Nothing: the entry point configures logging (the library would install its
        own rich handler)."""

    async def on_startup(self, app: web.Application) -> None:
        # A closed terminal (SIGHUP) stops the sessions too; Server.serve handles the rest.
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request_exit)

    async def on_shutdown(self, app: web.Application) -> None:
        sessions = list(self.sessions.items())
        await asyncio.gather(*(session.stop() for session, _ in sessions),
                             return_exceptions=True)
        for _, websocket in sessions:
            with contextlib.suppress(Exception):
                await websocket.close(code=WSCloseCode.GOING_AWAY, message=b"server stopped")

    def serve(self, debug: bool = False) -> None:
        try:
            super().serve(debug)
        finally:  # however the loop ended, no session outlives the server
            for session in list(self.sessions):
                session.signal_group(signal.SIGKILL)

    async def handle_index(self, request: web.Request) -> web.Response:
        static = request.app.router["static"].url_for(filename="/")
        websocket = request.app.router["websocket"].url_for()
        page = _PAGE.substitute(
            title=html.escape(self.title), static=html.escape(str(static).rstrip("/") + "/"),
            websocket=html.escape(f"ws://{request.host}{websocket}"),
            font_size=to_int(request.query.get("fontsize", "16"), 16))
        return web.Response(text=page, content_type="text/html", headers={
            # Belt and braces: the browser itself refuses anything not from this server.
            "Content-Security-Policy": "default-src 'self'; connect-src 'self'; "
            "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self'"})

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        websocket = web.WebSocketResponse(heartbeat=self.heartbeat_s)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        await websocket.prepare(request)
        session = Session(self.argv, quit_grace_s=self.quit_grace_s,
                          term_grace_s=self.term_grace_s, write_bytes=websocket.send_bytes,
                          write_str=websocket.send_str, close=websocket.close,
                          download_manager=self.download_manager, debug=self.debug)
        self.sessions[session] = websocket
        try:
            await session.start(width, height)
            log.info("ops dash --serve: session %s started", session.pid)
            await self._process_messages(websocket, session)
        except Exception:
            log.exception("ops dash --serve: session %s failed", session.pid)
        finally:
            try:
                await session.stop()
            finally:
                del self.sessions[session]
                log.info("ops dash --serve: session %s ended", session.pid)
                await websocket.close()
        return websocket


#: textual-serve's page (templates/app_index.html) without its web-font link: the
#: terminal's first font, Roboto Mono, comes from the file textual-serve ships.
_PAGE = Template("""<!DOCTYPE html>
<html>
  <head>
    <meta charset="utf-8" />
    <title>$title</title>
    <link rel="icon" href="data:," />
    <link rel="stylesheet" href="${static}css/xterm.css" />
    <script src="${static}js/textual.js"></script>
    <style>
      @font-face {
        font-family: "Roboto Mono";
        src: url("${static}fonts/RobotoMono-VariableFont_wght.ttf") format("truetype");
        font-weight: 100 700;
        font-style: normal;
      }
      @font-face {
        font-family: "Roboto Mono";
        src: url("${static}fonts/RobotoMono-Italic-VariableFont_wght.ttf")
          format("truetype");
        font-weight: 100 700;
        font-style: italic;
      }
      body { background: #0c181f; margin: 0; }
      .dialog-container {
        position: absolute; width: 100vw; height: 100vh; display: flex;
        align-items: center; justify-content: center; z-index: 10;
      }
      .shade { position: absolute; width: 100%; height: 100%; background: #0c181f; }
      .intro {
        width: 640px; height: 240px; font-size: 16px; z-index: 20;
        font-family: "Roboto Mono", monospace; text-align: center;
        color: rgba(255, 255, 255, 0.95); background-color: #12232d;
        display: flex; flex-direction: column; align-items: center;
        justify-content: center; margin: 32px;
      }
      body.-first-byte .intro-dialog { display: none; }
      body .textual-terminal { opacity: 0; transition: opacity 0.3s ease-out; }
      body.-first-byte .textual-terminal { opacity: 1; }
      body button {
        padding: 16px 32px; background-color: #5e0ba7; color: rgba(255, 255, 255, 0.95);
        border: none; font-family: "Roboto Mono", monospace; margin: 16px;
      }
      button:hover { background: #ac5af4; cursor: pointer; }
      .closed-dialog { display: none; }
      body.-closed .closed-dialog { display: flex; }
      #start { display: none; }
      #start.-delay { display: block; }
    </style>
  </head>
  <body>
    <div class="dialog-container intro-dialog">
      <div class="shade"></div>
      <div class="intro">
        <div>$title</div>
        <button type="button" onclick="location.search = ''" id="start">Start</button>
      </div>
    </div>
    <div class="dialog-container closed-dialog">
      <div class="shade"></div>
      <div class="intro">
        <div>Session ended.</div>
        <button type="button" onclick="location.reload()">Restart</button>
      </div>
    </div>
    <div id="terminal" class="textual-terminal"
      data-session-websocket-url="$websocket" data-font-size="$font_size"></div>
  </body>
</html>
""")
