"""The monitor's passes in-process (`Monitor.pass_once`) over a real Postgres and a real
alert outbox, with heartbeat rows written as the roles would write them: what the process
test (tests/roles/test_monitor.py) cannot stage quickly.

- a failing dispatcher: one "failing" incident naming the cause; the orchestrator's
  restarts (a new incarnation in the heartbeat) are counted, and the second escalates it
  (the stored detail and an "update" alert say so); no process is ever killed;
- a kill switch holds back only the dispatcher (a stream of the same account completing
  no runs is still stalled), as `ops status` judges it;
- the metrics say STALE processes are not running and count the restarts it saw;
- an incident a role opens itself (the stream's `stream-refused`) is alerted, and its
  closing too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from ops.core.models import Heartbeat, RunRecord
from ops.core.watchdog import DATABASE, Tracked
from ops.notify.alerts import Outbox
from ops.notify.metrics import MetricsExporter
from ops.roles.monitor import Monitor
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store import Incident, Store
from ops.store.embedded import EmbeddedPostgres
from ops.supervise.layout import orchestrated_processes
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]
FAILING: dict[str, int | float | str] = {
    "phase": "running", "dispatcher.errors_in_row": 4, "dispatcher.recent_runs": 4,
    "dispatcher.recent_errors": 4,
    "dispatcher.last_error": "BrokerError: request not authorized (HTTP 401)"}


@pytest.fixture
async def monitor(ops_env: RuntimeEnv, ops_store: Store,
                  tmp_path: Path) -> AsyncIterator[Monitor]:
    text = (ROOT / "conf" / "ops.toml").read_text()
    ops_env.config_path.write_text(text.replace('layout = "supervisord"',
                                                'layout = "orchestrated"'))
    outbox = await Outbox.open(tmp_path / "alerts.sqlite3")
    try:
        yield Monitor(ops_env, load_config(ops_env.config_path), ops_store, outbox,
                      sinks=["webhook-0"], exporter=MetricsExporter(),
                      started=datetime.now(UTC).timestamp() - 3600)
    finally:
        await outbox.close()


async def beat(mon: Monitor, process: str, *, age_s: float = 0.2, up_s: float = 600.0,
               run_age_s: float | None = 0.5, pid: int = 1,
               counters: dict[str, int | float | str] | None = None) -> None:
    e = next(x for x in orchestrated_processes(mon.config) if x.name == process)
    now = datetime.now(UTC)
    await mon.store.heartbeat(Heartbeat(process, e.account, e.role, pid,
                                        now - timedelta(seconds=age_s),
                                        now - timedelta(seconds=up_s),
                                        counters or {"phase": "running"}))
    if run_age_s is not None:
        at = now - timedelta(seconds=run_age_s)
        await mon.store.record_run(RunRecord(RunRecord.make_slot_id(e.account, process, at),
                                             process, e.account, e.role, at, at, at, at,
                                             "ok", 0.01))


async def open_by_key(store: Store) -> dict[str, Incident]:
    return {i.dedupe_key or i.id: i for i in (await store.open_incidents()).rows}


async def test_failing_restarts_escalation_and_the_kill_switch(monitor: Monitor) -> None:
    mon = monitor
    await mon.store.set_control("tiny", "kill_switch", {"mode": "halt"}, "test")
    for e in mon.expected():
        if e.name == "large-dispatcher":
            await beat(mon, e.name, pid=10, counters=FAILING)
        elif e.name == "tiny-stream":
            await beat(mon, e.name, run_age_s=3600.0)  # stalled: a kill switch holds
        elif e.name == "tiny-position-manager":    # back no stream, no position manager
            await beat(mon, e.name, age_s=30.0)  # hung
        elif e.name == "tiny-dispatcher":
            await beat(mon, e.name, run_age_s=3600.0)  # paused: no runs is expected
        else:
            await beat(mon, e.name)
    await mon.pass_once()
    incs = await open_by_key(mon.store)
    assert sorted(incs) == ["watchdog:large-dispatcher", "watchdog:tiny-position-manager",
                            "watchdog:tiny-stream"], incs
    failing = incs["watchdog:large-dispatcher"]
    assert failing.kind == "failing" and failing.process == "large-dispatcher"
    assert failing.detail.startswith("failing: the broker rejected large's API key (401)")
    assert incs["watchdog:tiny-stream"].kind == "stalled"
    assert incs["watchdog:tiny-position-manager"].kind == "hung"
    assert mon.statuses["tiny-dispatcher"] == "paused" and not mon.healthy()

    # The orchestrator restarts the failing dispatcher twice; it fails on.
    for pid in (11, 12):
        await beat(mon, "large-dispatcher", pid=pid, up_s=5.0, counters=FAILING)
        await mon.pass_once()
    inc = (await open_by_key(mon.store))["watchdog:large-dispatcher"]
    assert inc.restarts == 2
    assert inc.detail.startswith("ESCALATED: large-dispatcher still failing after 2 "
                                 "restart(s)"), inc.detail
    await mon.pass_once()  # escalated once, not every pass
    alerts = [r.payload["alert"] for r in await mon.outbox.rows()]
    mine = [(a["event"], a["kind"]) for a in alerts if a["process"] == "large-dispatcher"]
    assert mine == [("opened", "failing"), ("update", "failing")]

    assert mon.exporter is not None
    text = generate_latest(mon.exporter.registry).decode()
    assert 'ops_watchdog_restarts_total{process="large-dispatcher"} 2.0' in text
    assert ('ops_process_running{account="tiny",process="tiny-position-manager",'
            'role="position-manager"} 0.0') in text  # STALE
    assert ('ops_process_status{account="large",process="large-dispatcher",'
            'role="dispatcher",status="failing"} 1.0') in text


@pytest.mark.integration
def test_the_monitor_role_never_loads_the_broker_stack() -> None:
    """Its RSS budget (bench/monitor.py, <= 70 MB) holds because a role with no account to
    bind never imports ops.broker / alpaca-py (~9 MB): the runtime imports them where used."""
    code = ("import sys, ops.roles.runtime, ops.roles.monitor; "
            "print(sorted(m for m in sys.modules if m.startswith(('alpaca', 'ops.broker'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


async def test_no_verdicts_while_postgres_is_unreachable(pg_dedicated: EmbeddedPostgres,
                                                         pg_home: Path) -> None:
    """In its container the monitor's outage buffer holds no other process's heartbeat:
    while Postgres is away it judges nobody (no false "missing" or "hung" for the whole
    fleet) and raises only database-unreachable."""
    env = RuntimeEnv(config_path=pg_home / "ops.toml", home=pg_home / "ops",
                     database_url=pg_dedicated.url())
    env.config_path.write_text((ROOT / "conf" / "ops.toml").read_text().replace(
        'layout = "supervisord"', 'layout = "orchestrated"'))
    async with await Store.open(env, process="monitor") as store:
        outbox = await Outbox.open(pg_home / "alerts.sqlite3")
        try:
            mon = Monitor(env, load_config(env.config_path), store, outbox, sinks=[],
                          started=datetime.now(UTC).timestamp() - 3600)
            for e in mon.expected():
                await beat(mon, e.name)
            await mon.pass_once()
            assert set(mon.statuses.values()) == {"ok"} and mon.healthy()
            pg_dedicated.stop(mode="fast")
            down_at = time.monotonic()

            async def database_incident() -> bool:
                await mon.pass_once()
                assert not any(t.incident for n, t in mon.state.items() if n != DATABASE), \
                    mon.state
                memo = mon.state.get(DATABASE, Tracked()).incident
                return memo is not None and memo.kind == DATABASE

            await eventually(database_incident, "the database-unreachable incident", 30,
                             interval_s=0.5)
            assert time.monotonic() - down_at > mon.policy.heartbeat_stale_s
            assert set(mon.statuses.values()) == {"ok"}  # the last verdicts stand
            assert not mon.healthy()  # no dead-man ping meanwhile
        finally:
            await outbox.close()


async def test_incidents_the_roles_open_are_alerted(monitor: Monitor) -> None:
    mon = monitor
    for e in mon.expected():
        await beat(mon, e.name)
    await mon.pass_once()
    # What the stream role opens when the broker refuses its key (ops/roles/stream.py).
    await mon.store.open_incident("stream-refused", detail="the broker refused large's key",
                                  process="large-stream", account="large",
                                  dedupe_key="large-stream:stream-refused")
    await mon.pass_once()
    await mon.store.close_incident(dedupe_key="large-stream:stream-refused",
                                   reason="connected again for 5s")
    await mon.pass_once()
    alerts = [r.payload["alert"] for r in await mon.outbox.rows()]
    assert [(a["event"], a["kind"], a["process"]) for a in alerts] == [
        ("opened", "stream-refused", "large-stream"),
        ("closed", "stream-refused", "large-stream")]
