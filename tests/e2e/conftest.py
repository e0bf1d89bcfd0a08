"""The demo stack for end-to-end tests: `ops up --demo` in a subprocess, shared per module.

`demo_stack` gives a tmp OPS_HOME (outside pytest's tmp tree: the embedded Postgres runs as
user `pgserver` when we are root and must traverse every parent), a copy of conf/ops.toml
whose simulator port is a free one, and the `ops up` result (exit code, output, seconds).
Teardown ALWAYS runs `ops down`, then, as a last resort, kills whatever the pid files
still name, so no supervisord or postgres outlives the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ops.runtime.env import RuntimeEnv
from ops.store import embedded
from ops.store.postgres import connect
from tests.support import eventually_sync, free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    env: RuntimeEnv
    environ: dict[str, str]
    sim_port: int
    up: subprocess.CompletedProcess[str]
    up_seconds: float

    def ops(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ops", *args], capture_output=True,
                              text=True, env=self.environ, timeout=timeout, cwd=ROOT)

    def query(self, sql: str, *args: Any) -> list[Any]:
        async def run() -> list[Any]:
            conn = await connect(embedded.embedded_url(self.env))
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def poll(self, what: str, check: Any, timeout_s: float, interval_s: float = 0.5,
             explain: Callable[[], str] | None = None) -> Any:
        """`eventually_sync` at a stack's pace (a check runs `ops` or queries Postgres):
        the truthy value of `check()`; on timeout, fails naming `what` (and what
        `explain()` says about the last state)."""
        return eventually_sync(check, what, timeout_s, interval_s, explain)


def counter(stack: Stack, account: str, role: str, name: str) -> int:
    """A heartbeat counter of `<account>-<role>` (0 before its first heartbeat)."""
    rows = stack.query("SELECT counters FROM heartbeats WHERE process = $1",
                       f"{account}-{role}")
    if not rows:
        return 0
    raw = rows[0]["counters"]
    counters = json.loads(raw) if isinstance(raw, str) else (raw or {})
    return int(counters.get(f"{role}.{name}", 0))


def after(stack: Stack, account: str, role: str, name: str, n: int) -> None:
    """Until the heartbeat counter `<role>.<name>` of `<account>-<role>` grew by `n` (the
    process did that much more work: passes, syncs)."""
    target = counter(stack, account, role, name) + n
    stack.poll(f"{n} more {name} of {account}'s {role}",
               lambda: counter(stack, account, role, name) >= target, timeout_s=60)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _kill_leftovers(env: RuntimeEnv) -> list[str]:
    """SIGKILL what the pid files still name (checked by command line, so a recycled pid
    is never hit): supervisord with its children, and the postmaster."""
    killed: list[str] = []
    pidfiles: Sequence[tuple[str, Path]] = (
        ("supervisord", env.run_dir / "supervisord.pid"),
        ("postgres", env.embedded_pg_dir / "data" / "postmaster.pid"),
    )
    for name, path in pidfiles:
        try:
            pid = int(path.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
        if name not in _cmdline(pid):
            continue
        for victim in [*_children(pid), pid]:
            try:
                os.kill(victim, signal.SIGKILL)
                killed.append(f"{name} {victim}")
            except ProcessLookupError:
                pass
    return killed


def make_home(tweak: Any = None) -> tuple[Path, int, dict[str, str], RuntimeEnv]:
    """A fresh OPS_HOME with a copy of conf/ops.toml on a free simulator port."""
    home = Path(tempfile.mkdtemp(prefix="ops-e2e-", dir="/tmp"))
    port = free_port()
    config = home / "ops.toml"
    text = (ROOT / "conf" / "ops.toml").read_text().replace("8765", str(port))
    config.write_text(tweak(text) if tweak else text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    environ.update(OPS_HOME=str(home), OPS_CONFIG=str(config))
    return home, port, environ, RuntimeEnv(config_path=config, home=home, database_url=None)


def tear_down(env: RuntimeEnv, environ: dict[str, str]) -> None:
    """`ops down` (twice: the second must find nothing), then kill any leftovers, then
    remove the home (kept when $OPS_TEST_KEEP_HOME is set, to inspect a failure); fails
    the test if `ops down` did not leave the host clean."""
    downs = [subprocess.run([sys.executable, "-m", "ops", "down"], capture_output=True,
                            text=True, env=environ, timeout=120, cwd=ROOT) for _ in range(2)]
    leftovers = _kill_leftovers(env)
    keep = os.environ.get("OPS_TEST_KEEP_LOGS")  # a directory to copy the stack's logs to
    if keep:
        shutil.copytree(env.log_dir, Path(keep) / env.home.name, dirs_exist_ok=True)
    if os.environ.get("OPS_TEST_KEEP_HOME"):  # the whole home (Postgres data dir too) stays
        print(f"\nkept OPS_HOME {env.home}")
    else:
        shutil.rmtree(env.home, ignore_errors=True)
    for down in downs:
        assert down.returncode == 0, down.stdout + down.stderr
    assert "nothing running" in downs[1].stdout, downs[1].stdout
    assert not leftovers, f"`ops down` left these running: {leftovers}"


def up_demo(env: RuntimeEnv, environ: dict[str, str], port: int) -> Stack:
    """`ops up --demo` in a home from `make_home` (its outcome is in `Stack.up`)."""
    t0 = time.monotonic()
    up = subprocess.run([sys.executable, "-m", "ops", "up", "--demo", "--timeout", "90"],
                        capture_output=True, text=True, env=environ, timeout=150, cwd=ROOT)
    return Stack(env, environ, port, up, time.monotonic() - t0)


@contextmanager
def running_demo() -> Iterator[Stack]:
    """A demo stack in a fresh home for the `with` block; `tear_down` always runs after."""
    _, port, environ, env = make_home()
    try:
        yield up_demo(env, environ, port)
    finally:
        tear_down(env, environ)


@pytest.fixture(scope="module")
def demo_stack() -> Iterator[Stack]:
    with running_demo() as stack:
        print(f"\n`ops up --demo` took {stack.up_seconds:.1f}s (exit {stack.up.returncode})")
        yield stack


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            type(self).received.append(json.loads(body))
        except ValueError:
            type(self).received.append({"unreadable": body.decode(errors="replace")})
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook alert sink on loopback: its URL and the JSON bodies it received."""
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()
