"""The role runtime in-process: boot, tickers, heartbeat, run-now, hot reload, the lock.

Real Postgres (tests/conftest.py), the real simulator, real alpaca-py under the Broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg  # type: ignore[import-untyped]

from ops.core.models import KillSwitch
from ops.roles.runtime import (
    EXIT_OK,
    RoleContext,
    RoleRuntime,
    request_run_now,
)
from ops.runtime.daemon import Service
from ops.runtime.env import RuntimeEnv
from ops.runtime.ticker import Slot
from ops.store.embedded import EmbeddedPostgres
from ops.store.locks import LockLost, SingletonLock
from ops.store.postgres import connect
from tests.roles.conftest import RoleEnv
from tests.support import eventually


class _Probe:
    """A test role: one ticker on the stream's configured interval, counting runs."""

    def __init__(self) -> None:
        self.ctx: RoleContext | None = None
        self.slots: list[Slot] = []
        self.reloads = 0

    async def build(self, ctx: RoleContext) -> Sequence[Service]:
        self.ctx = ctx
        cfg = ctx.account_cfg
        assert cfg is not None
        ctx.ticker("probe", cfg.schedule.stream_check_s, self.job, market_gate=False)
        ctx.add_counters("probe", lambda: {"slots": len(self.slots)})
        ctx.on_reload(lambda c: setattr(self, "reloads", self.reloads + 1))
        return []

    async def job(self, slot: Slot) -> None:
        self.slots.append(slot)


def _runtime(role_env: RoleEnv, probe: _Probe) -> RoleRuntime:
    return RoleRuntime("stream", "large", role_env.env, builder=probe.build,
                       install_signal_handlers=False, lock_poll_s=0.2,
                       control_poll_s=0.2, config_poll_s=0.5)


async def _fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await connect(url)  # with the project's JSON codecs
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def test_boot_heartbeat_run_now_and_hot_reload(role_env: RoleEnv) -> None:
    probe = _Probe()
    rt = _runtime(role_env, probe)
    task = asyncio.create_task(rt.run())
    try:
        await eventually(lambda: rt.phase == "running" and len(probe.slots) >= 1,
                         "the probe ticker runs")
        ctx = probe.ctx
        assert ctx is not None and ctx.broker is not None
        assert rt.lock_status.state == "held"

        async def beat_has_counters() -> bool:
            rows = await _fetch(role_env.pg_url,
                                "SELECT counters FROM heartbeats WHERE process = 'large-stream'")
            return bool(rows) and rows[0]["counters"].get("lock") == "held" \
                and "probe.slots" in rows[0]["counters"]
        await eventually(beat_has_counters, "a heartbeat with lock and probe counters")

        # Run now through the control row.
        ticker = ctx.tickers[0]
        assert rt.store is not None
        await request_run_now(rt.store, "large", "stream", by="test")
        await eventually(lambda: any(s.manual for s in probe.slots), "a manual run")
        # The account-wide form: key "run_now" naming roles; another role's is not ours.
        watcher = rt.control_watcher
        assert watcher is not None
        requests = watcher.run_now_requests
        await rt.store.set_control("large", "run_now", {"role": "dispatcher"}, "test")
        polls = watcher.polls
        await eventually(lambda: watcher.polls >= polls + 2, "two more control polls")
        assert watcher.run_now_requests == requests
        await rt.store.set_control("large", "run_now", {"roles": ["dispatcher", "stream"]},
                                   "test")
        await eventually(lambda: watcher.run_now_requests == requests + 1, "run-now for us")
        # ... and through the SIGUSR1 callback (Daemon.on_run_now -> ctx.run_now).
        manual = sum(s.manual for s in probe.slots)
        assert rt.daemon is not None
        rt.daemon._on_run_now()
        await eventually(lambda: sum(s.manual for s in probe.slots) > manual, "SIGUSR1 run")

        # Hot reload: the interval follows schedule.stream_check_s.
        assert ticker.interval_s == 0.5
        role_env.write_config(stream_check_s=0.25)
        await eventually(lambda: ticker.interval_s == 0.25, "the new interval applies")
        assert probe.reloads == 1
        assert ctx.account_cfg is not None and ctx.account_cfg.schedule.stream_check_s == 0.25

        # An invalid edit: incident, old config kept, ticker keeps running.
        role_env.write_config_text(role_env.config_path.read_text().replace(
            "stream_check_s = 0.25", "stream_check_s = -3", 1))

        async def invalid_open() -> bool:
            rows = await _fetch(role_env.pg_url, "SELECT detail FROM incidents WHERE "
                                "kind = 'config-invalid' AND closed_at IS NULL")
            return len(rows) == 1 and "stream_check_s" in rows[0]["detail"]
        await eventually(invalid_open, "an open config-invalid incident naming the key")
        assert ticker.interval_s == 0.25
        runs = len(probe.slots)
        await eventually(lambda: len(probe.slots) >= runs + 2, "ticker still running")

        # A valid edit closes the incident and applies.
        role_env.write_config(stream_check_s=0.5)
        await eventually(lambda: ticker.interval_s == 0.5, "valid edit applies")

        async def invalid_closed() -> bool:
            rows = await _fetch(role_env.pg_url, "SELECT closed_at FROM incidents WHERE "
                                "kind = 'config-invalid'")
            return len(rows) == 1 and rows[0]["closed_at"] is not None
        await eventually(invalid_closed, "the config-invalid incident closed")

        # Kill switch from the controls table.
        assert await ctx.kill_switch() == KillSwitch.OFF
        await rt.store.set_control("large", "kill_switch", {"mode": "reduce-only"}, "test")

        async def ks_reduce() -> bool:
            return await ctx.kill_switch() == KillSwitch.REDUCE_ONLY
        await eventually(ks_reduce, "kill switch becomes reduce-only")
    finally:
        rt.request_stop()
        code = await asyncio.wait_for(task, 20)
    assert code == EXIT_OK
    assert rt.lock_status.state == "released"


async def test_lock_wait_takeover_and_loss(pg_url: str) -> None:
    a = SingletonLock(pg_url, "large", "stream", "large-stream", poll_s=0.1)
    b = SingletonLock(pg_url, "large", "stream", "large-stream", poll_s=0.1)
    other = SingletonLock(pg_url, "tiny", "stream", "tiny-stream", poll_s=0.1)
    assert await a.acquire()
    assert await other.acquire()  # another (account, role) is independent
    waiter = asyncio.create_task(b.acquire())
    await eventually(lambda: b.status.state == "waiting", "b waits")
    assert b.status.holder is not None and "ops-lock large-stream" in b.status.holder
    assert not waiter.done()

    # The holder's session ends (as when its process is SIGKILLed): b takes over.
    await _fetch(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name = $1", a.app_name)
    assert await asyncio.wait_for(waiter, 10)
    assert b.held
    # a notices on its next check that someone else holds the lock now.
    try:
        await a.check()
    except LockLost as exc:
        assert "large:stream" in str(exc)
    else:
        raise AssertionError("a.check() should raise LockLost")

    # b's connection drops but nobody else took the lock: b re-takes it and goes on.
    await _fetch(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name = $1", b.app_name)
    await b.check()
    assert b.held and b.status.reacquired == 1
    await b.release()
    await other.release()
    await a.release()


async def test_stop_while_waiting_for_the_lock(role_env: RoleEnv, pg_url: str) -> None:
    holder = SingletonLock(pg_url, "large", "stream", "someone-else", poll_s=0.1)
    assert await holder.acquire()
    probe = _Probe()
    rt = _runtime(role_env, probe)
    task = asyncio.create_task(rt.run())
    try:
        await eventually(lambda: rt.lock_status.state == "waiting", "runtime waits for lock")
        assert probe.ctx is None  # the role is not built while waiting
        rows = await _fetch(pg_url, "SELECT 1 FROM heartbeats WHERE process = 'large-stream'")
        assert rows == []  # a standby does not write the active process's heartbeat
    finally:
        rt.request_stop()
        code = await asyncio.wait_for(task, 10)
        await holder.release()
    assert code == EXIT_OK


class _Holder:
    """A service that owns what its role's build opened, and closes it when its run ends
    (as the monitor's alert delivery closes its outbox)."""

    name = "holder"

    def __init__(self) -> None:
        self.open = True
        self._stop = asyncio.Event()

    async def run(self) -> None:
        try:
            await self._stop.wait()
        finally:
            self.open = False

    def request_stop(self) -> None:
        self._stop.set()


async def test_a_stop_while_building_still_closes_what_the_build_opened(
        role_env: RoleEnv) -> None:
    """SIGTERM between the build and the daemon's start (a probe can see the role active
    then): the built services still run to their end. Returning early left the monitor's
    outbox thread alive, and the process never exited until it was SIGKILLed."""
    holder = _Holder()

    async def build(ctx: RoleContext) -> Sequence[Service]:
        rt.request_stop("SIGTERM")  # arrives while the role is being built
        return [holder]

    rt = RoleRuntime("stream", "large", role_env.env, builder=build,
                     install_signal_handlers=False, lock_poll_s=0.2)
    assert await asyncio.wait_for(rt.run(), 30) == EXIT_OK
    assert not holder.open
    assert rt.phase != "running"  # it never said it ran


async def test_postgres_down_at_start_waits_heartbeating_then_runs(
    role_env: RoleEnv, pg_dedicated: EmbeddedPostgres
) -> None:
    """Nobody can take the lock while Postgres is down: the role waits (its heartbeat
    buffered locally, where the watchdog reads it), and starts once Postgres answers."""
    url = pg_dedicated.url()
    await asyncio.to_thread(pg_dedicated.stop, "fast")
    env = RuntimeEnv(role_env.config_path, role_env.home, url)
    probe = _Probe()
    rt = RoleRuntime("stream", "large", env, builder=probe.build,
                     install_signal_handlers=False, lock_poll_s=0.2)
    task = asyncio.create_task(rt.run())
    try:
        await eventually(lambda: rt.lock_status.state == "db-unreachable", "waits for Postgres")
        assert rt.store is not None

        async def buffered_beat() -> bool:
            assert rt.store is not None
            snap = await rt.store.heartbeats()
            return snap.source == "buffer" and [h.process for h in snap.rows] == ["large-stream"]
        await eventually(buffered_beat, "a heartbeat in the local buffer")
        assert probe.ctx is None and not role_env.sim.hub.conns  # nothing runs unlocked

        await asyncio.to_thread(pg_dedicated.start)
        await eventually(lambda: rt.phase == "running" and len(probe.slots) >= 1,
                         "the role runs once Postgres is back", timeout_s=30)
        assert rt.lock_status.state == "held"

        async def beat_in_postgres() -> bool:
            rows = await _fetch(url, "SELECT pid FROM heartbeats WHERE process = 'large-stream'")
            return bool(rows)
        await eventually(beat_in_postgres, "heartbeats reach Postgres", timeout_s=30)
    finally:
        rt.request_stop()
        code = await asyncio.wait_for(task, 20)
    assert code == EXIT_OK


async def test_broker_down_at_start_binding_is_retried(role_env: RoleEnv) -> None:
    """A broker outage at start is waited out (heartbeating), never a crash loop that
    supervisord would give up on; the process binds and runs once the broker answers."""
    role_env.sim.faults.fail_next(n=6, status=503, path="/v2/account")
    probe = _Probe()
    rt = _runtime(role_env, probe)
    task = asyncio.create_task(rt.run())
    try:
        await eventually(lambda: rt.bind_failures >= 1, "a failed binding attempt")

        async def beat() -> bool:
            rows = await _fetch(role_env.pg_url, "SELECT counters FROM heartbeats "
                                "WHERE process = 'large-stream'")
            return bool(rows)
        await eventually(beat, "heartbeats while the broker is away")
        await eventually(lambda: rt.phase == "running" and len(probe.slots) >= 1,
                         "binds and runs once the broker answers", timeout_s=30)
    finally:
        rt.request_stop()
        code = await asyncio.wait_for(task, 20)
    assert code == EXIT_OK


async def test_lock_lost_to_another_instance_stops_the_role(role_env: RoleEnv) -> None:
    probe = _Probe()
    rt = RoleRuntime("stream", "large", role_env.env, builder=probe.build,
                     install_signal_handlers=False, lock_check_s=0.2)
    task = asyncio.create_task(rt.run())
    thief = await connect(role_env.pg_url)
    try:
        await eventually(lambda: rt.phase == "running", "running")
        assert rt.lock is not None
        key = rt.lock.key
        # Queue behind the holder, then cut the holder's session: Postgres hands the lock
        # to the waiter on release, before the runtime can re-take it.
        waiting = asyncio.create_task(thief.fetchval("SELECT pg_advisory_lock($1)", key))

        async def queued() -> bool:
            rows = await _fetch(role_env.pg_url, "SELECT 1 FROM pg_locks WHERE "
                                "locktype = 'advisory' AND NOT granted")
            return bool(rows)
        await eventually(queued, "the thief waits for the lock")
        await _fetch(role_env.pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = $1", rt.lock.app_name)
        await asyncio.wait_for(waiting, 10)
        code = await asyncio.wait_for(task, 20)
        assert code == 1  # a service failed: supervisord restarts it, and it waits
        rows = await _fetch(role_env.pg_url, "SELECT detail FROM incidents "
                            "WHERE kind = 'lock-lost'")
        assert len(rows) == 1 and "large-stream" in str(rows[0]["detail"])
    finally:
        rt.request_stop()
        if not task.done():
            await asyncio.wait_for(task, 20)
        await thief.close()


async def test_a_run_now_written_before_the_first_control_poll_is_not_lost() -> None:
    """The first poll only learns what is there: a request older than the process was for
    its predecessor, one written since it started is this process's, even when it lands
    before that first poll (CI saw it dropped under load)."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from ops.roles.runtime import RUN_NOW_KEY, _ControlWatcher
    from ops.store import Control

    rows: list[Control] = []
    runs: list[int] = []

    async def controls(account: str) -> SimpleNamespace:
        return SimpleNamespace(rows=list(rows))

    ctx = SimpleNamespace(account=None, role="signal-engine",
                          store=SimpleNamespace(controls=controls),
                          run_now=lambda: runs.append(1))
    watcher = _ControlWatcher(ctx, 1.0)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    rows.append(Control("*", RUN_NOW_KEY, {}, now - timedelta(minutes=5), "old"))
    await watcher.poll_once()
    assert runs == []  # the predecessor's
    rows[0] = Control("*", RUN_NOW_KEY, {}, datetime.now(UTC), "operator")
    await watcher.poll_once()
    assert runs == [1]

    late = _ControlWatcher(ctx, 1.0)  # type: ignore[arg-type]
    rows[0] = Control("*", RUN_NOW_KEY, {}, datetime.now(UTC), "operator")  # before its poll
    await late.poll_once()
    assert runs == [1, 1]
    await late.poll_once()
    assert runs == [1, 1]  # once
