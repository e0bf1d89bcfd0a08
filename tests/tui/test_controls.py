"""Controls and liveness against a REAL supervisord (stand-in programs that sleep) and a
real Postgres: a stale heartbeat turns the row to stalled; a confirmation guards restart;
pause writes the kill switch; run-now writes the runtime's control row."""

from __future__ import annotations

import asyncio
import shutil
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ops.commands.control import read_kill_switch
from ops.commands.stack import start_supervisord, stop_supervisord
from ops.core.config import Config
from ops.core.models import KillSwitch
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.supervise.supervisor import (
    ACCOUNT_ROLES,
    StackSpec,
    SupervisorClient,
    program_name,
    write_config,
)
from tests.support import eventually
from tests.tui.conftest import CONFIG
from tests.tui.fixtures import beat, ran, write_fixture
from tests.tui.helpers import cells, until
from tui.app import Dashboard
from tui.data import DashboardData
from tui.screens.confirm import ConfirmScreen
from tui.screens.log_tail import LogTailScreen
from tui.screens.pause import PauseModeScreen
from tui.widgets.accounts import AccountsTable
from tui.widgets.processes import ProcessesTable

pytestmark = pytest.mark.system


@pytest.fixture
def supervised(pg_url: str, config: Config) -> Iterator[RuntimeEnv]:
    """A running supervisord with every role program of the demo config (as `sleep`)."""
    # Short and outside pytest's tmp tree: the unix socket path must stay < 108 bytes.
    home = Path(tempfile.mkdtemp(prefix="ops-dash-", dir="/tmp"))
    env = RuntimeEnv(config_path=CONFIG, home=home, database_url=pg_url)
    fake = home / "fake-python"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    write_config(env, StackSpec(accounts=sorted(config.enabled_accounts()), python=str(fake),
                                watchdog=False))
    try:
        start_supervisord(env)
        yield env
    finally:
        stop_supervisord(env)
        shutil.rmtree(home, ignore_errors=True)


async def _all_running(client: SupervisorClient) -> None:
    async def running() -> bool:
        return all(p.state == "RUNNING" for p in await asyncio.to_thread(client.processes))

    await eventually(running, "every program RUNNING", 30, 0.1)


async def _report_all_but(store: Store, skip: str, at: datetime) -> None:
    await beat(store, "signal-engine", None, "signal-engine", at)
    await ran(store, "signal-engine", None, "signal-engine", at)
    for acct in ("large", "tiny"):
        for role in ACCOUNT_ROLES:
            name = program_name(role, acct)
            if name != skip:
                await beat(store, name, acct, role, at)
                await ran(store, name, acct, role, at)


async def test_stalled_row_and_guarded_controls(supervised: RuntimeEnv, config: Config) -> None:
    env = supervised
    client = SupervisorClient.for_env(env, timeout_s=5)
    await _all_running(client)
    # Frozen clock, past every process's startup grace.
    t = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=60)
    now = [t]
    async with await Store.open(env, process="test") as store:
        await write_fixture(store, t)
        # The app gets a client of its own: a SupervisorClient is not for two threads.
        data = DashboardData(env, config, store, SupervisorClient.for_env(env),
                             lambda: now[0])
        app = Dashboard(data, refresh_s=0.2)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.loads >= 1, what="first load")
            table = app.query_one(ProcessesTable)
            row = cells(table, "large-stream")
            assert row["status"] == "✓ ok" and row["state"] == "RUNNING"
            assert cells(table, "tiny-dispatcher")["status"] == "‖ paused"  # tiny halted

            # 30 s later every role but large-stream has reported again: its row stalls.
            await _report_all_but(store, "large-stream", t + timedelta(seconds=29))
            now[0] = t + timedelta(seconds=30)
            await until(pilot, lambda: cells(table, "large-stream")["status"] == "✗ STALLED",
                        what="large-stream stalled")
            assert cells(table, "large-stream")["heartbeat"] == "31s"
            assert cells(table, "large-dispatcher")["status"] == "✓ ok"
            # The banner follows the background loads: one may still have read the
            # heartbeats from before the others reported again; wait for the next.
            await until(pilot, lambda: "1 STALLED" in str(app.query_one("#banner").render()),
                        what="banner counting one stalled process")

            # Restart asks first; "n" leaves the process alone.
            pid = (await asyncio.to_thread(client.process, "large:large-stream")).pid
            table.focus()
            table.move_cursor(row=table.get_row_index("large-stream"))
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
            assert "Restart large-stream?" in str(app.screen.query_one("#confirm-question")
                                                  .render())
            await pilot.press("n")
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen),
                        what="dismissed")
            await pilot.pause(0.3)
            assert (await asyncio.to_thread(client.process, "large:large-stream")).pid == pid
            # ... and "y" restarts it through supervisord.
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
            await pilot.press("y")

            async def restarted() -> bool:
                info = await asyncio.to_thread(client.process, "large:large-stream")
                return info.state == "RUNNING" and info.pid != pid

            await eventually(restarted, "large-stream running again with a new pid", 20, 0.1)

            # Pause the highlighted row's account: picks the mode (halt is highlighted),
            # asks, then writes the kill switch.
            assert await read_kill_switch(store, "large") == KillSwitch.OFF
            await pilot.press("p")
            await until(pilot, lambda: isinstance(app.screen, PauseModeScreen), what="modes")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
            await pilot.press("y")

            async def halted() -> bool:
                return await read_kill_switch(store, "large") == KillSwitch.HALT

            await eventually(halted, "the kill switch written as halt", 10)
            ctl = {c.key: c for c in (await store.controls("large")).rows}["kill_switch"]
            assert ctl.value == {"mode": "halt"} and ctl.updated_by.startswith("dash:")
            accounts = app.query_one(AccountsTable)
            await until(pilot, lambda: cells(accounts, "large")["kill"] == "■ HALT",
                        what="kill switch shown")

            # Resume also asks; Escape says no.
            await pilot.press("u")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
            await pilot.press("escape")
            await pilot.pause(0.3)
            assert await read_kill_switch(store, "large") == KillSwitch.HALT

            # Run now: the runtime's control row for the selected role.
            table.focus()
            table.move_cursor(row=table.get_row_index("large-dispatcher"))
            await pilot.press("n")

            async def asked() -> bool:
                return "run_now:dispatcher" in {c.key for c in
                                                (await store.controls("large")).rows}

            await eventually(asked, "the run_now:dispatcher control row", 10)

            # The log tail opens on the selected process and closes with Escape.
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LogTailScreen), what="log")
            assert app.screen.qualified == "large:large-dispatcher"  # type: ignore[attr-defined]
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, LogTailScreen),
                        what="log closed")
