"""The role runtime: boots one role process (`ops run ROLE --account TIER`) and hands the
role a `RoleContext` (config, store, bound broker, tickers, incidents, kill switch).

Boot order (`RoleRuntime.run`): config (bad -> stderr, exit 2) -> logging (in `run_role`)
-> Store (works while Postgres is down: writes buffer) -> a heartbeat task, so the process
is visibly alive from here on -> for per-account roles: credentials, Broker, and
`bind_account(expected_account_number)`; a mismatch records incident "account-mismatch"
and exits 3 without trading; an unreachable broker is retried with back-off (heartbeating)
-> the singleton advisory lock of (account, role) (`ops.store.locks`) -> the role's
builder -> `Daemon([*role services, *tickers, heartbeat, lock keeper, control watcher,
config watcher]).run()`.

Waiting for the lock. When another instance holds it, this copy logs that it waits (and
who holds it) and writes no heartbeat row: the heartbeat row belongs to the process that
works, and a standby must not overwrite the active one's counters. When Postgres is
unreachable at start the lock cannot be taken by anybody, so the copy waits, heartbeating
(the store buffers the beats; the watchdog reads the buffer) and retrying every second.

The local heartbeat file. Every beat, from the heartbeat task's start to a clean stop
(which removes it), also writes `$OPS_HOME/run/health/<process>.json` (ops.supervise.healthcheck:
`ops health`, the orchestrators' probe): whether or not Postgres answers, and as a
standby too (`active` false), with ops.core.health's failing verdict on the beat's counters.

Run now. SIGUSR1 triggers every ticker of the process. So does a control row of the
account (`*` for shared roles): key `run_now:<role>` (any value; `request_run_now()`
writes it), or key `run_now` with value `{"role": R}`, `{"roles": [...]}` or anything else
for every role. The control watcher polls the account's controls once per second (one
indexed read) and triggers when such a row's `updated_at` moves past what it last saw.

Hot reload. The config file's directory is watched (watchfiles `awatch`, plus a poll every
5 s in case an event is missed); `ConfigReloader` validates. A valid edit swaps
`ctx.config`, re-sets ticker intervals and calls `on_reload` callbacks; an invalid edit keeps
the old config and opens incident "config-invalid" (closed by the next valid edit). An edit
that removes or disables this process's account is refused the same way. URLs, keys and
account numbers are read at start only: a change to them is logged as needing a restart.

Exit codes: 0 stopped on request, 1 a service failed (supervisord restarts it),
2 bad config/usage/credentials, 3 account mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ops.core.backoff import Backoff
from ops.core.config import AccountConfig, Config, ConfigError
from ops.core.health import process_failure
from ops.core.models import Heartbeat, KillSwitch, kill_switch_in
from ops.runtime.config import ConfigReloader, load_config, remember_if_good, save_last_good
from ops.runtime.credentials import (
    CredentialError,
    Credentials,
    load_credentials,
    provider_from_config,
)
from ops.runtime.daemon import Daemon, Service, exit_despite_leaked_threads
from ops.runtime.env import RuntimeEnv, runtime_env
from ops.runtime.ticker import CounterValue, HeartbeatTask, MarketClockCache, Slot, Ticker
from ops.store import Control, Store
from ops.store.locks import LockKeeper, LockStatus, SingletonLock
from ops.supervise.healthcheck import HealthFile, health_path, remove_health_file, write_health_file
from ops.supervise.supervisor import program_name

if TYPE_CHECKING:  # imported where used: a role without a broker (the monitor) never
    # loads ops.broker and alpaca-py (~9 MB of its RSS budget)
    from ops.broker import Broker, BrokerEndpoints, BrokerSettings

log = logging.getLogger(__name__)

RoleBuilder = Callable[["RoleContext"], Awaitable[Sequence[Service]]]
#: role name -> "module:function" of its builder (imported only when that role runs).
ROLES: dict[str, str] = {
    "stream": "ops.roles.stream:build",
    "dispatcher": "ops.roles.dispatcher:build",
    "position-manager": "ops.roles.position_manager:build",
    "signal-engine": "ops.roles.signal_engine:build",
    "monitor": "ops.roles.monitor:build",
}
#: Roles that run once per account (the rest are shared and take no --account).
PER_ACCOUNT_ROLES = frozenset({"stream", "dispatcher", "position-manager"})
#: How an API key's REST budget is shared among the processes that use the key: the
#: dispatcher sends every order (and settles ambiguous ones), the position manager
#: syncs every few seconds and sends exits, the stream only backfills after a gap, and
#: the signal engine reads a quote or two per slot. Equal shares starved the dispatcher.
REST_WEIGHTS: dict[str, int] = {
    "dispatcher": 3, "position-manager": 2, "stream": 1, "signal-engine": 1,
}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_ACCOUNT_MISMATCH = 3

SHARED_ACCOUNT = "*"  # controls.account for run-now requests of shared roles
RUN_NOW_KEY = "run_now"
KILL_SWITCH_CACHE_S = 1.0
CONTROL_POLL_S = 1.0
CONFIG_POLL_S = 5.0

IntervalSpec = float | Callable[[Config], float]
CounterFn = Callable[[], Mapping[str, CounterValue]]


def run_now_key(role: str) -> str:
    """The controls key a run-now request for `role` is written under."""
    return f"run_now:{role}"


async def request_run_now(store: Store, account: str | None, role: str, by: str) -> None:
    """Ask the running `role` process of `account` (None: a shared role) to run now."""
    at = datetime.now(UTC)
    await store.set_control(account or SHARED_ACCOUNT, run_now_key(role),
                            {"requested_at": at.isoformat()}, by, at)


def broker_settings(config: Config, role: str) -> BrokerSettings:
    """Broker bounds from config, with `role`'s share of the key's REST budget (every
    process using an account's key takes its `REST_WEIGHTS` share; the shares add up to
    the key's budget)."""
    from ops.broker import BrokerSettings

    b = config.broker
    total = sum(REST_WEIGHTS.values())
    weight = REST_WEIGHTS[role]
    return BrokerSettings(
        rest_timeout_s=b.rest_timeout_s,
        retry=b.retry.to_backoff(),
        rate_limit_per_min=max(2, b.rate_limit_per_min * weight // total),
        rate_limit_burst=max(1, b.rate_limit_burst * weight // total),
        data_feed=b.data_feed,
    )


def endpoints_for(acct: AccountConfig) -> BrokerEndpoints:
    from ops.broker import BrokerEndpoints

    return BrokerEndpoints(acct.rest_url, acct.stream_url, acct.data_url, acct.paper)


class RoleContext:
    """What a role's builder gets. Create tickers with `ticker()`; read `config` each run
    (hot reload swaps it); report trouble with `incident()`/`resolve()`."""

    def __init__(
        self,
        *,
        env: RuntimeEnv,
        role: str,
        account: str | None,
        store: Store,
        config: Config,
        broker: Broker | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.env = env
        self.role = role
        self.account = account
        self.process = program_name(role, account)
        self.store = store
        self.broker = broker
        self.credentials = credentials
        self._config = config
        self.tickers: list[Ticker] = []
        self._intervals: list[tuple[Ticker, Callable[[Config], float]]] = []
        self._counters: list[tuple[str, CounterFn]] = []
        self._reload_cbs: list[Callable[[Config], None]] = []
        self._clock = (
            MarketClockCache(broker.get_clock, refresh_s=60.0) if broker is not None else None
        )
        self._ks_cache: dict[str, tuple[float, KillSwitch]] = {}
        self._sealed = False

    # -- config ---------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The current config (a hot reload swaps it; read it at the start of each run)."""
        return self._config

    @property
    def account_cfg(self) -> AccountConfig | None:
        return self._config.accounts.get(self.account) if self.account else None

    def on_reload(self, cb: Callable[[Config], None]) -> None:
        """`cb(new_config)` after every accepted reload (exceptions are logged)."""
        self._reload_cbs.append(cb)

    def _apply_config(self, config: Config) -> None:
        self._config = config
        for ticker, interval in self._intervals:
            try:
                ticker.set_interval(interval(config))
            except Exception:
                log.exception("reload: cannot set the interval of ticker %s", ticker.name)
        for cb in self._reload_cbs:
            try:
                cb(config)
            except Exception:
                log.exception("reload callback %r failed", cb)

    # -- incidents ------------------------------------------------------------------------

    def incident_key(self, kind: str) -> str:
        """The dedupe key `incident(kind, ...)` uses when none is given."""
        return f"{self.process}:{kind}"

    async def incident(self, kind: str, detail: str, *, dedupe_key: str | None = None) -> None:
        """Open an incident for this process (one open incident per dedupe key; default
        `incident_key(kind)`). Never raises: a failing write is logged."""
        key = dedupe_key or self.incident_key(kind)
        log.warning("incident %s: %s", kind, detail)
        try:
            await self.store.open_incident(kind, detail=detail[:2000], process=self.process,
                                           account=self.account, dedupe_key=key)
        except Exception:
            log.exception("could not record incident %s", kind)

    async def resolve(self, dedupe_key: str, reason: str | None = None) -> None:
        """Close the open incident with that dedupe key (a no-op if none is open), saying
        why its condition cleared."""
        try:
            await self.store.close_incident(dedupe_key=dedupe_key, reason=reason)
        except Exception:
            log.exception("could not close incident %s", dedupe_key)

    # -- controls -------------------------------------------------------------------------

    async def kill_switch(self, account: str | None = None) -> KillSwitch:
        """The kill switch of `account` (default: this process's), cached ~1 s.

        Read from the `controls` table (the buffer's copy during an outage). If it cannot
        be read at all, the last known value stays; with none known, HALT (fail closed).
        """
        name = account or self.account
        if name is None:
            return KillSwitch.OFF
        cached = self._ks_cache.get(name)
        if cached is not None and time.monotonic() - cached[0] < KILL_SWITCH_CACHE_S:
            return cached[1]
        try:
            snap = await self.store.controls(name)
        except Exception:
            log.exception("kill switch of %s unreadable", name)
            return cached[1] if cached is not None else KillSwitch.HALT
        return self._note_controls(name, snap.rows)

    def _note_controls(self, account: str, rows: Sequence[Control]) -> KillSwitch:
        mode = kill_switch_in(rows)
        old = self._ks_cache.get(account)
        if old is not None and old[1] != mode:
            log.warning("kill switch of %s: %s -> %s", account, old[1], mode)
        self._ks_cache[account] = (time.monotonic(), mode)
        return mode

    # -- tickers and counters ---------------------------------------------------------------

    def ticker(
        self,
        name: str,
        interval_s: IntervalSpec,
        job: Callable[[Slot], Awaitable[None]],
        *,
        market_gate: bool = True,
        job_timeout_s: float | None = None,
    ) -> Ticker:
        """A Ticker wired to the run ledger, the broker clock (when `market_gate` and the
        account's `schedule.market_hours_only`; shared roles have no broker clock and are
        never gated), run-now and heartbeat counters. The runtime runs it: returning it
        from the builder too is fine.

        Hot reload of the interval: pass a callable `Config -> seconds` to follow any key;
        a number equal to this role's configured interval (`Config.role_interval`) follows that
        key; any other number stays fixed.
        """
        if self._sealed:
            raise RuntimeError("RoleContext.ticker() must be called from the role's builder")
        if callable(interval_s):
            interval_fn: Callable[[Config], float] | None = interval_s
            first = interval_s(self._config)
        else:
            first = float(interval_s)
            configured = self._config.role_interval(self.role, self.account)
            interval_fn = None
            if configured is not None and configured == first:
                role, account = self.role, self.account

                def interval_fn(c: Config) -> float:
                    return c.role_interval(role, account) or first

        ticker = Ticker(
            name, first, job, process=self.process, account=self.account, role=self.role,
            ledger=self.store,
            market_gate=self.market_open if market_gate and self._clock is not None else None,
            job_timeout_s=job_timeout_s,
        )
        self.tickers.append(ticker)
        if interval_fn is not None:
            self._intervals.append((ticker, interval_fn))
        return ticker

    async def market_open(self) -> bool:
        """Whether this role should act as in market hours: always for shared roles and
        for accounts without `schedule.market_hours_only`, else per the broker clock
        (cached, refreshed every minute and at the next open/close)."""
        if self._clock is None:
            return True
        acct = self.account_cfg
        if acct is not None and not acct.schedule.market_hours_only:
            return True
        return await self._clock.is_open()

    def add_counters(self, name: str, fn: CounterFn) -> None:
        """Heartbeat counters `name.key` from `fn()` at every beat (must be cheap, sync)."""
        self._counters.append((name, fn))

    def run_now(self) -> int:
        """Trigger every ticker of the process; how many accepted."""
        return sum(1 for t in self.tickers if t.trigger())

    def counters(self) -> dict[str, CounterValue]:
        out: dict[str, CounterValue] = {}
        for t in self.tickers:
            out.update(t.counters())
        if self.broker is not None:
            out["broker.requests"] = self.broker.stats.requests
            out["broker.errors"] = self.broker.stats.errors
            out["broker.retries"] = self.broker.stats.retries
        for name, fn in self._counters:
            try:
                out.update({f"{name}.{k}": v for k, v in fn().items()})
            except Exception as exc:
                log.exception("counters %s failed", name)
                out[f"{name}.counters_error"] = f"{type(exc).__name__}: {exc}"[:200]
        return out


class _Heartbeat:
    """The process's heartbeat: started early in the boot, owned by the daemon later."""

    def __init__(self, runtime: RoleRuntime, interval_s: float) -> None:
        self.runtime = runtime
        self.interval_s = interval_s
        self.task = HeartbeatTask(runtime.process, runtime.account, runtime.role, self,
                                  interval_s, runtime.counters)
        self.name = self.task.name
        self.health_path = health_path(runtime.env.home, runtime.process)
        self.file_errors = 0
        self.file_skipped = 0
        self._file_failing = False
        self._file_write: asyncio.Future[None] | None = None
        self._running: asyncio.Task[None] | None = None

    async def heartbeat(self, hb: Heartbeat) -> None:
        # The file first and whatever the database does: liveness must not depend on it.
        self.write_file(hb)
        if not self.runtime.beat_allowed():
            return
        assert self.runtime.store is not None
        await self.runtime.store.heartbeat(hb)

    def write_file(self, hb: Heartbeat) -> None:
        """Start writing the local heartbeat file for `ops health`, off the event loop: an
        atomic replace on ext4 flushes the new file's data (auto_da_alloc): p50 0.8 ms, p99
        5 ms on a busy host (bench/health.py), too long to block the loop every beat. One
        write at a time: while one is stuck (a hung disk) the beat is skipped, and the file
        goes stale, as it should. Never raises: a failure is logged once, and its end."""
        if self._file_write is not None and not self._file_write.done():
            self.file_skipped += 1
            return
        rt = self.runtime
        config = rt.config
        try:
            reason = process_failure(config, hb.counters, rt.account) if config else None
            stale_s = (config.watchdog.heartbeat_stale_for(rt.role) if config
                       else 5 * self.interval_s)
            state = HealthFile(
                process=rt.process, pid=hb.pid, ts=hb.ts.timestamp(),
                interval_s=self.interval_s, stale_s=stale_s, active=rt.active(),
                failing=reason is not None, failing_reason=reason)
        except Exception as exc:
            self._file_failed(exc)
            return
        self._file_write = asyncio.ensure_future(asyncio.to_thread(self._write, state))

    def _write(self, state: HealthFile) -> None:  # in a worker thread
        try:
            write_health_file(self.health_path, state)
        except Exception as exc:
            self._file_failed(exc)
            return
        if self._file_failing:
            self._file_failing = False
            log.info("heartbeat file %s is written again", self.health_path)

    def _file_failed(self, exc: Exception) -> None:
        self.file_errors += 1
        if not self._file_failing:
            self._file_failing = True
            log.error("heartbeat file %s cannot be written (%s: %s): `ops health` will "
                      "report this process unhealthy; retrying every beat",
                      self.health_path, type(exc).__name__, exc)

    async def remove_file(self) -> None:
        """A clean stop: `ops health` then says there is no heartbeat (not a stale one).
        The write in flight ends first, so it cannot bring the file back."""
        pending = self._file_write
        if pending is not None and not pending.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(pending), 5.0)
        try:
            await asyncio.to_thread(remove_health_file, self.health_path, os.getpid())
        except OSError as exc:
            log.warning("could not remove heartbeat file %s: %s", self.health_path, exc)

    def start(self) -> None:
        self._running = asyncio.create_task(self.task.run(), name=self.name)

    async def run(self) -> None:
        if self._running is None:
            self.start()
        assert self._running is not None
        await self._running

    def request_stop(self) -> None:
        self.task.request_stop()


class _ControlWatcher:
    """Polls the account's controls: keeps the kill switch cache warm, spots run-now rows."""

    def __init__(self, ctx: RoleContext, poll_s: float) -> None:
        self.name = "controls"
        self.ctx = ctx
        self.poll_s = poll_s
        self.account = ctx.account or SHARED_ACCOUNT
        self._seen: dict[str, datetime] = {}
        self._primed = False
        # Before this, a request was for a predecessor; after it, for this process, even
        # when it lands before the first poll has read the table.
        self._since = datetime.now(UTC)
        self._stop = asyncio.Event()
        self.run_now_requests = 0
        self.polls = 0

    def request_stop(self) -> None:
        self._stop.set()

    def _for_me(self, row: Control) -> bool:
        if row.key == run_now_key(self.ctx.role):
            return True
        if row.key != RUN_NOW_KEY:
            return False
        # The account-wide form: value {"role": R} or {"roles": [...]}; else every role.
        value = row.value if isinstance(row.value, dict) else {}
        roles = value.get("roles", value.get("role"))
        if roles is None:
            return True
        return self.ctx.role in ([roles] if isinstance(roles, str) else roles)

    async def poll_once(self) -> None:
        snap = await self.ctx.store.controls(self.account)
        if self.ctx.account is not None:
            self.ctx._note_controls(self.ctx.account, snap.rows)
        fresh = []
        for row in snap.rows:
            if not self._for_me(row):
                continue
            seen = self._seen.get(row.key)
            self._seen[row.key] = row.updated_at
            if seen is not None:
                new = row.updated_at > seen
            else:  # first sight: new, unless the first poll finds it older than this process
                new = self._primed or row.updated_at >= self._since
            if new:
                fresh.append(row)
        self._primed = True
        self.polls += 1
        if fresh:
            self.run_now_requests += 1
            log.info("run-now requested by %s (controls %s)",
                     ", ".join(r.updated_by for r in fresh), ", ".join(r.key for r in fresh))
            self.ctx.run_now()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("control poll failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._stop.wait()


def config_invalid_key(path: Path | str) -> str:
    """One `config-invalid` incident per config file, whichever processes refuse it (they
    are listed in the incident's `seen_by`)."""
    return f"config-invalid:{Path(path).resolve()}"


class _ConfigWatcher:
    """Hot reload: watches the config file's directory, validates, applies or refuses."""

    def __init__(self, ctx: RoleContext, reloader: ConfigReloader,
                 poll_s: float = CONFIG_POLL_S) -> None:
        self.name = "config-watch"
        self.ctx = ctx
        self.reloader = reloader
        self.poll_s = poll_s
        self.reloads = 0
        self.refused = 0
        self.invalid = False
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def check(self) -> None:
        """Look at the file now; apply a valid change, refuse a bad one."""
        new = self.reloader.poll()
        error = self.reloader.last_error
        if new is None and error is not None:
            if not self.invalid:
                self.invalid = True
                self.refused += 1
                await self.ctx.incident("config-invalid", f"config change refused, the "
                                        f"previous config stays in force:\n{error}",
                                        dedupe_key=config_invalid_key(self.reloader.path))
            return
        if new is None:
            return
        problem = self._refusal(new)
        if problem is not None:
            log.error("config change refused: %s", problem)
            # Keep refusing this content until it changes again.
            self.reloader.current = self.ctx.config
            if not self.invalid:
                self.invalid = True
                self.refused += 1
                await self.ctx.incident("config-invalid", f"{self.reloader.path}: {problem}; "
                                        "the previous config stays in force",
                                        dedupe_key=config_invalid_key(self.reloader.path))
            return
        self._note_restart_only(new)
        self.reloads += 1
        self.ctx._apply_config(new)
        if self.reloader.text is not None:
            await asyncio.to_thread(save_last_good, self.ctx.env.run_dir, self.reloader.text)
        if self.invalid:
            self.invalid = False
            await self.ctx.resolve(config_invalid_key(self.reloader.path),
                                   f"a valid config was loaded by {self.ctx.process}")

    def _refusal(self, new: Config) -> str | None:
        name = self.ctx.account
        if name is None:
            return None
        acct = new.accounts.get(name)
        if acct is None:
            return f"account '{name}' is no longer configured but this process runs it"
        if not acct.enabled:
            return f"accounts.{name}.enabled = false: stop this process instead"
        return None

    def _note_restart_only(self, new: Config) -> None:
        old, cur = self.ctx.account_cfg, new.accounts.get(self.ctx.account or "")
        if old is None or cur is None:
            return
        for key in ("secret_id", "expected_account_number", "rest_url", "stream_url",
                    "data_url", "paper"):
            if getattr(old, key) != getattr(cur, key):
                log.warning("config: accounts.%s.%s changed; it takes effect at the next "
                            "restart of %s", self.ctx.account, key, self.ctx.process)

    async def run(self) -> None:
        from watchfiles import awatch  # imported here: only running roles need it

        path = self.reloader.path.absolute()
        target = path.name

        def only_config(_change: object, changed: str) -> bool:
            return Path(changed).name == target

        while not self._stop.is_set():
            try:
                # The directory is watched, not the file: editors replace files by rename.
                async for _ in awatch(path.parent, watch_filter=only_config,
                                      stop_event=self._stop, debounce=200, step=50,
                                      rust_timeout=int(self.poll_s * 1000),
                                      yield_on_timeout=True, recursive=False):
                    await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                # e.g. the directory vanished: fall back to polling until it works again.
                log.exception("config watch failed; polling %s instead", path)
                await self.check()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._stop.wait()


class RoleRuntime:
    """One role process. `await run()` -> exit code; `request_stop()` from anywhere in
    the loop. Tests run it in-process (`install_signal_handlers=False`, own builder)."""

    def __init__(
        self,
        role: str,
        account: str | None,
        env: RuntimeEnv | None = None,
        *,
        config: Config | None = None,
        builder: RoleBuilder | None = None,
        install_signal_handlers: bool = True,
        lock_poll_s: float = 1.0,
        lock_check_s: float = 2.0,
        control_poll_s: float = CONTROL_POLL_S,
        config_poll_s: float = CONFIG_POLL_S,
    ) -> None:
        self.role = role
        self.account = account
        self.env = env or runtime_env()
        self.process = program_name(role, account)
        self._config = config
        self._builder = builder
        self._signals = install_signal_handlers
        self._lock_poll_s = lock_poll_s
        self._lock_check_s = lock_check_s
        self._control_poll_s = control_poll_s
        self._config_poll_s = config_poll_s
        self.store: Store | None = None
        self.broker: Broker | None = None
        self.ctx: RoleContext | None = None
        self.lock: SingletonLock | None = None
        self.lock_status = LockStatus()
        self.phase = "starting"
        self.bind_failures = 0
        self.bind_error = ""
        self.daemon: Daemon | None = None
        self.services: list[Service] = []  # everything the daemon runs, once built
        self.config_watcher: _ConfigWatcher | None = None
        self.control_watcher: _ControlWatcher | None = None
        self._stop = asyncio.Event()
        self._heartbeat: _Heartbeat | None = None

    def request_stop(self, reason: str = "requested") -> None:
        self._stop.set()
        if self.daemon is not None:
            self.daemon.request_stop(reason)

    @property
    def config(self) -> Config | None:
        """The config in force (the context's after build: hot reload swaps it)."""
        return self.ctx.config if self.ctx is not None else self._config

    def active(self) -> bool:
        """Whether this instance holds its singleton lock and works (a standby, or a copy
        still booting, does not)."""
        return self.phase in ("building", "running") and self.lock_status.state != "lost"

    def beat_allowed(self) -> bool:
        """Whether the heartbeat row may be written now. Before the lock is ours, only
        while boot is stuck on something other than an active holder (broker or Postgres
        unreachable): a standby must not overwrite the active instance's heartbeat."""
        if self.phase in ("building", "running"):
            return True
        return self.bind_failures > 0 or self.lock_status.state == "db-unreachable"

    def counters(self) -> dict[str, CounterValue]:
        out: dict[str, CounterValue] = {"phase": self.phase, "lock": self.lock_status.state}
        if self.phase == "binding":
            # Outcome health (ops.core.health): each failed binding attempt counts as a failed
            # run (a revoked key keeps a restarted process here, heartbeating).
            out["binding.errors_in_row"] = self.bind_failures
            out["binding.last_error"] = self.bind_error[:300]
        if self.store is not None:
            out["store.replayed"] = self.store.replayed
            out["store.db_reachable"] = int(self.store.database_reachable)
        if self.config_watcher is not None:
            out["config.reloads"] = self.config_watcher.reloads
            out["config.refused"] = self.config_watcher.refused
            out["config.invalid"] = int(self.config_watcher.invalid)
        if self.control_watcher is not None:
            out["controls.run_now"] = self.control_watcher.run_now_requests
        if self.ctx is not None:
            out.update(self.ctx.counters())
        return out

    # -- boot -----------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if self._signals:
            # Until the daemon installs its own: a stop while binding or waiting is clean.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
                installed.append(sig)
            # SIGUSR1's default action kills the process: ignore run-now until running.
            loop.add_signal_handler(signal.SIGUSR1, log.info,
                                    "SIGUSR1 (run now) ignored: %s is %s", self.process,
                                    "not running yet")
            installed.append(signal.SIGUSR1)
        try:
            return await self._run()
        finally:
            for sig in installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self._close()

    async def _run(self) -> int:
        if self._config is None:
            try:
                self._config = load_config(self.env.config_path)
            except ConfigError as exc:
                print(f"ops run {self.role}: {exc}", file=sys.stderr)
                return EXIT_CONFIG
        config = self._config
        # Taken now, so an edit made while booting (or waiting for the lock) is seen.
        reloader = ConfigReloader(self.env.config_path, config)
        problem = check_role_account(config, self.role, self.account)
        if problem is not None:
            print(f"ops run {self.role}: {problem}", file=sys.stderr)
            return EXIT_CONFIG
        self.store = await Store.open(self.env, process=self.process, config=config)
        self._heartbeat = _Heartbeat(self, config.watchdog.heartbeat_interval_s)
        self._heartbeat.start()

        creds: Credentials | None = None
        if self.account is not None:
            acct = config.accounts[self.account]
            self.phase = "credentials"
            try:
                provider = provider_from_config(config.credentials, self.env)
                creds = await asyncio.to_thread(load_credentials, self.account, acct, provider)
            except CredentialError as exc:
                print(f"ops run {self.role}: {exc}", file=sys.stderr)
                await self._incident("credentials", str(exc))
                return EXIT_CONFIG
            await self._cleared("credentials", "credentials loaded at start")
            from ops.broker import Broker

            self.broker = Broker(endpoints_for(acct), creds, broker_settings(config, self.role))
            self.phase = "binding"
            bound = await self._bind(acct)
            if bound is not None:
                return bound
            await self._cleared("account-mismatch", "bound to the expected broker account")

        self.phase = "waiting-lock"
        self.lock = SingletonLock(self.store.url, self.account, self.role, self.process,
                                  poll_s=self._lock_poll_s)
        self.lock_status = self.lock.status
        if not await self.lock.acquire(stop=self._stop):
            return EXIT_OK
        await self._cleared("lock-lost", "the singleton lock is held again")

        self.phase = "building"
        # Beat now rather than at the next interval: `ops health --ready` (an orchestrator's
        # readiness probe) sees a standby that took over within a second of the kill.
        await self._heartbeat.task.beat()
        self.ctx = RoleContext(env=self.env, role=self.role, account=self.account,
                               store=self.store, config=config, broker=self.broker,
                               credentials=creds)
        try:
            builder = self._builder or load_builder(self.role)
            services = list(await builder(self.ctx))
        except Exception as exc:
            log.exception("%s: building the role failed", self.process)
            await self._incident("role-build-failed", f"{type(exc).__name__}: {exc}")
            return EXIT_FAILED
        self.ctx._sealed = True
        await self._cleared("role-build-failed", "the role was built")
        await asyncio.to_thread(remember_if_good, self.env.config_path, self.env.run_dir)
        # The file on disk is valid now (this start read it): an invalid edit is fixed.
        await self.ctx.resolve(config_invalid_key(self.env.config_path),
                               f"{self.process} started with a valid config")
        for t in self.ctx.tickers:
            if not any(s is t for s in services):
                services.append(t)
        self.config_watcher = _ConfigWatcher(self.ctx, reloader, self._config_poll_s)
        self.control_watcher = _ControlWatcher(self.ctx, self._control_poll_s)
        keeper = LockKeeper(self.lock, self._lock_check_s)
        services += [self._heartbeat, keeper, self.control_watcher, self.config_watcher]
        self.services = services
        self.daemon = Daemon(self.process, services, install_signal_handlers=self._signals)
        self.daemon.on_run_now(self.ctx.run_now)
        if self._stop.is_set():
            # Asked to stop while building: the daemon still starts and at once stops what
            # was built, so what the services opened is closed (the monitor's alert outbox
            # holds an SQLite thread that would otherwise keep the process from exiting).
            self.daemon.request_stop("stop requested while starting")
        else:
            self.phase = "running"
            log.info("%s running (%d service(s))", self.process, len(services))
        code = await self.daemon.run()
        if self.lock.status.state == "lost":
            await self._incident("lock-lost", f"{self.process} lost its singleton lock to "
                                 "another instance and stopped")
        return code

    async def _bind(self, acct: AccountConfig) -> int | None:
        """Bind the broker to the expected account; retry while the broker is away."""
        from ops.broker import AccountMismatchError, BrokerError

        assert self.broker is not None
        # At most 10 s apart: once the broker takes the key again (rotated back, restored),
        # the process is trading within seconds, not half a minute.
        delays = Backoff(initial_s=1.0, max_s=10.0, max_attempts=0, deadline_s=None).delays()
        while not self._stop.is_set():
            try:
                info = await self.broker.bind_account(acct.expected_account_number)
            except AccountMismatchError as exc:
                print(f"ops run {self.role}: {exc}", file=sys.stderr)
                await self._incident("account-mismatch", str(exc))
                return EXIT_ACCOUNT_MISMATCH
            except BrokerError as exc:
                # Not fatal: exiting would let supervisord give up (FATAL) on a broker
                # outage; waiting here keeps the heartbeat going and says why.
                delay = next(delays)
                self.bind_failures += 1
                self.bind_error = f"{type(exc).__name__}: {exc}"
                log.warning("account binding failed (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                continue
            log.info("bound to broker account %s", info.account_number)
            return None
        return EXIT_OK

    async def _cleared(self, kind: str, reason: str) -> None:
        """This process got past what once raised its `kind` boot incident: close it."""
        if self.store is None:
            return
        try:
            await self.store.close_incident(dedupe_key=f"{self.process}:{kind}",
                                            reason=reason)
        except Exception:
            log.exception("could not close incident %s", kind)

    async def _incident(self, kind: str, detail: str) -> None:
        if self.store is None:
            return
        try:
            await self.store.open_incident(kind, detail=detail[:2000], process=self.process,
                                           account=self.account,
                                           dedupe_key=f"{self.process}:{kind}")
        except Exception:
            log.exception("could not record incident %s", kind)

    async def _close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.request_stop()
            running = self._heartbeat._running
            if running is not None and not running.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running, 5.0)
            await self._heartbeat.remove_file()
        if self.lock is not None:
            await self.lock.release()
        if self.broker is not None:
            self.broker.close()
        if self.store is not None:
            await self.store.close()


def check_role_account(config: Config, role: str, account: str | None) -> str | None:
    """Why this role/account pair cannot run with this config, or None."""
    if role not in ROLES:
        return f"unknown role '{role}' (known: {', '.join(ROLES)})"
    if role not in PER_ACCOUNT_ROLES:
        if account is not None:
            return f"role '{role}' is shared by every account: run it without --account"
        return None
    if account is None:
        known = ", ".join(config.accounts)
        return f"role '{role}' runs per account: give --account (one of {known})"
    acct = config.accounts.get(account)
    if acct is None:
        return f"unknown account '{account}' (configured: {', '.join(config.accounts)})"
    if not acct.enabled:
        return f"account '{account}' is disabled (accounts.{account}.enabled = false)"
    return None


def load_builder(role: str) -> RoleBuilder:
    target = ROLES[role]
    module, _, attr = target.partition(":")
    fn: RoleBuilder = getattr(importlib.import_module(module), attr)
    return fn


def run_role(role: str, account: str | None, env: RuntimeEnv | None = None) -> int:
    """Run one role process in the foreground until stopped; the process exit code."""
    from ops.runtime.logs import configure_logging

    env = env or runtime_env()
    try:
        config = load_config(env.config_path)
    except ConfigError as exc:
        print(f"ops run {role}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    problem = check_role_account(config, role, account)
    if problem is not None:
        print(f"ops run {role}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(program_name(role, account))
    try:
        code = asyncio.run(RoleRuntime(role, account, env, config=config).run())
    except Exception:
        log.exception("%s: stopped by an unexpected error", program_name(role, account))
        code = EXIT_FAILED
    return exit_despite_leaked_threads(program_name(role, account), code)


def cli_run(args: argparse.Namespace) -> int:
    """`ops run ROLE [--account TIER]`."""
    return run_role(args.role, args.account)
