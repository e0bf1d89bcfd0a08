"""Issue 15 end to end: the one-role-per-container layout on one machine, no supervisord.

Every role runs as its own process group (`ops run ROLE [--account TIER]`, as a container
runs it) with a home of its own (a container's emptyDir: its own buffer, logs and
heartbeat file), all sharing one Postgres and the simulator; the monitor role
(`ops run monitor`) watches them from Postgres and alerts through a webhook served by
this test. `ops health` is what an orchestrator's probe runs, inside each "container".

- SIGSTOP a role: its health check fails within 10 s, the monitor opens an incident for
  it and the alert reaches the webhook; SIGCONT: healthy again, the incident closes.
- A standby copy of a dispatcher waits on the advisory lock (alive, not ready); SIGKILL
  the active one: the standby holds the lock within 2 s and trades on, and no signal ever
  became two broker orders.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ops.commands.stack import write_demo_secrets
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store.embedded import EmbeddedPostgres
from ops.supervise.healthcheck import HealthFile, HealthFileError, health_path
from tests.e2e.conftest import ROOT, make_home, webhook
from tests.support import eventually_sync

pytestmark = pytest.mark.timeout(420)

ACCOUNTS = ("large", "tiny")
#: Between checks: most run a health probe (a process) or query Postgres.
POLL_S = 0.2
ACCOUNT_ROLES = ("stream", "dispatcher", "position-manager")


@dataclass
class Container:
    """One role in a home of its own, in its own process group."""

    name: str  # the process name, as its heartbeat says: "large-stream", "monitor"
    role: str
    account: str | None
    home: Path
    proc: subprocess.Popen[bytes]

    @property
    def args(self) -> list[str]:
        return [self.role, *(["--account", self.account] if self.account else [])]


@dataclass
class Fleet:
    root: Path
    config: Path
    environ: dict[str, str]
    port: int
    containers: list[Container] = field(default_factory=list)

    def env_for(self, home: Path) -> dict[str, str]:
        return {**self.environ, "OPS_HOME": str(home)}

    def start(self, role: str, account: str | None = None, copy: int = 0) -> Container:
        name = f"{account}-{role}" if account else role
        home = self.root / f"{name}-{copy}"
        home.mkdir()
        shutil.copy(self.root / "secrets.json", home / "secrets.json")
        # The demo's identity (its accounts' numbers) travels with its keys.
        shutil.copy(self.root / "demo.json", home / "demo.json")
        argv = [sys.executable, "-m", "ops", "run", role,
                *(["--account", account] if account else [])]
        with (home / "out.log").open("wb") as out:
            proc = subprocess.Popen(argv, env=self.env_for(home), cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        c = Container(name, role, account, home, proc)
        self.containers.append(c)
        return c

    def health(self, c: Container, *, ready: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ops", "health", *c.args,
                               *(["--ready"] if ready else [])],
                              capture_output=True, text=True, env=self.env_for(c.home),
                              cwd=ROOT, timeout=30)

    def signal(self, c: Container, sig: int) -> None:
        os.killpg(c.proc.pid, sig)

    def ops(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ops", *args], capture_output=True,
                              text=True, env=self.env_for(self.root), cwd=ROOT, timeout=60)

    def query(self, sql: str, *args: Any) -> list[Any]:
        import asyncio

        from ops.store.postgres import connect

        async def run() -> list[Any]:
            conn = await connect(self.environ["OPS_DATABASE_URL"])
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def stop_all(self) -> None:
        for c in self.containers:
            try:
                os.killpg(c.proc.pid, signal.SIGCONT)
                os.killpg(c.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        for c in self.containers:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait(10)


def sim_orders(port: int, account: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/state", timeout=10) as resp:
        state = json.loads(resp.read())
    return list(state["accounts"][account]["orders"])


@pytest.fixture
def fleet() -> Iterator[tuple[Fleet, list[dict[str, Any]]]]:
    with webhook() as (url, received):
        def tweak(text: str) -> str:
            assert "webhook_urls = []" in text
            return text.replace("webhook_urls = []", f'webhook_urls = ["{url}"]')

        root, port, environ, env = make_home(tweak)
        pg = EmbeddedPostgres(root / "pg")
        sim: subprocess.Popen[bytes] | None = None
        f: Fleet | None = None
        try:
            pg.start()
            environ["OPS_DATABASE_URL"] = pg.url()
            config = load_config(env.config_path, root)
            write_demo_secrets(RuntimeEnv(config_path=env.config_path, home=root,
                                          database_url=pg.url()), config)
            migrate = subprocess.run([sys.executable, "-m", "ops", "db", "migrate"],
                                     capture_output=True, text=True, env=environ, cwd=ROOT,
                                     timeout=120)
            assert migrate.returncode == 0, migrate.stdout + migrate.stderr
            sim = subprocess.Popen(
                [sys.executable, "-m", "ops", "sim", "--port", str(port), "--seed",
                 str(config.sim.seed), "--clock", "open", "--accounts",
                 str(root / "demo.json"), "--secrets", str(root / "secrets.json")],
                env=environ, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            eventually_sync(lambda: _answers(port), "the simulator answers", 30, POLL_S)
            f = Fleet(root, env.config_path, environ, port)
            for account in ACCOUNTS:
                for role in ACCOUNT_ROLES:
                    f.start(role, account)
            f.start("signal-engine")
            f.start("monitor")
            yield f, received
        finally:
            if f is not None:
                f.stop_all()
                if os.environ.get("OPS_TEST_KEEP_LOGS"):
                    for c in f.containers:
                        shutil.copy(c.home / "out.log",
                                    Path(os.environ["OPS_TEST_KEEP_LOGS"]) / f"{c.home.name}.log")
            if sim is not None:
                os.killpg(sim.pid, signal.SIGTERM)
                sim.wait(20)
            pg.stop(mode="immediate")
            shutil.rmtree(root, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        sim_orders(port, "large")
        return True
    except OSError:
        return False


def test_hung_role_fails_its_probe_and_the_monitor_alerts_then_a_standby_takes_over(
        fleet: tuple[Fleet, list[dict[str, Any]]]) -> None:
    f, received = fleet
    for c in f.containers:
        def serving(c: Container = c) -> bool:
            return f.health(c, ready=True).returncode == 0

        eventually_sync(serving, f"{c.name} healthy and active", 90, POLL_S)

    # -- a hung role -----------------------------------------------------------------------
    victim = next(c for c in f.containers if c.name == "large-position-manager")
    f.signal(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    out = eventually_sync(lambda: r if (r := f.health(victim)).returncode != 0 else None,
                          "the hung role's health check fails", 10, POLL_S)
    assert out.returncode == 1 and "large-position-manager" in out.stdout, out
    print(f"\nprobe failed {time.monotonic() - stopped:.1f}s after SIGSTOP: "
          f"{out.stdout.strip()}")

    def open_incident() -> list[Any]:
        return f.query("SELECT kind, detail FROM incidents "
                       "WHERE process = 'large-position-manager' AND closed_at IS NULL")
    [inc] = eventually_sync(open_incident, "the monitor's incident for the hung role", 30,
                            POLL_S)
    eventually_sync(lambda: [b for b in received if "large-position-manager" in json.dumps(b)],
                    "the alert delivered to the webhook", 60, POLL_S)
    print(f"incident {inc['kind']}: {inc['detail']}")

    f.signal(victim, signal.SIGCONT)
    eventually_sync(lambda: f.health(victim).returncode == 0, "healthy again", 30, POLL_S)
    eventually_sync(lambda: not open_incident(), "the incident closed", 90, POLL_S)

    # -- a standby takes over --------------------------------------------------------------
    active = next(c for c in f.containers if c.name == "tiny-dispatcher")
    standby = f.start("dispatcher", "tiny", copy=1)
    eventually_sync(lambda: f.health(standby).returncode == 0,
                    "the standby alive (liveness ok)", 60, POLL_S)
    assert f.health(standby, ready=True).returncode != 0  # waits on the lock: not ready
    f.signal(active, signal.SIGKILL)
    killed = time.time()

    def first_active_beat() -> HealthFile | None:
        # Read in process, not through a probe: its own start-up (a python process, 0.3-1 s
        # on a loaded host) is no part of the hand-over.
        path = health_path(standby.home, standby.name)
        try:
            beat = HealthFile.parse(path.read_text(), str(path))
        except (OSError, HealthFileError):  # between a rename and the next read
            return None
        return beat if beat.active else None

    beat = eventually_sync(first_active_beat, "the standby holds the lock", 10, 0.02)
    took = beat.ts - killed
    print(f"hand-over {took:.2f}s after SIGKILL (the standby's first active beat)")
    assert took <= 2.0, took
    assert f.health(standby, ready=True).returncode == 0  # the probe says so too
    eventually_sync(lambda: f.query("SELECT pid FROM heartbeats WHERE process = "
                                    "'tiny-dispatcher'")[0]["pid"] == standby.proc.pid,
                    "the heartbeat row is the standby's", 10, POLL_S)

    # It trades on: a new signal is dispatched by the standby; no signal became two orders.
    added = f.ops("signal", "add", "--account", "tiny", "--symbol", "SPY", "--side", "buy",
                  "--notional", "20", "--no-wait")
    assert added.returncode == 0, added.stdout + added.stderr
    eventually_sync(lambda: f.query("SELECT 1 FROM signals WHERE account = 'tiny' AND status "
                                    "= 'submitted' AND decided_at > now() - interval "
                                    "'30 seconds'"),
                    "a signal dispatched after the hand-over", 30, POLL_S)
    for account in ACCOUNTS:
        per_signal = Counter(o["client_order_id"] for o in sim_orders(f.port, account)
                             if o["client_order_id"].startswith(f"ops-{account}-sig-"))
        assert per_signal and max(per_signal.values()) == 1, per_signal
        submitted = f.query("SELECT client_order_id FROM signals WHERE account = $1 AND "
                            "status = 'submitted'", account)
        assert {r["client_order_id"] for r in submitted} <= set(per_signal)
