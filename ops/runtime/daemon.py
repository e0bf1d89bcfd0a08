"""The one daemon lifecycle every role process uses (shaped like saq's worker).

`Daemon.run()`: install signal handlers (SIGTERM/SIGINT only set the stop event; SIGUSR1
calls the registered "run now" callback) -> run the startup hook (open pools) -> start
the owned services as tasks -> wait for the stop event or a service ending -> `stop()`:
ask every service to stop, give in-flight work `grace_s` to finish, cancel what is still
running (only the tasks this daemon owns), run the shutdown hook, remove the handlers.

A service is anything with `name`, `async run()` and `request_stop()`: a `Ticker`, a
`HeartbeatTask`, a trade stream. A service whose `run()` returns or raises before a stop
was asked for is a failure: the daemon stops the rest and `run()` returns exit code 1, so
supervisord restarts the process instead of leaving it running without that duty.

Not a TaskGroup: a TaskGroup cancels every sibling at once when one fails, with no grace
period for the others' in-flight work; the explicit task set below gives the same
ownership (nothing outlives `run()`) plus the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 5.0  # keep below supervisord's stopwaitsecs (rendered as 10 s)


class Service(Protocol):
    name: str

    async def run(self) -> None: ...

    def request_stop(self) -> None: ...


class Daemon:
    """Owns a process's services from start to a bounded, idempotent stop."""

    def __init__(
        self,
        name: str,
        services: Sequence[Service] = (),
        *,
        grace_s: float = DEFAULT_GRACE_S,
        startup: Callable[[], Awaitable[None]] | None = None,
        shutdown: Callable[[], Awaitable[None]] | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        if not grace_s >= 0:
            raise ValueError(f"daemon {name}: grace_s must be >= 0, got {grace_s!r}")
        self.name = name
        self.grace_s = grace_s
        self._services: list[Service] = list(services)
        self._startup = startup
        self._shutdown = shutdown
        self._install_signals = install_signal_handlers
        self._run_now: Callable[[], object] | None = None
        self._stop_event = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._tasks: dict[asyncio.Task[None], Service] = {}
        self._failed: list[str] = []
        self.stop_reason: str | None = None

    def add(self, service: Service) -> None:
        if self._tasks:
            raise RuntimeError(f"daemon {self.name}: add services before run()")
        self._services.append(service)

    def on_run_now(self, callback: Callable[[], object]) -> None:
        """Register what SIGUSR1 does (e.g. `ticker.trigger`)."""
        self._run_now = callback

    def request_stop(self, reason: str = "requested") -> None:
        """Signal-safe: only sets the stop event."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop_event.set()

    async def run(self) -> int:
        """Run until stopped; 0 after a requested stop, 1 when a service failed or ended."""
        loop = asyncio.get_running_loop()
        installed = self._install_handlers(loop) if self._install_signals else []
        try:
            if self._startup is not None:
                await self._startup()
            for svc in self._services:
                task = asyncio.create_task(self._guard(svc), name=f"{self.name}:{svc.name}")
                self._tasks[task] = svc
            log.info("daemon %s: running %d service(s)", self.name, len(self._tasks))
            await self._stop_event.wait()
            log.info("daemon %s: stopping (%s)", self.name, self.stop_reason)
        finally:
            await self.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
        return 1 if self._failed else 0

    async def _guard(self, svc: Service) -> None:
        try:
            await svc.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("daemon %s: service %s failed", self.name, svc.name)
            self._failed.append(svc.name)
            self.request_stop(f"service {svc.name} failed")
            return
        if not self._stop_event.is_set():
            log.error("daemon %s: service %s ended on its own", self.name, svc.name)
            self._failed.append(svc.name)
            self.request_stop(f"service {svc.name} ended")

    async def stop(self) -> None:
        """Idempotent: stop services, wait `grace_s` for in-flight work, cancel the rest."""
        self._stop_event.set()
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            for svc in self._services:
                try:
                    svc.request_stop()
                except Exception:
                    log.exception("daemon %s: request_stop failed for %s", self.name, svc.name)
            pending = {t for t in self._tasks if not t.done()}
            if pending:
                _, pending = await asyncio.wait(pending, timeout=self.grace_s)
            if pending:
                names = sorted(self._tasks[t].name for t in pending)
                log.warning(
                    "daemon %s: grace period %.1fs over, cancelling %s",
                    self.name, self.grace_s, ", ".join(names),
                )
                for t in pending:
                    t.cancel()
                await asyncio.wait(pending)
            for t in self._tasks:
                if not t.cancelled() and t.exception() is not None:
                    log.error("daemon %s: task %s ended with %r", self.name, t.get_name(),
                              t.exception())
            if self._shutdown is not None:
                try:
                    await self._shutdown()
                except Exception:
                    log.exception("daemon %s: shutdown hook failed", self.name)
        finally:
            self._stopped.set()
            log.info("daemon %s: stopped", self.name)

    def _install_handlers(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
            installed.append(sig)
        loop.add_signal_handler(signal.SIGUSR1, self._on_run_now)
        installed.append(signal.SIGUSR1)
        return installed

    def _on_run_now(self) -> None:
        if self._run_now is None:
            log.info("daemon %s: SIGUSR1 ignored (no run-now callback)", self.name)
            return
        log.info("daemon %s: SIGUSR1 -> run now", self.name)
        try:
            self._run_now()
        except Exception:
            log.exception("daemon %s: run-now callback failed", self.name)


def exit_despite_leaked_threads(name: str, code: int) -> int:
    """`code`, once the process's event loop has closed; but if a non-daemon thread is still
    alive then (something opened and never closed, e.g. an aiosqlite connection), exit at
    once with `code`, logging the threads' names: the interpreter would otherwise wait on
    them forever, and a supervised process that cannot exit looks RUNNING until killed."""
    leftover = sorted(t.name for t in threading.enumerate()
                      if t is not threading.main_thread() and t.is_alive() and not t.daemon)
    if not leftover:
        return code
    log.error("%s: %d thread(s) still running at exit (%s): exiting without waiting for "
              "them", name, len(leftover), ", ".join(leftover))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
