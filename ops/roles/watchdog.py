"""The watchdog process: a supervisord event listener that restarts hung processes.

supervisord runs `ops watchdog` as `[eventlistener:watchdog]` (see `eventlistener_section`).
Its stdout belongs to the listener protocol, so at start the real stdout is kept for the
protocol and fd 1 is pointed at stderr: a stray print can never corrupt the protocol.

Protocol (`ListenerProtocol`, in a thread): write `READY\\n`, read one header line and
`len` bytes of payload, hand the event to the event loop (a non-blocking enqueue), answer
`RESULT 2\\nOK` at once. Work never happens between READY and RESULT, so supervisord is
never blocked by the watchdog, whatever Postgres or a sink does.

Work happens in passes (`Watchdog.pass_once`), run by a 1 s `Ticker` and triggered at once
by every TICK and PROCESS_STATE event: read supervisord's process info (XML-RPC, with a
timeout), heartbeats, last completed runs, open incidents and kill switches (from Postgres,
or the SQLite buffer during an outage), `ops.core.watchdog.decide`, then act: SIGKILL through
XML-RPC (autorestart brings the process back; a SIGSTOPped process never honours SIGTERM,
so a plain stop would wait `stopwaitsecs`), start attempts, incidents through the Store,
alerts into the outbox (delivered by `AlertWorker`, never inline), metrics published.
The 1 s pass (not TICK_5 alone) is what keeps "SIGSTOP -> restarted" under 10 s with the
default 5 s stale bound.

Incidents opened by roles (drift, account mismatch, ...) are alerted too: when they first
appear among the open incidents, and when they leave a Postgres-read list. All but the
observing through supervisord and the kills/starts is shared with the monitor role (the
driver without supervisord): `ops.roles.oversight.Overseer`.
Run by hand (no `SUPERVISOR_PROCESS_NAME` in the environment) it polls without events.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import logging
import os
import select
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from ops.core.config import Config, ConfigError
from ops.core.models import Heartbeat
from ops.core.watchdog import (
    Action,
    Kill,
    Observed,
    ProcessEvent,
    Restart,
    Start,
    observe,
)
from ops.notify.alerts import (
    AlertWorker,
    DeadmanPinger,
    Outbox,
    default_path,
    sinks_from_config,
)
from ops.notify.metrics import MetricsExporter, MetricsServer, serve
from ops.roles.oversight import IO_TIMEOUT_S, Overseer
from ops.runtime.config import ConfigReloader, load_config
from ops.runtime.env import RuntimeEnv, runtime_env
from ops.supervise.supervisor import ProcessInfo, SupervisorClient, SupervisorUnavailable

log = logging.getLogger(__name__)

PROCESS_NAME = "watchdog"
PASS_INTERVAL_S = 1.0  # see the module docstring: the 10 s restart bound needs it
PASS_TIMEOUT_S = 20.0  # a pass stuck on I/O is abandoned (recorded as a timeout run)
RELOAD_EVERY_S = 5.0  # config file checked for edits this often
#: Processes without heartbeats: their supervisord state is all there is to judge.
NO_HEARTBEAT = frozenset({"postgres", "sim"})


# --- the listener protocol ---------------------------------------------------------------------


def parse_tokens(line: str) -> dict[str, str]:
    """`a:1 b:2` -> {"a": "1", "b": "2"} (supervisord's header and state-payload format)."""
    out: dict[str, str] = {}
    for tok in line.split():
        k, sep, v = tok.partition(":")
        if sep:
            out[k] = v
    return out


def parse_event(headers: Mapping[str, str], payload: str) -> ProcessEvent | None:
    """A PROCESS_STATE_* event as a `ProcessEvent`; None for every other event."""
    name = headers.get("eventname", "")
    if not name.startswith("PROCESS_STATE_"):
        return None
    body = parse_tokens(payload.split("\n", 1)[0])
    expected = body.get("expected")
    pid = body.get("pid")
    return ProcessEvent(
        name=body.get("processname", ""),
        from_state=body.get("from_state", ""),
        to_state=name.removeprefix("PROCESS_STATE_"),
        expected=None if expected is None else expected == "1",
        pid=int(pid) if pid and pid.isdigit() else None,
    )


class ListenerProtocol:
    """supervisord's event-listener protocol over two binary streams (blocking; a thread)."""

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes],
                 on_event: Callable[[dict[str, str], str], None]) -> None:
        self._in = stdin
        self._out = stdout
        self._on_event = on_event
        self._stop = threading.Event()
        self.events = 0

    def stop(self) -> None:
        """Make `serve` return at its next wait (within half a second)."""
        self._stop.set()

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()

    def _wait_readable(self) -> bool:
        """True once stdin has data or EOF; False when asked to stop first. (A thread
        blocked in read() at interpreter exit aborts the process: never block blind.)"""
        try:
            fd = self._in.fileno()
        except (OSError, ValueError, io.UnsupportedOperation):
            return not self._stop.is_set()  # an in-memory stream (tests): never blocks
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                return True
        return False

    def serve(self) -> None:
        """Until stdin closes (supervisord went away) or `stop()`."""
        while True:
            self._write(b"READY\n")
            if not self._wait_readable():
                return
            line = self._in.readline()
            if not line:
                return
            headers = parse_tokens(line.decode("utf-8", "replace"))
            try:
                length = int(headers.get("len", "0"))
            except ValueError:
                length = 0
            payload = self._in.read(length).decode("utf-8", "replace") if length else ""
            try:
                self._on_event(headers, payload)
            except Exception:  # the answer below must go out whatever happened
                log.exception("watchdog: event handler failed")
            self.events += 1
            self._write(b"RESULT 2\nOK")


class EventFeed:
    """Daemon service: runs the protocol thread; ends when supervisord closes stdin."""

    name = "event-feed"

    def __init__(self, protocol_in: IO[bytes], protocol_out: IO[bytes],
                 on_event: Callable[[dict[str, str], str], None]) -> None:
        self._stop = asyncio.Event()
        self._on_event = on_event
        self.protocol = ListenerProtocol(protocol_in, protocol_out, self._dispatch)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _dispatch(self, headers: dict[str, str], payload: str) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_event, headers, payload)

    def request_stop(self) -> None:
        self._stop.set()
        self.protocol.stop()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        eof = asyncio.Event()
        loop = self._loop

        def serve() -> None:
            try:
                self.protocol.serve()
            except Exception:
                log.exception("watchdog: listener protocol failed")
            finally:
                loop.call_soon_threadsafe(eof.set)

        thread = threading.Thread(target=serve, name="supervisor-events", daemon=True)
        thread.start()
        stop = asyncio.create_task(self._stop.wait())
        ended = asyncio.create_task(eof.wait())
        await asyncio.wait({stop, ended}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        ended.cancel()
        self.protocol.stop()
        await asyncio.to_thread(thread.join, 2.0)
        if eof.is_set() and not self._stop.is_set():
            log.error("watchdog: supervisord closed the event stream; exiting")


# --- one pass ----------------------------------------------------------------------------------


def signal_stopped(pid: int) -> bool:
    """Whether `pid` is stopped by a signal (SIGSTOP, SIGTSTP: state T in /proc/PID/stat).
    False when it cannot be read (gone, another host's, no /proc)."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["T"]


def _identity(info: ProcessInfo, hb: Heartbeat | None, config: Config) -> tuple[str | None, str]:
    """(account, role) of a program: from its heartbeat, else from `<account>-<role>`."""
    if hb is not None:
        return hb.account, hb.role
    if info.group != info.name and info.name.startswith(info.group + "-"):
        return info.group, info.name[len(info.group) + 1:]
    for account in config.accounts:
        if info.name.startswith(account + "-"):
            return account, info.name[len(account) + 1:]
    return None, info.name


class Watchdog(Overseer):
    """The supervisord driver: observes through XML-RPC and process-state events, and
    carries out kills, restarts and starts besides the shared incident work."""

    def __init__(
        self,
        env: RuntimeEnv,
        config: Config,
        store: Any,
        supervisor: SupervisorClient,
        outbox: Outbox,
        *,
        sinks: list[str],
        exporter: MetricsExporter | None = None,
        worker: AlertWorker | None = None,
        deadman: DeadmanPinger | None = None,
        self_name: str = PROCESS_NAME,
    ) -> None:
        super().__init__(env, config, store, outbox, name=PROCESS_NAME, acts=True,
                         sinks=sinks, exporter=exporter, worker=worker, deadman=deadman)
        self.sup = supervisor
        self.self_name = self_name
        self.events: list[ProcessEvent] = []
        self.ticks = 0
        self._reloader = ConfigReloader(env.config_path, config)
        self._reload_at = time.monotonic()
        self.trigger: Callable[[], object] = lambda: None

    # events arrive on the loop via call_soon_threadsafe
    def on_event(self, headers: Mapping[str, str], payload: str) -> None:
        name = headers.get("eventname", "")
        if name.startswith("TICK"):
            # The 1 s pass already runs; a TICK proves supervisord still talks to us.
            self.ticks += 1
            return
        ev = parse_event(headers, payload)
        if ev is None or ev.name == self.self_name:
            return
        self.events.append(ev)
        if len(self.events) > 1000:  # a pass always drains them; never grow unbounded
            del self.events[:-1000]
        log.info("supervisord: %s %s -> %s%s", ev.name, ev.from_state, ev.to_state,
                 "" if ev.expected is None else f" (expected={ev.expected})")
        self.trigger()

    async def maybe_reload(self, *, force: bool = False) -> bool:
        """Follow config edits (every RELOAD_EVERY_S): the roles hot-reload their intervals,
        so the watchdog must judge gaps against the same ones. A bad edit keeps the last
        good config (ConfigReloader logs it). Sinks and the metrics port need a restart."""
        if not force and time.monotonic() - self._reload_at < RELOAD_EVERY_S:
            return False
        self._reload_at = time.monotonic()
        new = await asyncio.to_thread(self._reloader.poll)
        if new is None:
            return False
        if new.alerts != self.config.alerts or new.metrics != self.config.metrics:
            log.warning("watchdog: [alerts]/[metrics] changed: restart the watchdog to apply "
                        "(supervisorctl restart watchdog)")
        self.apply_config(new)
        log.info("watchdog: config reloaded (stale bound %gs, gap bounds %s)",
                 new.watchdog.heartbeat_stale_s, dict(new.watchdog.gap_bounds_s))
        return True

    async def pass_once(self) -> None:
        t0 = time.monotonic()
        await self.maybe_reload()
        if self.storage_refused(PASS_INTERVAL_S):
            return
        try:
            await self.adopt()
            infos = await self._io("supervisord getAllProcessInfo",
                                   asyncio.to_thread(self.sup.processes))
            reads = await self.read([i.name for i in infos])
        except (SupervisorUnavailable, xmlrpc.client.Fault) as exc:
            # supervisord restarting or shutting down (SHUTDOWN_STATE): nothing to judge or
            # act on; say so once per distinct reason, not every second.
            self.skipped(f"supervisord unavailable: {exc}")
            return
        now = datetime.now(UTC)
        observed: list[Observed] = []
        for info in infos:
            if info.name == self.self_name or info.group == self.self_name:
                continue
            hb = reads.heartbeats.get(info.name)
            account, role = _identity(info, hb, self.config)
            observed.append(observe(
                name=info.name, qualified=info.qualified, account=account, role=role,
                state=info.state, pid=info.pid, start=float(info.start),
                exitstatus=info.exitstatus, spawnerr=info.spawnerr, heartbeat=hb,
                run=reads.runs.get(info.name),
                expected_interval_s=self.config.role_interval(role, account),
                paused=reads.paused_role(account, role),
                heartbeats=info.name not in NO_HEARTBEAT, now=now,
                failure=self.failure(hb, account), stopped=signal_stopped(info.pid),
            ))
        events, self.events = self.events, []
        events = await self._exit_causes(events)
        await self.conclude(observed, events, reads, now, t0)

    async def _exit_causes(self, events: list[ProcessEvent]) -> list[ProcessEvent]:
        """Unexpected exits with how they ended (a signal, an exit code) from supervisord's
        log; the events as they are when the log cannot be read."""
        if not any(e.to_state == "EXITED" and e.expected is False for e in events):
            return events
        try:
            causes = await self._io("supervisord log", asyncio.to_thread(self.sup.exit_causes))
        except Exception as exc:
            log.warning("watchdog: cannot read supervisord's log for exit causes: %s", exc)
            return events
        return [dataclasses.replace(e, how=causes.get(e.name))
                if e.to_state == "EXITED" and e.expected is False else e for e in events]

    # --- actions ---------------------------------------------------------------------------

    async def act(self, action: Action, now: datetime) -> None:
        if isinstance(action, Kill):
            log.warning("watchdog: SIGKILL %s (pid %d): %s", action.qualified, action.pid,
                        action.reason)
            await self._rpc(self.sup.signal, action.qualified, "KILL")
            self.restarts[action.process] = self.restarts.get(action.process, 0) + 1
        elif isinstance(action, Restart):
            log.warning("watchdog: restarting %s (SIGTERM pid %d): %s", action.qualified,
                        action.pid, action.reason)
            await self._rpc(self.sup.signal, action.qualified, "TERM")
            self.restarts[action.process] = self.restarts.get(action.process, 0) + 1
        elif isinstance(action, Start):
            log.warning("watchdog: starting %s: %s", action.qualified, action.reason)
            await self._rpc(self.sup.start, action.qualified, False)
            self.restarts[action.process] = self.restarts.get(action.process, 0) + 1
        else:
            await super().act(action, now)

    async def _rpc(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await self._io(f"supervisord {fn.__name__}", asyncio.to_thread(fn, *args))
        except xmlrpc.client.Fault as exc:
            # NOT_RUNNING / ALREADY_STARTED: the process moved on its own; nothing to do.
            log.warning("watchdog: supervisord %s%r: %s", fn.__name__, args, exc.faultString)

    def counters(self) -> dict[str, int | float | str]:
        return {**super().counters(), "ticks": self.ticks}


# --- the process -------------------------------------------------------------------------------


async def run_watchdog(env: RuntimeEnv, config: Config, feed_io: tuple[IO[bytes], IO[bytes]]
                       | None) -> int:
    from ops.runtime.daemon import Daemon, Service
    from ops.runtime.ticker import HeartbeatTask, Ticker
    from ops.store import Store, StoreSettings

    # Short database timeouts: during an outage a pass must fall back to the buffer in
    # seconds, not wait out the roles' generous command timeout.
    base = StoreSettings.from_config(config, env)
    settings = dataclasses.replace(
        base, connect_timeout_s=min(base.connect_timeout_s, 2.0),
        command_timeout_s=min(base.command_timeout_s, IO_TIMEOUT_S), close_grace_s=1.0,
        pool_max_size=3)
    exporter = MetricsExporter() if config.metrics.enabled else None
    server: MetricsServer | None = None
    if exporter is not None:  # first: a port in use fails the start before anything opens
        server = await asyncio.to_thread(serve, exporter, config.metrics.host, config.metrics.port)
        log.info("watchdog: metrics on http://%s:%d/metrics", config.metrics.host, server.port)
    store = await Store.open(env, process=PROCESS_NAME, config=settings)
    outbox = await Outbox.open(default_path(env.home))
    sinks = sinks_from_config(config.alerts)
    worker = AlertWorker(outbox, sinks, retry=config.alerts.retry.to_backoff())
    wd = Watchdog(env, config, store, SupervisorClient.for_env(env, timeout_s=IO_TIMEOUT_S - 1),
                  outbox, sinks=[s.name for s in sinks], exporter=exporter, worker=worker,
                  self_name=os.environ.get("SUPERVISOR_PROCESS_NAME", PROCESS_NAME))
    services: list[Service] = []
    if config.alerts.deadman_url:
        wd.deadman = DeadmanPinger(config.alerts.deadman_url, config.alerts.deadman_interval_s,
                                   wd.healthy, config.alerts.timeout_s)
        services.append(wd.deadman)

    from ops.store.bufferwatch import BufferWatch
    from ops.store.retention import Pruner
    buffer_watch = BufferWatch(store, host=wd.host)
    pruner = Pruner.of(store, timedelta(days=config.database.history_retention_days))

    async def job(_slot: object) -> None:
        await wd.pass_with_upkeep(buffer_watch, pruner)

    ticker = Ticker(PROCESS_NAME, PASS_INTERVAL_S, job, process=PROCESS_NAME, account=None,
                    role=PROCESS_NAME, ledger=store, job_timeout_s=PASS_TIMEOUT_S)
    wd.trigger = lambda: ticker.trigger() if not ticker.stats().in_flight else False
    heartbeat = HeartbeatTask(PROCESS_NAME, None, PROCESS_NAME, store,
                              config.watchdog.heartbeat_interval_s,
                              lambda: {**wd.counters(), **ticker.counters(),
                                       **{f"pruned.{t}": n for t, n in pruner.deleted.items()}})
    services += [ticker, heartbeat, worker]
    if feed_io is not None:
        services.append(EventFeed(feed_io[0], feed_io[1], wd.on_event))
    log.info("watchdog: %d alert sink(s)%s; stale bound %gs, pass every %gs",
             len(sinks), ", dead-man ping on" if wd.deadman else "",
             config.watchdog.heartbeat_stale_s, PASS_INTERVAL_S)

    async def shutdown() -> None:
        if server is not None:
            await asyncio.to_thread(server.close)
        await outbox.close()
        await store.close()

    daemon = Daemon(PROCESS_NAME, services, shutdown=shutdown)
    daemon.on_run_now(ticker.trigger)
    return await daemon.run()


def cli_main(args: argparse.Namespace) -> int:
    """`ops watchdog`: what supervisord runs as the event listener."""
    from ops.runtime.logs import configure_logging

    env = runtime_env()
    try:
        config = load_config(Path(env.config_path))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    feed_io: tuple[IO[bytes], IO[bytes]] | None = None
    if os.environ.get("SUPERVISOR_PROCESS_NAME"):
        # Keep the real stdout for the protocol only; anything else written to fd 1 from
        # now on (a library's print) lands in the log instead of corrupting the protocol.
        protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        feed_io = (sys.stdin.buffer, protocol_out)
    configure_logging(PROCESS_NAME)
    if feed_io is None:
        log.warning("watchdog: not under supervisord (no SUPERVISOR_PROCESS_NAME): polling "
                    "only, no process-state events")
    from ops.runtime.daemon import exit_despite_leaked_threads

    code = 0
    try:
        code = asyncio.run(run_watchdog(env, config, feed_io))
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("watchdog: stopped by an unexpected error")
        code = 1
    return exit_despite_leaked_threads(PROCESS_NAME, code)
