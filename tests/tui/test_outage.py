"""Postgres unreachable: the banner says so (since when, buffered rows) and the panels
keep showing the SQLite buffer's copy; `ops dash --once` works headless."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.embedded import EmbeddedPostgres
from ops.supervise.supervisor import SupervisorClient
from tests.tui.conftest import CONFIG, ROOT, T
from tests.tui.fixtures import OPTION, write_fixture
from tests.tui.helpers import column, until
from tui.app import Dashboard
from tui.data import DashboardData
from tui.widgets.accounts import AccountsTable
from tui.widgets.banner import Banner
from tui.widgets.positions import PositionsTable


async def test_postgres_down_banner_and_buffered_data(pg_dedicated: EmbeddedPostgres,
                                                      pg_home: Path, config: Config) -> None:
    env = RuntimeEnv(config_path=CONFIG, home=pg_home / "ops", database_url=pg_dedicated.url())
    async with await Store.open(env, process="fixture") as store:
        await write_fixture(store, T)
    await asyncio.to_thread(pg_dedicated.stop, mode="fast")
    async with await Store.open(env, process="ops-dash") as store:
        # A write during the outage lands in the buffer and is counted in the banner.
        await store.set_control("large", "kill_switch", {"mode": "halt"}, by="test")
        data = DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                             lambda: T)
        app = Dashboard(data)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.loads >= 1, what="first load")
            await pilot.pause()
            banner = app.query_one(Banner)
            text = str(banner.render())
            # Since: the oldest buffered write (the kill switch, written at wall-clock time
            # just now) or when the dashboard first saw the outage, whichever is earlier.
            assert re.search(r"POSTGRES UNREACHABLE since 15:(29:5\d|30:00)Z", text), text
            # The newest buffered row is the heartbeats' T - 1 s.
            assert "buffered data as of 15:29:59Z, 1 rows waiting" in text, text
            assert banner.has_class("-outage")
            assert app.state is not None and app.state.database.source == "buffer"
            # Positions and accounts from the buffer; the buffered kill switch shows.
            assert column(app.query_one(PositionsTable), "symbol") == [
                "AAPL", "AAPL 2026-06-19 190 call", "MSFT", "SPY"]
            assert column(app.query_one(AccountsTable), "kill") == ["■ HALT", "■ HALT"]


async def test_owners_through_an_outage(pg_dedicated: EmbeddedPostgres, pg_home: Path,
                                        config: Config) -> None:
    """Ownership is read from Postgres only: during an outage the owner column keeps what
    the last load read, and says "unknown" where nothing was read yet."""
    env = RuntimeEnv(config_path=CONFIG, home=pg_home / "ops", database_url=pg_dedicated.url())
    async with await Store.open(env, process="fixture") as store:
        await write_fixture(store, T)
    async with await Store.open(env, process="ops-dash") as store:
        def data() -> DashboardData:
            return DashboardData(env, config, store,
                                 SupervisorClient.for_env(env, timeout_s=1), lambda: T)

        seen = data()
        before = await seen.load()
        owners = {p.key: p.owner for p in before.positions}
        assert owners == {"large/AAPL": "managed", f"large/{OPTION}": "external",
                          "large/MSFT": "mixed", "tiny/SPY": "external"}
        await asyncio.to_thread(pg_dedicated.stop, mode="fast")
        during = await seen.load()
        assert during.database.source == "buffer"
        assert {p.key: p.owner for p in during.positions} == owners
        assert {p.owner for p in (await data().load()).positions} == {"unknown"}


def test_once_prints_a_text_snapshot_without_a_terminal(ops_env: RuntimeEnv) -> None:
    async def write() -> None:
        async with await Store.open(ops_env, process="fixture") as store:
            await write_fixture(store, datetime.now(UTC))

    asyncio.run(write())
    out = subprocess.run(
        [sys.executable, "-m", "ops", "dash", "--once"], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=60, cwd=ROOT,
        env={**os.environ, "OPS_HOME": str(ops_env.home), "OPS_CONFIG": str(CONFIG),
             "OPS_DATABASE_URL": str(ops_env.database_url), "TERM": "dumb"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for expected in ("ACCOUNTS", "PROCESSES", "POSITIONS (4)", "INCIDENTS", "ORDERS & FILLS",
                     "AAPL 2026-06-19 190 call", "PASIM0000001", "100,250.50",
                     "SUPERVISORD NOT REACHABLE", "position-drift", "halt",
                     "3 managed / 2 external"):
        assert expected in text, (expected, text)
    assert out.stderr == ""


def test_once_reports_the_stack_while_the_config_file_is_invalid(
    ops_env: RuntimeEnv, tmp_path: Path
) -> None:
    """The file on disk broken after the stack ran: the dashboard keeps working on the
    last good config and names the file's problem; a refused trade stream is an alarm."""
    from ops.core.models import Heartbeat
    from ops.runtime.config import remember_if_good

    conf = tmp_path / "edited.toml"
    conf.write_text(CONFIG.read_text())
    remember_if_good(conf, ops_env.home / "run")
    conf.write_text(CONFIG.read_text().replace("stream_check_s = 5", "stream_check_s = -5", 1))

    async def write() -> None:
        async with await Store.open(ops_env, process="fixture") as store:
            await write_fixture(store, datetime.now(UTC))
            await store.heartbeat(Heartbeat(
                process="tiny-stream", account="tiny", role="stream", pid=1,
                ts=datetime.now(UTC), started_at=datetime.now(UTC), counters={
                    "stream.state": "refused", "stream.state_age_s": 40.0,
                    "stream.refusal": "access key verification failed"}))

    asyncio.run(write())
    out = subprocess.run(
        [sys.executable, "-m", "ops", "dash", "--once"], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=60, cwd=ROOT,
        env={**os.environ, "OPS_HOME": str(ops_env.home), "OPS_CONFIG": str(conf),
             "OPS_DATABASE_URL": str(ops_env.database_url), "TERM": "dumb"})
    assert out.returncode == 0, out.stderr
    assert "config file is invalid; the running stack keeps its last good config" in out.stdout
    assert "stream_check_s" in out.stdout and "PROCESSES" in out.stdout
    assert ("tiny-stream: trade stream REFUSED for 40s: access key verification failed"
            in out.stdout), out.stdout
