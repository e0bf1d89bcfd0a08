"""The embedded Postgres: foreground mode for supervisord, concurrent `ensure_running`,
and OPS_DATABASE_URL taking precedence."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from ops.runtime.env import RuntimeEnv, runtime_env
from ops.store import embedded
from ops.store.embedded import EmbeddedPostgres, run_as_user
from ops.store.migrate import migrate
from ops.store.postgres import connect, is_outage
from tests.conftest import TEST_PG_OPTIONS
from tests.support import eventually_sync

REPO = Path(__file__).resolve().parents[2]


async def _reachable(url: str) -> bool:
    try:
        conn = await connect(url, connect_timeout=1)
    except Exception as exc:
        if is_outage(exc):
            return False
        raise
    await conn.close()
    return True


def _wait_reachable(url: str, proc: subprocess.Popen[bytes], within_s: float = 30) -> None:
    def reachable() -> bool:
        if asyncio.run(_reachable(url)):
            return True
        assert proc.poll() is None, f"postgres exited {proc.returncode}"
        return False

    eventually_sync(reachable, "foreground postgres to accept connections", within_s, 0.05)


def test_foreground_command_is_supervisable(pg_home: Path) -> None:
    server = EmbeddedPostgres(pg_home / "pg", options=TEST_PG_OPTIONS)
    server.init()
    cmd = server.foreground_command()
    assert "-D" in cmd and str(server.pgdata) in cmd
    log = (pg_home / "fg.log").open("wb")
    try:
        # What supervisord does: run argv as `user=`, stop with SIGINT (fast shutdown).
        proc = subprocess.Popen(cmd, user=run_as_user(), stdout=log, stderr=log)
        try:
            _wait_reachable(server.url(), proc)
            assert asyncio.run(migrate(server.url())).applied[0] == "0001_initial"
            assert server.is_running()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
            assert not server.is_running()
            # `stop()` also ends a foreground server (e.g. `ops down` without supervisord).
            proc = subprocess.Popen(cmd, user=run_as_user(), stdout=log, stderr=log)
            _wait_reachable(server.url(), proc)
            server.stop()
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        log.close()


def test_ensure_running_from_two_processes_at_once(pg_home: Path) -> None:
    home = pg_home / "home"
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env_vars["OPS_HOME"] = str(home)
    code = ("from ops.runtime.env import runtime_env\n"
            "from ops.store.embedded import ensure_running\n"
            "print(ensure_running(runtime_env()))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env_vars, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    env = runtime_env({"OPS_HOME": str(home)})
    try:
        outs = [p.communicate(timeout=90) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        urls = {out.strip() for out, _ in outs}
        assert urls == {embedded.embedded_url(env)}
        assert asyncio.run(_reachable(urls.pop()))
        # Idempotent: a third call finds it running and returns the same URL.
        pid = embedded.for_env(env).postmaster_pid()
        assert embedded.ensure_running(env) == embedded.embedded_url(env)
        assert embedded.for_env(env).postmaster_pid() == pid
    finally:
        embedded.stop(env)
    assert not embedded.for_env(env).is_running()


def test_database_url_prefers_ops_database_url(tmp_path: Path) -> None:
    env = RuntimeEnv(tmp_path / "ops.toml", tmp_path, "postgresql://ops@db.example/ops")
    assert embedded.database_url(env) == "postgresql://ops@db.example/ops"
    assert not (tmp_path / "pg").exists()  # nothing was initialised or started
