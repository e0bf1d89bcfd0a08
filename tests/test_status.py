"""`ops status` without supervisord: Postgres down (buffered reads), bad config, the JSON."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ops.commands.status import collect_status, render_text
from ops.core.models import Heartbeat
from ops.runtime.config import load_config
from ops.runtime.env import EXIT_CONFIG, RuntimeEnv
from ops.store import Store
from ops.store.embedded import EmbeddedPostgres
from ops.store.status import start_of_trading_day
from tests.store.factories import account_info, position

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "ops.toml"


def _ops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60, cwd=ROOT)


def test_postgres_down_reads_from_the_buffer(pg_dedicated: EmbeddedPostgres,
                                              pg_home: Path) -> None:
    home = pg_home / "ops"
    env = RuntimeEnv(config_path=CONFIG, home=home, database_url=pg_dedicated.url())
    config = load_config(CONFIG)

    async def write() -> None:
        async with await Store.open(env, process="test") as store:
            now = datetime.now(UTC)
            await store.record_account("tiny", replace(account_info("1003.25"),
                                                       account_number="PASIM0000002"), now)
            await store.sync_positions("tiny", [position("SPY", "2")], now)
            await store.heartbeat(Heartbeat(process="tiny-dispatcher", account="tiny",
                                            role="dispatcher", pid=1, ts=now, started_at=now))

    asyncio.run(write())
    pg_dedicated.stop(mode="fast")
    report = asyncio.run(collect_status(env, config))
    db = report.database
    assert (db.reachable, db.reads_from, db.buffered_rows) == (False, "buffer", 0)
    tiny = next(a for a in report.accounts if a.name == "tiny")
    # What the buffer mirrors is still shown; what only Postgres knows is unknown (null).
    assert (str(tiny.equity), tiny.account_number, tiny.open_positions) == (
        "1003.25", "PASIM0000002", 1)
    assert (tiny.orders_today, tiny.fills_today) == (None, None)
    assert report.status == "down"  # no supervisord either
    text = render_text(report)
    assert "UNREACHABLE" in text and "reads from buffer" in text

    # The same through the command, as a monitor would call it.
    out = _ops("status", "--json", env={"OPS_HOME": str(home), "OPS_CONFIG": str(CONFIG),
                                        "OPS_DATABASE_URL": pg_dedicated.url()})
    assert out.returncode == 2, out.stderr
    js = json.loads(out.stdout)
    assert js["status"] == "down"
    assert js["database"]["reachable"] is False
    assert js["database"]["reads_from"] == "buffer"
    assert {p["state"] for p in js["processes"]} == {"NOT-RUNNING"}
    assert out.stderr == ""  # the report says it; no log noise on stderr


@pytest.mark.integration
def test_bad_config_exits_with_the_config_code_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "ops.toml"
    bad.write_text("[accounts.large]\nsecret_id = 3\n")
    for cmd in (["status"], ["status", "--json"], ["up"], ["doctor"], ["gaps"]):
        out = _ops(*cmd, env={"OPS_HOME": str(tmp_path / "home"), "OPS_CONFIG": str(bad)})
        # Not 2: that is `ops status`'s "down".
        assert out.returncode == EXIT_CONFIG == 78, (cmd, out.stdout, out.stderr)
        assert str(bad) in out.stderr and "accounts.large" in out.stderr
        if cmd == ["doctor"]:
            assert out.stdout.startswith("FAIL  config")
        else:
            assert out.stdout == ""


def test_trading_day_starts_at_new_york_midnight() -> None:
    # 03:00 UTC on 5 Jan is still 4 Jan in New York (EST, UTC-5).
    start = start_of_trading_day(datetime(2026, 1, 5, 3, 0, tzinfo=UTC))
    assert start == datetime(2026, 1, 4, 5, 0, tzinfo=UTC)
    summer = start_of_trading_day(datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    assert summer == datetime(2026, 7, 1, 4, 0, tzinfo=UTC)
    assert summer + timedelta(days=1) > datetime(2026, 7, 1, 23, 59, tzinfo=UTC)


async def test_unmigrated_database_is_reported_not_raised(tmp_path: Path,
                                                          pg_empty_url: str) -> None:
    """`ops status` while `ops up` is still migrating: it answers, and says why."""
    env = RuntimeEnv(config_path=CONFIG, home=tmp_path, database_url=pg_empty_url)
    report = await collect_status(env, load_config(CONFIG))
    assert report.database.reachable is True
    assert report.database.error is not None and "heartbeats" in report.database.error
    assert report.status == "down"  # no supervisord here
    assert [a.orders_today for a in report.accounts] == [None, None]


def test_an_invalid_config_on_disk_still_reports_the_running_stack(
    tmp_path: Path, pg_url: str
) -> None:
    """The stack ran with a good config (kept under $OPS_HOME/run); the file on disk is
    then broken: `ops status` reports the stack with the last good config and names the
    file's problem, instead of refusing to start."""
    from ops.runtime.config import LAST_GOOD_NAME, remember_if_good

    home = tmp_path / "home"
    conf = tmp_path / "ops.toml"
    conf.write_text(CONFIG.read_text())
    remember_if_good(conf, home / "run")
    assert (home / "run" / LAST_GOOD_NAME).read_text() == CONFIG.read_text()
    conf.write_text(CONFIG.read_text().replace("stream_check_s = 5", "stream_check_s = -5", 1))
    out = _ops("status", "--json", env={"OPS_HOME": str(home), "OPS_CONFIG": str(conf),
                                        "OPS_DATABASE_URL": pg_url})
    js = json.loads(out.stdout)  # a report, not a refusal
    assert {p["name"] for p in js["processes"]} >= {"large-dispatcher", "tiny-stream"}
    problem = next(r for r in js["reasons"] if r.startswith("config file is invalid"))
    assert "keeps its last good config" in problem and "stream_check_s" in problem
    assert str(conf) in problem
    assert out.returncode == 2  # no supervisord here: down, config problem named besides
