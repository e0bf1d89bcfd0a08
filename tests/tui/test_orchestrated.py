"""`ops dash` in the orchestrated layout (no supervisord): the processes panel shows every
expected process from its heartbeat row and says so, no "supervisord not reachable" alarm,
and restart / log ask for the orchestrator instead of failing against a missing socket.
Real Postgres through the real Store, frozen clock (tests/tui/conftest.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ops.core.models import Heartbeat, RunRecord
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.supervise.supervisor import SupervisorClient
from tests.tui.conftest import CONFIG, T
from tests.tui.helpers import cells, until
from tui.app import Dashboard
from tui.data import DashboardData
from tui.screens.confirm import ConfirmScreen
from tui.widgets.banner import Banner
from tui.widgets.processes import ProcessesTable


async def test_processes_from_heartbeats_and_no_supervisord_controls(
    ops_env: RuntimeEnv, ops_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "ops.toml"
    path.write_text(CONFIG.read_text().replace('layout = "supervisord"',
                                               'layout = "orchestrated"'))
    env = RuntimeEnv(config_path=path, home=ops_env.home, database_url=ops_env.database_url)
    config = load_config(path)
    at = T - timedelta(seconds=0.5)
    for process, account, role in (("large-dispatcher", "large", "dispatcher"),
                                   ("monitor", None, "monitor")):
        await ops_store.heartbeat(Heartbeat(process, account, role, 7, at,
                                            T - timedelta(minutes=10), {"phase": "running"}))
        await ops_store.record_run(RunRecord(RunRecord.make_slot_id(account, process, at),
                                             process, account, role, at, at, at, at, "ok",
                                             0.01))
    data = DashboardData(env, config, ops_store, SupervisorClient.for_env(env, timeout_s=1),
                         lambda: T)
    app = Dashboard(data)  # its clock is the data's (frozen at T)
    notes: list[str] = []
    original = app.notify

    def notify(message: str, **kw: Any) -> None:
        notes.append(message)
        original(message, **kw)

    monkeypatch.setattr(app, "notify", notify)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.loads >= 1, what="first load")
        await pilot.pause()
        table = app.query_one(ProcessesTable)
        assert "orchestrated layout" in str(table.border_title)
        running = cells(table, "large-dispatcher")
        assert (running["state"], running["pid"]) == ("RUNNING", "7")
        assert "ok" in running["status"]
        assert cells(table, "monitor")["state"] == "RUNNING"
        assert cells(table, "tiny-stream")["state"] == "MISSING"
        assert "SUPERVISORD" not in str(app.query_one(Banner).render())

        table.focus()
        await pilot.press("r")
        await until(pilot, lambda: any("orchestrated layout" in n for n in notes),
                    what="the orchestrator notice")
        assert not isinstance(app.screen, ConfirmScreen)  # nothing to confirm: no restart
