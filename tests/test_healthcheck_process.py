"""`ops health` against real role processes (`python -m ops run ...`), the real simulator
and real Postgres: the local heartbeat file each writes, judged as an orchestrator's probe
would (`python -m ops health ...` in its own interpreter).

- a running role is healthy; SIGSTOP -> unhealthy (stale) within 10 s; SIGCONT -> healthy;
  a clean stop removes the file (exit 2);
- a standby copy (its own OPS_HOME, as a second container has) waiting on the lock is
  alive but not ready; SIGKILL of the active one -> the standby becomes ready;
- a revoked API key: the role's runs fail -> unhealthy, naming the cause (never the key);
  the key restored -> healthy again;
- Postgres stopped under a running role: it stays healthy (liveness never depends on the
  database: an orchestrator must not restart roles during an outage);
- a file that cannot be written: logged once, the role goes on, `ops health` unhealthy;
- the monitor (no --account) has the same check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ops.store.embedded import EmbeddedPostgres
from ops.supervise.healthcheck import HealthFile, health_path
from tests.roles.conftest import REPO, RoleEnv, RoleProc, running_role
from tests.roles.conftest import role_env as role_env  # noqa: F401  (fixture)
from tests.roles.conftest import sim as sim  # noqa: F401  (fixture)
from tests.support import eventually

pytestmark = pytest.mark.system

STALE_S = 5.0  # tests/roles/conftest.py config: heartbeat_stale_s = 5, heartbeats 0.5 s


async def ops_health(home: Path, role_env: RoleEnv, role: str, account: str | None,
                     *, ready: bool = False) -> tuple[int, str]:
    """`python -m ops health ...` with OPS_HOME = `home`: (exit code, its stdout line)."""
    argv = ["-m", "ops", "health", role]
    if account is not None:
        argv += ["--account", account]
    if ready:
        argv.append("--ready")
    environ = role_env.subprocess_env() | {"OPS_HOME": str(home)}
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, *argv], stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=environ, cwd=str(REPO))
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    assert err == b"", err
    lines = out.decode().splitlines()
    assert len(lines) == 1, lines
    return proc.returncode, lines[0]


def health_is(home: Path, role_env: RoleEnv, role: str, account: str | None, code: int,
              *, ready: bool = False, contains: str = "") -> Callable[[], Awaitable[bool]]:
    """A predicate for `eventually`: `ops health` exits `code` and says `contains`."""
    async def pred() -> bool:
        got, line = await ops_health(home, role_env, role, account, ready=ready)
        return got == code and contains in line
    return pred


def beat(home: Path, process: str) -> HealthFile | None:
    path = health_path(home, process)
    try:
        return HealthFile.parse(path.read_text(), str(path))
    except FileNotFoundError:
        return None


async def test_a_role_is_healthy_stale_when_stopped_and_gone_after_a_clean_stop(
    role_env: RoleEnv,
) -> None:
    home = role_env.home
    proc = await role_env.spawn("stream", "large")
    await eventually(health_is(home, role_env, "stream", "large", 0, ready=True,
                               contains="(active)"), "large-stream healthy and ready", 30)
    code, line = await ops_health(home, role_env, "stream", "large")
    assert code == 0 and line.startswith("ok: large-stream heartbeat "), line
    state = beat(home, "large-stream")
    assert state is not None
    assert (state.pid, state.interval_s, state.stale_s, state.active, state.failing) == (
        proc.pid, 0.5, STALE_S, True, False)

    os.kill(proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        await eventually(health_is(home, role_env, "stream", "large", 1,
                                   contains="stale after 5s"),
                         "ops health failing on the stopped role", 10)
        detected_s = time.monotonic() - t0
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert detected_s > STALE_S - 1.0  # not unhealthy before its bound
    await eventually(health_is(home, role_env, "stream", "large", 0),
                     "healthy again after SIGCONT", 10)

    assert await proc.stop() == 0
    code, line = await ops_health(home, role_env, "stream", "large")
    assert code == 2, line
    assert line.startswith("no heartbeat file ") and "(not started yet?)" in line
    assert not health_path(home, "large-stream").exists()
    print(f"\nSIGSTOP -> ops health unhealthy in {detected_s:.1f}s (bound 10 s)")


def _second_home(role_env: RoleEnv, home: Path) -> Path:
    home.mkdir()
    shutil.copy2(role_env.secrets_path, home / "secrets.json")
    return home


async def spawn_in_home(role_env: RoleEnv, home: Path, role: str, account: str) -> RoleProc:
    """`ops run` with its own OPS_HOME (a second container: own buffer, own health file),
    the same config, database and secrets (copied: the config reads ${OPS_HOME})."""
    log_path = _second_home(role_env, home) / f"{role}-{account}.log"
    environ = role_env.subprocess_env() | {"OPS_HOME": str(home)}
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ops", "run", role, "--account", account,
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=environ, cwd=str(REPO))
    rp = RoleProc(proc, log_path)
    role_env.procs.append(rp)  # the fixture kills it at teardown if the test did not
    return rp


async def test_a_standby_is_alive_but_not_ready_until_it_takes_over(
    role_env: RoleEnv, tmp_path: Path,
) -> None:
    active_home, standby_home = role_env.home, tmp_path / "standby_home"
    active = await role_env.spawn("dispatcher", "large")
    await eventually(health_is(active_home, role_env, "dispatcher", "large", 0, ready=True),
                     "the first copy ready", 30)
    standby = await spawn_in_home(role_env, standby_home, "dispatcher", "large")
    await eventually(health_is(standby_home, role_env, "dispatcher", "large", 0,
                               contains="(standby)"), "the second copy alive as a standby", 30)
    code, line = await ops_health(standby_home, role_env, "dispatcher", "large", ready=True)
    assert code == 1 and line.startswith("not ready: large-dispatcher is not active"), line
    # The standby beats on: still alive and not ready well past the stale bound.
    first = beat(standby_home, "large-dispatcher")
    assert first is not None and first.pid == standby.pid and not first.active

    def beat_moved_past_the_bound() -> bool:
        now = beat(standby_home, "large-dispatcher")
        return now is not None and now.ts > first.ts + STALE_S
    await eventually(beat_moved_past_the_bound, "the standby beating past the bound", 15)
    assert (await ops_health(standby_home, role_env, "dispatcher", "large"))[0] == 0
    assert (await ops_health(standby_home, role_env, "dispatcher", "large", ready=True))[0] == 1
    assert (await ops_health(active_home, role_env, "dispatcher", "large", ready=True))[0] == 0

    active.kill()
    await active.proc.wait()
    await eventually(health_is(standby_home, role_env, "dispatcher", "large", 0, ready=True,
                               contains="(active)"), "the standby took over: ready", 20)
    assert await standby.stop() == 0
    assert (await ops_health(standby_home, role_env, "dispatcher", "large"))[0] == 2


async def test_a_revoked_key_makes_the_role_unhealthy_naming_the_cause(
    role_env: RoleEnv,
) -> None:
    home = role_env.home
    await role_env.spawn("position-manager", "large")
    await eventually(health_is(home, role_env, "position-manager", "large", 0, ready=True),
                     "large-position-manager healthy", 30)
    role_env.sim.faults.revoke_key("large")
    try:
        await eventually(health_is(home, role_env, "position-manager", "large", 1,
                                   contains="failing"), "unhealthy: failing", 30)
        code, line = await ops_health(home, role_env, "position-manager", "large")
        assert code == 1
        assert line.startswith("unhealthy: large-position-manager failing: the broker "
                               "rejected large's API key (401): rotate the secret "
                               "ops-pipeline/alpaca"), line
        spec = role_env.sim.account("large")
        assert spec.secret not in line and spec.key_id not in line
        state = beat(home, "large-position-manager")
        assert state is not None and state.failing and state.active
        assert state.failing_reason is not None and "(401)" in state.failing_reason
    finally:
        role_env.sim.faults.revoke_key("large", on=False)
    await eventually(health_is(home, role_env, "position-manager", "large", 0),
                     "healthy again once the key is back", 30)


async def test_a_role_stays_healthy_while_postgres_is_down(
    role_env: RoleEnv, pg_dedicated: EmbeddedPostgres,
) -> None:
    url = pg_dedicated.url()
    renv = RoleEnv(sim=role_env.sim, env=replace(role_env.env, database_url=url), pg_url=url)
    home = renv.home
    proc = await renv.spawn("stream", "large")
    try:
        await eventually(health_is(home, renv, "stream", "large", 0, ready=True),
                         "large-stream healthy", 30)
        pg_dedicated.stop(mode="fast")
        down_at = time.time()

        async def beating_long_after_the_outage() -> bool:
            code, line = await ops_health(home, renv, "stream", "large", ready=True)
            assert code == 0, f"unhealthy while Postgres is down: {line}"
            state = beat(home, "large-stream")
            assert state is not None and not state.failing and state.active
            return state.ts > down_at + 2 * STALE_S
        await eventually(beating_long_after_the_outage,
                         "healthy beats for twice the stale bound of the outage", 30)
    finally:
        await proc.stop()


async def test_an_unwritable_heartbeat_file_is_logged_once_and_the_role_goes_on(
    role_env: RoleEnv, caplog: pytest.LogCaptureFixture,
) -> None:
    """A home where the file cannot be written (here `run/health` is a plain file; in a
    container, a read-only filesystem): the role runs and beats into Postgres, logs the
    problem once (naming the path), `ops health` says unhealthy, and the first write that
    works again is logged too."""
    caplog.set_level(logging.INFO, logger="ops.roles.runtime")
    blocker = role_env.home / "run" / "health"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    async with running_role(role_env, "stream", "large") as rt:
        hb = rt._heartbeat
        assert hb is not None
        await eventually(lambda: hb.file_errors >= 3, "three failed file writes", 10)
        beats = hb.task.beats
        await eventually(lambda: hb.task.beats > beats + 1, "heartbeat rows still written", 10)
        code, line = await ops_health(role_env.home, role_env, "stream", "large")
        assert code == 1 and line.startswith("unhealthy: cannot read "), line
        failures = [r.getMessage() for r in caplog.records if "cannot be written" in
                    r.getMessage()]
        assert len(failures) == 1 and str(blocker) in failures[0], failures

        blocker.unlink()
        await eventually(health_is(role_env.home, role_env, "stream", "large", 0),
                         "healthy once the file can be written", 10)
        await eventually(lambda: any("is written again" in r.getMessage()
                                     for r in caplog.records), "the recovery logged", 5)
    assert not health_path(role_env.home, "large-stream").exists()  # removed at the stop


async def test_the_monitor_has_a_health_check_like_any_role(role_env: RoleEnv) -> None:
    """`ops run monitor` (no --account) beats its file as `monitor`: `ops health monitor`."""
    home = role_env.home
    proc = await role_env.spawn("monitor")
    await eventually(health_is(home, role_env, "monitor", None, 0, ready=True,
                               contains="ok: monitor heartbeat"), "the monitor healthy", 30)
    state = beat(home, "monitor")
    assert state is not None and state.pid == proc.pid and state.active
    assert await proc.stop() == 0
    assert (await ops_health(home, role_env, "monitor", None))[0] == 2
