"""`ops status` and `ops dash` in the orchestrated layout (one role per container, no
supervisord): processes come from heartbeat rows (RUNNING / STALE / MISSING per expected
(account, role), the monitor included), a missing supervisord is not an outage, and the
report says which layout it judged. Real Postgres (the per-test database), the real CLI.
The supervisord layout's own tests are tests/test_status*.py (conf/ops.toml declares it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ops.commands.status import collect_status, render_text
from ops.core.config import Config, ConfigError
from ops.core.models import Heartbeat, RunRecord
from ops.runtime.config import load_config, load_config_text
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.supervise.layout import orchestrated_processes
from ops.supervise.supervisor import ProcessInfo, SupervisorClient, conf_path
from tui.data import DashboardData
from tui.text import alarm_lines
from tui.text import render_text as dash_text

ROOT = Path(__file__).resolve().parents[1]
DEMO = (ROOT / "conf" / "ops.toml").read_text()
EVERYONE = ["signal-engine", "monitor", "large-stream", "large-dispatcher",
            "large-position-manager", "tiny-stream", "tiny-dispatcher",
            "tiny-position-manager"]


@dataclass
class Deployment:
    env: RuntimeEnv
    config: Config
    store: Store

    async def beat(self, process: str, *, age_s: float = 0.2, up_s: float = 600.0,
                   ran: bool = True, pid: int = 1) -> None:
        """A heartbeat row (and a completed run) as the process would have written it."""
        ident = next(e for e in orchestrated_processes(self.config) if e.name == process)
        now = datetime.now(UTC)
        await self.store.heartbeat(Heartbeat(
            process, ident.account, ident.role, pid, now - timedelta(seconds=age_s),
            now - timedelta(seconds=up_s), {"phase": "running"}))
        if ran:
            at = now - timedelta(seconds=min(age_s, 1.0))
            await self.store.record_run(RunRecord(
                RunRecord.make_slot_id(ident.account, process, at), process, ident.account,
                ident.role, at, at, at, at, "ok", 0.01))


def write_config(path: Path, layout: str) -> Config:
    path.write_text(DEMO.replace('layout = "supervisord"', f'layout = "{layout}"'))
    return load_config(path)


@pytest.fixture
async def orchestrated(tmp_path: Path, pg_url: str) -> AsyncIterator[Deployment]:
    env = RuntimeEnv(config_path=tmp_path / "ops.toml", home=tmp_path / "home",
                     database_url=pg_url)
    config = write_config(env.config_path, "orchestrated")
    async with await Store.open(env, process="test") as store:
        yield Deployment(env, config, store)


def ops(*args: str, d: Deployment) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPS_HOME": str(d.env.home), "OPS_CONFIG": str(d.env.config_path),
           "OPS_DATABASE_URL": d.env.database_url or ""}
    return subprocess.run([sys.executable, "-m", "ops", *args], capture_output=True,
                          text=True, env=env, timeout=60, cwd=ROOT)


async def test_processes_come_from_heartbeats_running_stale_missing(
    orchestrated: Deployment,
) -> None:
    d = orchestrated
    for name in EVERYONE:
        if name == "tiny-stream":
            await d.beat(name, age_s=60.0)  # stopped beating a minute ago: hung or gone
        elif name != "tiny-position-manager":  # never started
            await d.beat(name, pid=100 + EVERYONE.index(name))
    report = await collect_status(d.env, d.config, store=d.store)
    assert (report.layout, report.layout_how) == ("orchestrated", "configured")
    by = {p.name: p for p in report.processes}
    assert list(by) == EVERYONE  # the monitor included, no postgres/sim/watchdog
    assert (by["large-dispatcher"].state, by["large-dispatcher"].status) == ("RUNNING", "ok")
    assert by["large-dispatcher"].pid == 103 and by["monitor"].status == "ok"
    assert (by["tiny-stream"].state, by["tiny-stream"].status) == ("STALE", "stalled")
    assert by["tiny-stream"].heartbeat_age_s is not None and by["tiny-stream"].heartbeat_age_s >= 60
    missing = by["tiny-position-manager"]
    assert (missing.state, missing.status, missing.pid) == ("MISSING", "down", None)
    # Degraded, exit 1, for what is wrong: not "down" for the supervisord nobody runs.
    assert (report.status, report.exit_code) == ("degraded", 1)
    assert "tiny-stream: stalled (STALE)" in report.reasons
    assert "tiny-position-manager: down (MISSING)" in report.reasons
    assert not any("supervisord" in r for r in report.reasons)
    text = render_text(report)
    assert "orchestrated (no supervisord)" in text and "NOT RUNNING" not in text
    assert "layout: orchestrated (configured); process states from heartbeats" in text
    assert report.to_json()["layout"] == "orchestrated"

    # The same through the command; every process beating -> healthy, exit 0.
    await d.beat("tiny-stream")
    await d.beat("tiny-position-manager")
    out = ops("status", "--json", d=d)
    js = json.loads(out.stdout)
    assert out.returncode == 0, (js["reasons"], out.stderr)
    assert js["status"] == "healthy" and js["layout"] == "orchestrated"
    assert {p["state"] for p in js["processes"]} == {"RUNNING"}


async def test_nothing_beating_at_all_is_down(orchestrated: Deployment) -> None:
    report = await collect_status(orchestrated.env, orchestrated.config,
                                  store=orchestrated.store)
    assert {p.state for p in report.processes} == {"MISSING"}
    assert (report.status, report.reasons) == ("down", ["no process has a heartbeat"])


class AnsweringSupervisor(SupervisorClient):
    """A supervisord that answers (what auto-detection asks: its pid, its processes)."""

    def __init__(self, home: Path) -> None:
        super().__init__(home / "no-such.sock")

    def pid(self) -> int:
        return 4242

    def processes(self) -> list[ProcessInfo]:
        now = int(time.time())
        return [ProcessInfo(group="sim", name="sim", state="RUNNING", pid=4343,
                            start=now - 600, now=now, exitstatus=0, spawnerr="",
                            description="")]


async def test_auto_detects_the_layout(tmp_path: Path, pg_url: str) -> None:
    env = RuntimeEnv(config_path=tmp_path / "ops.toml", home=tmp_path / "home",
                     database_url=pg_url)
    config = write_config(env.config_path, "auto")
    async with await Store.open(env, process="test") as store:
        report = await collect_status(env, config, store=store)
        assert report.layout == "orchestrated"
        assert report.layout_how == "detected: no supervisord under OPS_HOME"

        report = await collect_status(env, config, store=store,
                                      supervisor=AnsweringSupervisor(env.home))
        assert (report.layout, report.layout_how) == ("supervisord",
                                                      "detected: supervisord answers")
        names = {p.name for p in report.processes}  # supervisord's view of the processes
        assert {"watchdog", "sim"} <= names and "monitor" not in names

        # `ops up` rendered its config here but supervisord is gone: that layout, down.
        conf_path(env).parent.mkdir(parents=True, exist_ok=True)
        conf_path(env).write_text("[supervisord]\n")
        report = await collect_status(env, config, store=store)
        assert report.layout == "supervisord" and "does not answer" in report.layout_how
        assert (report.status, report.exit_code) == ("down", 2)
        assert report.reasons[0].startswith("supervisord is not running")


async def test_the_dashboard_shows_the_same_rows(orchestrated: Deployment) -> None:
    d = orchestrated
    for name in EVERYONE:
        if name == "tiny-stream":
            await d.beat(name, age_s=60.0)
        elif name != "tiny-position-manager":
            await d.beat(name)
    data = DashboardData(d.env, d.config, d.store, SupervisorClient.for_env(d.env))
    state = await data.load()
    report = await collect_status(d.env, d.config, store=d.store)
    now = state.loaded_at
    assert (state.layout, state.layout_how) == ("orchestrated", "configured")
    assert [(p.name, p.state_at(now), p.status_at(now)) for p in state.processes] == [
        (p.name, p.state, p.status) for p in report.processes]
    assert not any("SUPERVISORD" in line for line in alarm_lines(state, now, None))
    text = dash_text(state, now)
    assert "PROCESSES (orchestrated layout, configured: states from heartbeats)" in text
    # The 1 s clock alone turns a heartbeat that stops arriving stale, without a reload.
    later = now + timedelta(seconds=30)
    dispatcher = next(p for p in state.processes if p.name == "large-dispatcher")
    assert (dispatcher.state_at(now), dispatcher.status_at(now)) == ("RUNNING", "ok")
    assert (dispatcher.state_at(later), dispatcher.status_at(later)) == ("STALE", "stalled")


def test_a_bad_layout_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(DEMO.replace('layout = "supervisord"', 'layout = "k8s"'), "x.toml")
    assert str(err.value) == ("x.toml: deploy.layout: must be one of 'supervisord', "
                              "'orchestrated' or 'auto' (got 'k8s')")
    with pytest.raises(ConfigError) as err:
        load_config_text(DEMO.replace("[deploy]", "[monitor]\ninterval_s = 40\n\n[deploy]"),
                         "x.toml")
    assert "monitor.interval_s: must be less than watchdog.gap_bounds_s.monitor (30)" in \
        str(err.value)


def test_doctor_does_not_fail_for_the_supervisord_nobody_runs(tmp_path: Path) -> None:
    from ops.commands.doctor import check_supervisor

    env = RuntimeEnv(config_path=tmp_path / "ops.toml", home=tmp_path / "home",
                     database_url=None)
    for layout, ok in (("orchestrated", True), ("auto", True), ("supervisord", False)):
        check = check_supervisor(env, write_config(env.config_path, layout))
        assert check.ok is ok, (layout, check)
        assert ("orchestrated layout" in check.detail) is ok, check.detail
