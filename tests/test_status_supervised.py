"""collect_status / `ops up`'s wait / `ops down` against a REAL supervisord.

The rendered config is the real one (ops.supervise.supervisor.render), except that `spec.python`
is a stand-in script that sleeps, so every program is a real supervised process without
starting real roles (those are covered by tests/e2e). The test writes the heartbeats,
runs and account rows a role would write, through the real Store and Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from ops.commands.stack import (
    cli_down,
    expected_processes,
    start_supervisord,
    stop_supervisord,
    wait_healthy,
)
from ops.commands.status import collect_status, render_text
from ops.core.config import Config
from ops.core.models import Heartbeat, RunRecord
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.supervise.supervisor import (
    ACCOUNT_ROLES,
    StackSpec,
    SupervisorClient,
    program_name,
    write_config,
)
from tests.store.factories import account_info, position, trade_update
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.system


@pytest.fixture
def config() -> Config:
    return load_config(ROOT / "conf" / "ops.toml")


@pytest.fixture
def stack_home() -> Iterator[Path]:
    # Short and outside pytest's tmp tree: the unix socket path must stay < 108 bytes.
    home = Path(tempfile.mkdtemp(prefix="ops-sup-", dir="/tmp"))
    try:
        yield home
    finally:
        env = RuntimeEnv(config_path=home / "ops.toml", home=home, database_url="x")
        stop_supervisord(env)
        shutil.rmtree(home, ignore_errors=True)


def _fake_python(home: Path) -> str:
    """Stands in for `python -m ops run ...`: a real process that lives until signalled."""
    script = home / "fake-python"
    script.write_text("#!/bin/sh\nexec sleep 600\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


async def _report_like_a_role(store: Store, name: str, account: str | None, role: str,
                              pid: int, *, run_age_s: float = 0.5) -> None:
    now = datetime.now(UTC)
    await store.heartbeat(Heartbeat(process=name, account=account, role=role, pid=pid, ts=now,
                                    started_at=now))
    slot = now - timedelta(seconds=run_age_s)
    await store.record_run(RunRecord(
        slot_id=RunRecord.make_slot_id(account, role, slot), process=name, account=account,
        role=role, slot_time=slot, scheduled_at=slot, started_at=slot, finished_at=slot,
        outcome="ok", lateness_s=0.0,
    ))


async def _report_all(store: Store, client: SupervisorClient, config: Config) -> None:
    pids = {p.name: p.pid for p in client.processes()}
    await _report_like_a_role(store, "signal-engine", None, "signal-engine",
                              pids["signal-engine"])
    for account in config.enabled_accounts():
        for role in ACCOUNT_ROLES:
            name = program_name(role, account)
            await _report_like_a_role(store, name, account, role, pids[name])


def test_status_through_supervisord(stack_home: Path, pg_url: str, config: Config) -> None:
    env = RuntimeEnv(config_path=ROOT / "conf" / "ops.toml", home=stack_home,
                     database_url=pg_url)
    # No watchdog: the real one would (rightly) kill stand-ins that never beat on their own.
    spec = StackSpec(accounts=sorted(config.enabled_accounts()), python=_fake_python(stack_home),
                     watchdog=False)
    write_config(env, spec)
    since = datetime.now(UTC)
    start_supervisord(env)
    client = SupervisorClient.for_env(env)
    assert oct(env.run_dir.stat().st_mode & 0o777) == "0o700"
    assert stat.S_IMODE((env.run_dir / "supervisor.sock").stat().st_mode) & 0o077 == 0
    expected = expected_processes(config, spec)

    async def scenario() -> None:
        # Nobody has reported yet: `ops up`'s wait names every role, and only the roles.
        missing = await wait_healthy(env, config, expected, since, timeout_s=0.5)
        assert {m.expected.process for m in missing} == {e.process for e in expected}
        async with await Store.open(env, process="test") as store:
            # Wait for supervisord to call them RUNNING (startsecs), then report like roles.
            await eventually(lambda: all(p.state == "RUNNING" for p in client.processes()),
                             "every program RUNNING", 30, 0.2,
                             explain=client.processes)
            await _report_all(store, client, config)
            assert await wait_healthy(env, config, expected, since, timeout_s=10) == []

            now = datetime.now(UTC)
            await store.record_account("large", replace(account_info("100250.5"),
                                                        account_number="PASIM0000001"), now)
            fill = trade_update("o-1", 1)
            fill = replace(fill, order=replace(fill.order, created_at=now, updated_at=now),
                           timestamp=now)
            await store.upsert_orders("large", [fill.order])
            await store.record_trade_updates("large", [fill])
            await store.sync_positions("large", [position("AAPL", "10"), position("SPY", "0")],
                                       now)

            report = await collect_status(env, config, store=store)
            assert report.status == "healthy", render_text(report)
            assert report.exit_code == 0
            assert {p.name: p.status for p in report.processes} == {
                e.process: "ok" for e in expected
            }
            large = next(a for a in report.accounts if a.name == "large")
            assert (large.account_number, large.equity, large.open_positions,
                    large.orders_today, large.fills_today, large.kill_switch) == (
                "PASIM0000001", Decimal("100250.5"), 1, 1, 1, "off")
            tiny = next(a for a in report.accounts if a.name == "tiny")
            assert (tiny.orders_today, tiny.fills_today, tiny.open_positions) == (0, 0, 0)
            js = report.to_json()
            assert set(js) >= {"status", "processes", "accounts", "database", "incidents"}
            assert set(js["processes"][0]) >= {
                "name", "account", "role", "state", "pid", "heartbeat_age_s",
                "last_run_age_s", "expected_interval_s", "status"}
            assert set(js["accounts"][0]) >= {
                "name", "account_number", "equity", "open_positions", "orders_today",
                "fills_today", "kill_switch"}
            assert set(js["database"]) >= {"reachable", "buffered_rows",
                                           "oldest_buffered_age_s"}

            # The kill switch shows on every process of the account, and is not an alarm.
            await store.set_control("tiny", "kill_switch", {"mode": "halt"}, by="test")
            await _report_all(store, client, config)
            report = await collect_status(env, config, store=store)
            assert report.status == "healthy", render_text(report)
            # Only the dispatcher is held back; the stream and position manager work on.
            assert {p.name for p in report.processes if p.status == "paused"} == {
                "tiny-dispatcher"}
            assert next(a for a in report.accounts if a.name == "tiny").kill_switch == "halt"

            # Alive, on schedule, every run failing: `failing`, the cause in words.
            pid = next(p.pid for p in client.processes() if p.name == "large-position-manager")
            err = ("BrokerApiError: list positions: request is not authorized "
                   "(HTTP 401, code 40110000)")
            await store.heartbeat(Heartbeat(
                process="large-position-manager", account="large", role="position-manager",
                pid=pid, ts=datetime.now(UTC), started_at=datetime.now(UTC), counters={
                    "position-manager.errors_in_row": 3, "position-manager.recent_runs": 3,
                    "position-manager.recent_errors": 3,
                    "position-manager.last_error": err}))
            report = await collect_status(env, config, store=store)
            assert report.status == "degraded", render_text(report)
            failing = next(p for p in report.processes if p.name == "large-position-manager")
            assert failing.status == "failing" and failing.state == "RUNNING"
            assert failing.failure is not None and failing.failure.startswith(
                "the broker rejected large's API key (401): rotate the secret "
                "ops-pipeline/alpaca")
            assert any(r.startswith("large-position-manager: failing: the broker rejected")
                       for r in report.reasons)
            assert report.to_json()["processes"][
                [p.name for p in report.processes].index("large-position-manager")
            ]["status"] == "failing"
            # The trade stream's connectivity is shown from the stream role's heartbeat.
            spid = next(p.pid for p in client.processes() if p.name == "large-stream")
            await store.heartbeat(Heartbeat(
                process="large-stream", account="large", role="stream", pid=spid,
                ts=datetime.now(UTC), started_at=datetime.now(UTC), counters={
                    "stream.state": "refused", "stream.state_age_s": 42.0,
                    "stream.refusal": "access key verification failed",
                    "stream.drops_recent": 0}))
            report = await collect_status(env, config, store=store)
            stream = next(p for p in report.processes if p.name == "large-stream").stream
            assert stream == {"state": "refused", "for_s": 42.0,
                              "refusal": "access key verification failed", "drops_recent": 0}
            assert ("large-stream: trade stream REFUSED for 42.0s: access key verification "
                    "failed") in render_text(report)
            await _report_all(store, client, config)  # a good run: healthy at once
            report = await collect_status(env, config, store=store)
            assert report.status == "healthy", render_text(report)

            # An open incident and a stopped process make it degraded, naming both.
            await store.open_incident("drift", detail="AAPL 10 vs 0", account="large")
            await asyncio.to_thread(client.stop, "large:large-dispatcher")
            report = await collect_status(env, config, store=store)
            assert report.status == "degraded" and report.exit_code == 1
            by_name = {p.name: p for p in report.processes}
            assert (by_name["large-dispatcher"].state,
                    by_name["large-dispatcher"].status) == ("STOPPED", "down")
            assert [i.kind for i in report.incidents] == ["drift"]
            assert any("large-dispatcher" in r for r in report.reasons)
            assert any("drift" in r for r in report.reasons)
            text = render_text(report)
            assert "DEGRADED" in text and "large-dispatcher" in text and "drift" in text

            # supervisord gone: every process is down, and so is the report.
            assert await asyncio.to_thread(stop_supervisord, env)
            report = await collect_status(env, config, store=store)
            assert report.status == "down" and report.exit_code == 2
            assert not report.supervisor.reachable
            assert {p.state for p in report.processes} == {"NOT-RUNNING"}
            assert {p.status for p in report.processes} == {"down"}

    asyncio.run(scenario())
    # `ops down` with nothing running says so and succeeds (idempotent).
    os.environ["OPS_HOME"] = str(stack_home)
    os.environ["OPS_DATABASE_URL"] = pg_url
    try:
        assert cli_down(argparse.Namespace()) == 0
    finally:
        del os.environ["OPS_HOME"], os.environ["OPS_DATABASE_URL"]
