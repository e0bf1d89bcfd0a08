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
or the SQLite buffer during an outage), `ops.watchdog.decide`, then act: SIGKILL through
XML-RPC (autorestart brings the process back; a SIGSTOPped process never honours SIGTERM,
so a plain stop would wait `stopwaitsecs`), start attempts, incidents through the Store,
alerts into the outbox (delivered by `AlertWorker`, never inline), metrics published.
The 1 s pass (not TICK_5 alone) is what keeps "SIGSTOP -> restarted" under 10 s with the
default 5 s stale bound.

Incidents opened by roles (drift, account mismatch, ...) are alerted too: when they first
appear among the open incidents, and when they leave a Postgres-read list.
Run by hand (no `SUPERVISOR_PROCESS_NAME` in the environment) it polls without events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import select
import shlex
import socket
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ops.alerts import (
    Alert,
    AlertEvent,
    AlertWorker,
    DeadmanPinger,
    Outbox,
    default_path,
    sinks_from_config,
)
from ops.config import Config, ConfigError, ConfigReloader, load_config
from ops.env import RuntimeEnv, runtime_env
from ops.health import dispatch_pause, process_failure
from ops.incidents import SweepPolicy, sweep
from ops.metrics import (
    AccountMetrics,
    MetricsExporter,
    MetricsServer,
    MetricsSnapshot,
    ProcessMetrics,
    serve,
)
from ops.models import Heartbeat, RunRecord
from ops.store.incidents import open_records
from ops.supervisor import ProcessInfo, SupervisorClient, SupervisorUnavailable
from ops.watchdog import (
    DATABASE,
    Action,
    BumpIncident,
    CloseIncident,
    Kill,
    NoteIncident,
    Observed,
    OpenIncident,
    Policy,
    ProcessEvent,
    Restart,
    Start,
    Tracked,
    adopt_open,
    decide,
    decide_database,
    observe,
)

if TYPE_CHECKING:
    from ops.store.bufferwatch import BufferWatch

log = logging.getLogger(__name__)

PROCESS_NAME = "watchdog"
PASS_INTERVAL_S = 1.0  # see the module docstring: the 10 s restart bound needs it
PASS_TIMEOUT_S = 20.0  # a pass stuck on I/O is abandoned (recorded as a timeout run)
IO_TIMEOUT_S = 4.0  # every read/write/RPC of a pass
SWEEP_EVERY_S = 15.0  # the incident sweep (ops/incidents.py) at most this often
ACTIVITY_EVERY_S = 10.0  # orders/fills today (a heavier query) at most this often
RELOAD_EVERY_S = 5.0  # config file checked for edits this often
_LATEST_RUNS_SQL = """
SELECT r.* FROM unnest($1::text[]) AS p(name)
CROSS JOIN LATERAL (
    SELECT * FROM runs
    WHERE process = p.name AND finished_at IS NOT NULL AND outcome <> 'running'
    ORDER BY finished_at DESC LIMIT 1
) r
"""
#: Processes without heartbeats: their supervisord state is all there is to judge.
NO_HEARTBEAT = frozenset({"postgres", "sim"})


def eventlistener_section(env: RuntimeEnv, python: str, tick_event: str = "TICK_5") -> str:
    """The `[eventlistener:watchdog]` block for the rendered supervisord config."""
    settings: dict[str, str | int] = {
        "command": shlex.join([python, "-m", "ops", "watchdog"]),
        "directory": str(Path.cwd()),
        "events": f"{tick_event},PROCESS_STATE",
        # Events queue here while a pass runs; the listener answers each at once anyway.
        "buffer_size": 100,
        "autostart": "true",
        "autorestart": "true",
        "startsecs": 1,
        # The watchdog must never end up FATAL: keep retrying (its own crash is logged).
        "startretries": 100,
        "priority": 5,
        "stopsignal": "TERM",
        "stopwaitsecs": 10,
        # stdout is the listener protocol; the logs go to stderr, into their own file.
        "redirect_stderr": "false",
        "stdout_logfile": "NONE",
        "stderr_logfile": str(env.log_dir / f"{PROCESS_NAME}.log"),
        "stderr_logfile_maxbytes": "10MB",
        "stderr_logfile_backups": 5,
    }
    body = "\n".join(f"{k}={v}" for k, v in settings.items())
    return f"[eventlistener:{PROCESS_NAME}]\n{body}\n"


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


def expected_interval(config: Config, account: str | None, role: str) -> float | None:
    return config.role_interval(role, account)


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _kill_switch_on(value: Any) -> bool:
    from ops.status import kill_switch_mode

    return kill_switch_mode(value) not in ("off", "")


def _runs_by_outcome(counters: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in counters.items():
        field = key.rsplit(".", 1)[-1]
        if field.startswith("runs_") and isinstance(value, int | float):
            outcome = field.removeprefix("runs_")
            out[outcome] = out.get(outcome, 0) + int(value)
    return out


@dataclasses.dataclass
class PassInputs:
    infos: list[ProcessInfo]
    heartbeats: dict[str, Heartbeat]
    runs: dict[str, RunRecord]
    paused: dict[str, bool]
    reads_from: str


class Watchdog:
    """Holds the watchdog's memory between passes and carries out the decisions."""

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
        self.env = env
        self.config = config
        self.policy = Policy.from_config(config.watchdog)
        self.store = store
        self.sup = supervisor
        self.outbox = outbox
        self.sink_names = sinks
        self.exporter = exporter
        self.worker = worker
        self.deadman = deadman
        self.self_name = self_name
        self.host = socket.gethostname()
        self.state: dict[str, Tracked] = {}
        self.events: list[ProcessEvent] = []
        self.statuses: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self.opened: dict[str, int] = {}
        self.passes = 0
        self.last_pass_ok: float | None = None  # monotonic
        self.ticks = 0
        self._adopted = False
        self._skip_reason: str | None = None
        self._db_down_since: float | None = None
        self._others: dict[str, Any] = {}  # role incidents seen open, by id
        self._swept_at: float | None = None  # monotonic time of the last incident sweep
        self._activity: dict[str, tuple[int, int]] | None = None
        self._activity_at = 0.0
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

    def healthy(self) -> bool:
        """For the dead-man ping: a recent pass, nothing stalled, failing or down, no own
        incident."""
        if self.last_pass_ok is None or time.monotonic() - self.last_pass_ok > 10.0:
            return False
        if any(s in ("stalled", "failing", "down") for s in self.statuses.values()):
            return False
        return not any(t.incident is not None for t in self.state.values())

    async def _io(self, what: str, aw: Any) -> Any:
        async with asyncio.timeout(IO_TIMEOUT_S):
            try:
                return await aw
            except TimeoutError:
                raise TimeoutError(f"{what} took longer than {IO_TIMEOUT_S}s") from None

    async def latest_runs(self, names: list[str]) -> tuple[dict[str, RunRecord], str]:
        """The last completed run of each named process.

        `Store.latest_runs()` reads every ledger row (DISTINCT ON over the whole table:
        ~300 ms at 1M rows, and the ledger only grows), which would slowly push a 1 s pass
        past its timeouts. Here: one index probe per process. During an outage, or while
        the buffer still holds unreplayed rows, the Store's merged read is the truth."""
        from ops.store import is_outage
        from ops.store.ops import enc
        from ops.store.store import decode_run

        if self.store.database_reachable and not await self.store.buffer.has_pending():
            try:
                rows = await self.store.pool.fetch(_LATEST_RUNS_SQL, names,
                                                   timeout=IO_TIMEOUT_S)
            except Exception as exc:
                if not is_outage(exc):
                    raise
            else:
                return ({r["process"]: decode_run({k: enc(v) for k, v in r.items()})
                         for r in rows}, "postgres")
        snap = await self.store.latest_runs()
        return {r.process: r for r in snap.rows}, snap.source

    async def _inputs(self) -> PassInputs:
        infos = await self._io("supervisord getAllProcessInfo",
                               asyncio.to_thread(self.sup.processes))
        hbs = await self._io("heartbeats", self.store.heartbeats())
        runs, runs_source = await self._io("latest runs",
                                           self.latest_runs([i.name for i in infos]))
        paused: dict[str, bool] = {}
        sources = {hbs.source, runs_source}
        for account in self.config.accounts:
            ctl = await self._io(f"controls {account}", self.store.controls(account))
            sources.add(ctl.source)
            paused[account] = any(c.key == "kill_switch" and _kill_switch_on(c.value)
                                  for c in ctl.rows)
        reads_from = ("buffer" if "buffer" in sources else
                      "postgres+buffer" if "postgres+buffer" in sources else "postgres")
        return PassInputs(infos, {h.process: h for h in hbs.rows}, runs, paused, reads_from)

    async def _adopt(self) -> None:
        snap = await self._io("open incidents", self.store.open_incidents())
        found = {i.dedupe_key: (i.kind, i.opened_at.timestamp(), i.restarts)
                 for i in snap.rows if i.dedupe_key}
        self.state = adopt_open(self.state, found)
        if found:
            log.info("watchdog: resuming %d open incident(s) of a previous watchdog",
                     sum(1 for k in found if k.startswith("watchdog:")))
        self._adopted = True

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
        self.config = new
        self.policy = Policy.from_config(new.watchdog)
        log.info("watchdog: config reloaded (stale bound %gs, gap bounds %s)",
                 new.watchdog.heartbeat_stale_s, dict(new.watchdog.gap_bounds_s))
        return True

    async def pass_once(self) -> None:
        t0 = time.monotonic()
        await self.maybe_reload()
        wcfg = self.config.watchdog
        stale_s = max([wcfg.heartbeat_stale_s, *wcfg.heartbeat_stale_by_role_s.values()])
        if self.store.refused_within(stale_s + PASS_INTERVAL_S):
            # Our own writes are stored nowhere (Postgres down, buffer disk full): nobody's
            # heartbeat can be stored, all go stale together and would be killed one by one
            # as each crosses the bound. No judging until storage is back for a stale bound.
            text = "storage unavailable: no heartbeat can be stored (see buffer-unwritable)"
            if text != self._skip_reason:
                log.error("watchdog: passes skipped, %s", text)
            self._skip_reason = text
            return
        try:
            if not self._adopted:
                await self._adopt()
            inputs = await self._inputs()
        except (SupervisorUnavailable, xmlrpc.client.Fault) as exc:
            # supervisord restarting or shutting down (SHUTDOWN_STATE): nothing to judge or
            # act on; say so once per distinct reason, not every second.
            text = str(exc)
            if text != self._skip_reason:
                log.warning("watchdog: pass skipped, supervisord unavailable: %s", text)
            self._skip_reason = text
            return
        self._skip_reason = None
        now = datetime.now(UTC)
        observed: list[Observed] = []
        for info in inputs.infos:
            if info.name == self.self_name or info.group == self.self_name:
                continue
            hb = inputs.heartbeats.get(info.name)
            account, role = _identity(info, hb, self.config)
            observed.append(observe(
                name=info.name, qualified=info.qualified, account=account, role=role,
                state=info.state, pid=info.pid, start=float(info.start),
                exitstatus=info.exitstatus, spawnerr=info.spawnerr, heartbeat=hb,
                run=inputs.runs.get(info.name),
                expected_interval_s=expected_interval(self.config, account, role),
                paused=bool(account and inputs.paused.get(account)),
                heartbeats=info.name not in NO_HEARTBEAT, now=now,
                failure=self._failure(hb, account),
            ))
        events, self.events = self.events, []
        events = await self._exit_causes(events)
        decision = decide(observed, events, self.state, self.policy, now.timestamp())
        self.state = decision.state
        self.statuses = dict(decision.statuses)
        actions = list(decision.actions)
        actions += await self._database_actions(now.timestamp(), inputs.heartbeats)
        for action in actions:
            try:
                await self._act(action, now)
            except Exception:
                log.exception("watchdog: action %s failed", action)
        await self._sweep(now)
        await self._role_incidents(now)
        self.passes += 1
        self.last_pass_ok = time.monotonic()
        if self.exporter is not None:
            await self._publish(observed, decision.statuses, inputs, now, time.monotonic() - t0)

    async def _database_actions(self, now: float,
                                heartbeats: Mapping[str, Heartbeat]) -> list[Action]:
        if self.store.database_reachable:
            self._db_down_since = None
        elif self._db_down_since is None:
            self._db_down_since = now
        pending = (await self._io("buffer status", self.store.buffer_status())).pending
        held = sorted(p.describe() for hb in heartbeats.values() if hb.role == "dispatcher"
                      and (p := dispatch_pause(hb.counters, hb.account)) is not None)
        actions, st = decide_database(self._db_down_since, self.state.get(DATABASE, Tracked()),
                                      self.policy, now, pending, held)
        if st.incident is not None or st.healthy_since is not None:
            self.state[DATABASE] = st
        else:
            self.state.pop(DATABASE, None)
        return actions

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

    def _failure(self, hb: Heartbeat | None, account: str | None) -> str | None:
        """Failing, as `ops status` judges it (ops.health), with the cause in words."""
        return None if hb is None else process_failure(self.config, hb.counters, account)

    # --- actions ---------------------------------------------------------------------------

    async def _act(self, action: Action, now: datetime) -> None:
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
        elif isinstance(action, OpenIncident):
            log.error("INCIDENT OPEN %s on %s: %s", action.kind,
                      action.process or action.account or "the host", action.detail)
            await self._io("open incident", self.store.open_incident(
                action.kind, detail=action.detail, process=action.process,
                account=action.account, dedupe_key=action.key, at=now))
            self.opened[action.kind] = self.opened.get(action.kind, 0) + 1
            await self._alert("opened", action.key, action.kind, action.process,
                              action.account, action.detail, now)
        elif isinstance(action, BumpIncident):
            log.warning("incident %s: restart counted: %s", action.key, action.detail)
            await self._io("bump incident", self.store.bump_incident(
                dedupe_key=action.key, detail=action.detail))
        elif isinstance(action, NoteIncident):
            log.error("INCIDENT UPDATE on %s: %s", action.process, action.detail)
            await self._note(action)
            memo = self.state.get(action.process, Tracked()).incident
            await self._alert("update", action.key, memo.kind if memo else "incident",
                              action.process, None, action.detail, now)
        elif isinstance(action, CloseIncident):
            log.warning("INCIDENT CLOSED %s on %s after %.0fs, %d restart(s): %s",
                        action.kind, action.process or action.account or "the host",
                        action.duration_s, action.restarts, action.detail)
            await self._io("close incident", self.store.close_incident(
                dedupe_key=action.key, at=now, reason=action.detail, by=PROCESS_NAME))
            opened = datetime.fromtimestamp(now.timestamp() - action.duration_s, UTC)
            await self._alert("closed", action.key, action.kind, action.process,
                              action.account, action.detail, opened,
                              duration_s=action.duration_s,
                              restarts=action.restarts)

    async def _rpc(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await self._io(f"supervisord {fn.__name__}", asyncio.to_thread(fn, *args))
        except xmlrpc.client.Fault as exc:
            # NOT_RUNNING / ALREADY_STARTED: the process moved on its own; nothing to do.
            log.warning("watchdog: supervisord %s%r: %s", fn.__name__, args, exc.faultString)

    async def _note(self, action: NoteIncident) -> None:
        """Replace the open incident's detail (Postgres only; during an outage the log and
        the alert carry it, and the incident keeps its first detail)."""
        from ops.store import is_outage

        try:
            await self.store.pool.execute(
                "UPDATE incidents SET detail = $2 WHERE dedupe_key = $1 AND closed_at IS NULL",
                action.key, action.detail, timeout=IO_TIMEOUT_S)
        except Exception as exc:
            if not is_outage(exc):
                raise

    async def _alert(self, event: AlertEvent, key: str, kind: str, process: str | None,
                     account: str | None, detail: str, opened_at: datetime,
                     duration_s: float | None = None, restarts: int = 0) -> None:
        if not self.sink_names:
            return
        memo = self.state.get(process or "", Tracked()).incident
        if event == "opened" and memo is not None:
            opened_at = datetime.fromtimestamp(memo.opened_at, UTC)
        alert = Alert(event=event, key=key, kind=kind, process=process,
                      account=account, detail=detail, opened_at=opened_at,
                      duration_s=duration_s, restarts=restarts, host=self.host)
        await self._io("alert outbox", self.outbox.enqueue(alert, self.sink_names))

    async def _sweep(self, now: datetime) -> None:
        """Close the incidents whose condition cleared and that nobody else closes
        (ops/incidents.py): events not seen again, raisers gone. Postgres only, at most
        every SWEEP_EVERY_S."""
        from ops.store import is_outage

        if (self._swept_at is not None
                and time.monotonic() - self._swept_at < SWEEP_EVERY_S):
            return
        self._swept_at = time.monotonic()
        try:
            records = await self._io("incidents", open_records(self.store.pool))
        except Exception as exc:
            if not is_outage(exc):
                log.exception("watchdog: incident sweep failed")
            return
        for s in sweep(records, now=now, host=socket.gethostname(), alive=_pid_alive,
                       policy=SweepPolicy()):
            log.warning("INCIDENT CLEARED %s: %s", s.incident_id, s.reason)
            await self._io("close incident", self.store.close_incident(
                incident_id=s.incident_id, at=now, reason=s.reason, by=PROCESS_NAME))

    async def _role_incidents(self, now: datetime) -> None:
        """Alert on incidents other processes opened (and on their closing)."""
        snap = await self._io("open incidents", self.store.open_incidents())
        current = {i.id: i for i in snap.rows
                   if not (i.dedupe_key or "").startswith("watchdog:")}
        for iid, inc in current.items():
            if iid not in self._others:
                log.error("INCIDENT OPEN %s on %s: %s", inc.kind, inc.process or inc.account,
                          inc.detail)
                await self._alert("opened", inc.dedupe_key or iid, inc.kind, inc.process,
                                  inc.account, inc.detail, inc.opened_at)
        if snap.source == "postgres":
            for iid, inc in self._others.items():
                if iid not in current:
                    dur = (now - inc.opened_at).total_seconds()
                    log.warning("INCIDENT CLOSED %s on %s after %.0fs", inc.kind,
                                inc.process or inc.account, dur)
                    await self._alert("closed", inc.dedupe_key or iid, inc.kind, inc.process,
                                      inc.account, inc.detail, inc.opened_at, duration_s=dur,
                                      restarts=inc.restarts)
            self._others = current
        else:
            self._others.update(current)

    async def buffer_health(self, watch: BufferWatch) -> None:
        """The outage buffer's write probe (`ops.store.bufferwatch.BufferWatch`). A stored
        incident is alerted by `_role_incidents` like a role's; one that Postgres could not
        take either (it is down too) is alerted here, so a full disk is never silent."""
        change = await self._io("buffer probe", watch.check())
        if change is not None and not change.stored:
            await self._alert(change.event, watch.key, "buffer-unwritable", None, None,
                              change.detail, datetime.now(UTC))

    # --- metrics ---------------------------------------------------------------------------

    async def _publish(self, observed: list[Observed], statuses: Mapping[str, Any],
                       inputs: PassInputs, now: datetime, took: float) -> None:
        assert self.exporter is not None
        buf = await self._io("buffer status", self.store.buffer_status())
        incidents = await self._io("open incidents", self.store.open_incidents())
        by_kind: dict[str, int] = {}
        for i in incidents.rows:
            by_kind[i.kind] = by_kind.get(i.kind, 0) + 1
        await self._refresh_activity(now)
        procs = []
        for o in observed:
            hb = inputs.heartbeats.get(o.name)
            run = inputs.runs.get(o.name)
            counters = dict(hb.counters) if hb is not None else {}
            procs.append(ProcessMetrics(
                name=o.name, account=o.account, role=o.role, state=o.gap.state,
                status=statuses[o.name], heartbeat_age_s=o.gap.heartbeat_age_s,
                last_run_age_s=o.gap.last_run_age_s,
                expected_interval_s=o.gap.expected_interval_s,
                last_run_lateness_s=run.lateness_s if run else None,
                last_run_outcome=run.outcome if run else None,
                runs=_runs_by_outcome(counters),
                progress={k: float(v) for k, v in counters.items()
                          if isinstance(v, int | float) and not isinstance(v, bool)},
            ))
        w = self.worker
        outbox = await self._io("outbox status", self.outbox.status())
        self.exporter.publish(MetricsSnapshot(
            as_of=now.timestamp(), pass_duration_s=took, processes=procs,
            open_incidents=by_kind, incidents_opened=dict(self.opened),
            restarts=dict(self.restarts), database_reachable=self.store.database_reachable,
            reads_from=inputs.reads_from, buffer_pending=buf.pending,
            buffer_oldest_age_s=buf.oldest_age_s, buffer_dead=buf.dead,
            accounts=[AccountMetrics(a, *(self._activity or {}).get(a, (0, 0)))
                      if self._activity is not None else AccountMetrics(a, None, None)
                      for a in self.config.accounts],
            alerts_sent=dict(w.stats.sent) if w else {},
            alerts_failed=dict(w.stats.failed) if w else {},
            alerts_dead=dict(w.stats.dead) if w else {},
            outbox_pending=outbox.pending,
            deadman_pings=self.deadman.pings if self.deadman else 0,
            deadman_failures=self.deadman.failures if self.deadman else 0,
        ))

    async def _refresh_activity(self, now: datetime) -> None:
        if time.monotonic() - self._activity_at < ACTIVITY_EVERY_S:
            return
        self._activity_at = time.monotonic()
        from ops.store import is_outage
        from ops.store.status import account_activity

        try:
            acts = await self._io("account activity", account_activity(self.store.pool, now))
        except Exception as exc:
            if not (is_outage(exc) or isinstance(exc, TimeoutError)):
                raise
            self._activity = None  # unknown during an outage, never a made-up zero
            return
        self._activity = {a: (v.orders_today, v.fills_today) for a, v in acts.items()}

    def counters(self) -> dict[str, int | float | str]:
        out: dict[str, int | float | str] = {
            "passes": self.passes, "ticks": self.ticks,
            "open_incidents": sum(1 for t in self.state.values() if t.incident is not None),
            "restarts": sum(self.restarts.values()),
        }
        if self.worker is not None:
            out.update(self.worker.counters())
        return out


# --- the process -------------------------------------------------------------------------------


async def run_watchdog(env: RuntimeEnv, config: Config, feed_io: tuple[IO[bytes], IO[bytes]]
                       | None) -> int:
    from ops.daemon import Daemon, Service
    from ops.store import Store, StoreSettings
    from ops.ticker import HeartbeatTask, Ticker

    # Short database timeouts: during an outage a pass must fall back to the buffer in
    # seconds, not wait out the roles' generous command timeout.
    base = StoreSettings.from_config(config, env)
    settings = dataclasses.replace(
        base, connect_timeout_s=min(base.connect_timeout_s, 2.0),
        command_timeout_s=min(base.command_timeout_s, IO_TIMEOUT_S), close_grace_s=1.0,
        pool_max_size=3)
    store = await Store.open(env, process=PROCESS_NAME, config=settings)
    outbox = await Outbox.open(default_path(env.home))
    sinks = sinks_from_config(config.alerts)
    worker = AlertWorker(outbox, sinks, retry=config.alerts.retry.to_backoff())
    exporter = MetricsExporter() if config.metrics.enabled else None
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
    pruner = Pruner(store.pool, timedelta(days=config.database.history_retention_days))

    async def job(_slot: object) -> None:
        try:
            await wd.pass_once()
        finally:
            await wd.buffer_health(buffer_watch)
        try:  # history retention: a few indexed deletes, hourly (ops/store/retention.py)
            await pruner.step(datetime.now(UTC))
        except Exception:
            log.exception("retention step failed; the next pass tries again")

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
    server: MetricsServer | None = None
    if exporter is not None:
        server = await asyncio.to_thread(serve, exporter, config.metrics.host, config.metrics.port)
        log.info("watchdog: metrics on http://%s:%d/metrics", config.metrics.host, server.port)
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
    from ops.logs import configure_logging

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
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_watchdog(env, config, feed_io))
    return 0
