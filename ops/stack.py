"""`ops up` and `ops down`: bring the whole stack up under supervisord, and take it down.

`up` renders supervisord's config from ours, starts supervisord, migrates the database
once it answers, and returns only when every process has reported a fresh heartbeat — or
fails naming the processes that did not, with the end of their logs. `down` stops
everything it started, the embedded Postgres included.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ops.config import Config
from ops.env import RuntimeEnv
from ops.supervisor import (
    ACCOUNT_ROLES,
    SHARED_ROLES,
    StackSpec,
    SupervisorClient,
    SupervisorUnavailable,
    conf_path,
    program_name,
    write_config,
)


class StackError(Exception):
    """`ops up`/`ops down` could not do what was asked; the message says what and why."""


@dataclass(frozen=True, slots=True)
class Expected:
    """A process `ops up` waits for: its supervisord name and heartbeat name."""

    qualified: str
    process: str
    heartbeats: bool


def expected_processes(config: Config, spec: StackSpec) -> list[Expected]:
    out: list[Expected] = []
    if spec.embedded_postgres:
        out.append(Expected("postgres:postgres", "postgres", heartbeats=False))
    if spec.simulator_port is not None:
        out.append(Expected("sim:sim", "sim", heartbeats=False))
    for role in SHARED_ROLES:
        out.append(Expected(f"{role}:{role}", role, heartbeats=True))
    for account in spec.accounts:
        for role in ACCOUNT_ROLES:
            name = program_name(role, account)
            out.append(Expected(f"{account}:{name}", name, heartbeats=True))
    return out


def write_demo_secrets(env: RuntimeEnv, config: Config) -> Path:
    """Write the simulator's throwaway keys where the file credential provider reads them."""
    from ops.credentials import write_secrets_file
    from ops.sim import default_accounts

    if config.credentials.provider != "file":
        raise StackError(
            f"{env.config_path}: credentials.provider: --demo needs provider \"file\" "
            f"(got {config.credentials.provider!r})"
        )
    sim_accounts = {a.name: a for a in default_accounts(seed=config.sim.seed)}
    secrets: dict[str, dict[str, str]] = {}
    for name, account in config.enabled_accounts().items():
        sim = sim_accounts.get(name)
        if sim is None:
            raise StackError(
                f"{env.config_path}: accounts.{name}: the simulator has no demo account "
                f"{name!r} (it has {', '.join(sorted(sim_accounts))})"
            )
        secrets[account.secret_id] = {
            "api_key": sim.key_id,
            "api_secret": sim.secret,
            "account_name": name,
        }
    path = config.credentials.resolved_file_path(env)
    write_secrets_file(path, secrets)
    return path


def build_spec(env: RuntimeEnv, config: Config, *, demo: bool, nodaemon: bool) -> StackSpec:
    from ops.store import embedded

    pg_cmd: list[str] | None = None
    pg_user: str | None = None
    if not env.database_url:
        embedded.prepare(env)
        pg_cmd = embedded.foreground_command(env)
        pg_user = embedded.run_as_user()
    return StackSpec(
        accounts=sorted(config.enabled_accounts()),
        embedded_postgres=pg_cmd,
        postgres_user=pg_user,
        simulator_port=config.sim.port if demo else None,
        nodaemon=nodaemon,
    )


def _supervisord_running(env: RuntimeEnv) -> bool:
    try:
        SupervisorClient.for_env(env, timeout_s=2).state()
    except SupervisorUnavailable:
        return False
    return True


def start_supervisord(env: RuntimeEnv, *, timeout_s: float = 20) -> None:
    exe = shutil.which("supervisord", path=os.path.dirname(sys.executable)) or shutil.which(
        "supervisord"
    )
    if exe is None:
        raise StackError("supervisord not found next to this Python or on PATH")
    proc = subprocess.run(
        [exe, "-c", str(conf_path(env))], capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        raise StackError(f"supervisord failed to start: {proc.stderr.strip() or proc.stdout}")
    client = SupervisorClient.for_env(env, timeout_s=2)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.state() == "RUNNING":
                return
        except SupervisorUnavailable:
            pass
        time.sleep(0.1)
    raise StackError(f"supervisord did not answer on {client.sock} within {timeout_s:.0f}s")


async def wait_for_database(url: str, timeout_s: float) -> None:
    from ops.store.postgres import connect, is_outage

    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            conn = await connect(url, timeout=2)
        except Exception as exc:
            if not is_outage(exc):
                raise
            last = exc
            await asyncio.sleep(0.2)
            continue
        await conn.close()
        return
    raise StackError(f"database did not accept connections within {timeout_s:.0f}s: {last}")


def stop_supervisord(env: RuntimeEnv, *, timeout_s: float = 60) -> bool:
    """Shut supervisord down (it stops its programs first); False if it was not running."""
    client = SupervisorClient.for_env(env, timeout_s=5)
    try:
        pid = client.pid()
        client.shutdown()
    except SupervisorUnavailable:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    raise StackError(f"supervisord (pid {pid}) did not exit within {timeout_s:.0f}s")


def now_utc() -> datetime:
    return datetime.now(UTC)


def wait_until(
    check: Callable[[], Sequence[str]], timeout_s: float, interval_s: float = 0.25
) -> Sequence[str]:
    """Poll `check()` (the names still missing) until empty or the deadline; returns the rest."""
    deadline = time.monotonic() + timeout_s
    missing = check()
    while missing and time.monotonic() < deadline:
        time.sleep(interval_s)
        missing = check()
    return missing
