"""`ops gaps`: past and ongoing gaps from the run ledger, incidents, the alert outbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ops.commands.gaps import collect_gaps, parse_since, render_text
from ops.notify.alerts import Alert, Outbox, default_path
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store.postgres import connect

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)


async def seed(url: str, now: datetime = NOW) -> None:
    """Ledger rows relative to `now`; the CLI test passes the real time it runs at."""
    NOW = now  # noqa: N806 - shadows the module's frozen clock for the rows below
    conn = await connect(url)
    try:
        rows = []

        def run(process: str, account: str, role: str, began: datetime,
                outcome: str = "ok") -> None:
            rows.append((f"{process}:{began.isoformat()}", process, account, role, began,
                         began, began, began + timedelta(milliseconds=50), outcome))

        # large-dispatcher (every 2 s): on time, then silent for 6 h 17 min, then on time.
        t = NOW - timedelta(hours=6, minutes=17, seconds=40)
        for i in range(10):
            run("large-dispatcher", "large", "dispatcher", t + timedelta(seconds=2 * i))
        t2 = t + timedelta(seconds=18, hours=6, minutes=17)
        for i in range(10):
            run("large-dispatcher", "large", "dispatcher", t2 + timedelta(seconds=2 * i))
        run("large-dispatcher", "large", "dispatcher", NOW - timedelta(seconds=1))
        # tiny-position-manager (every 5 s): market closed all along: runs, never a gap.
        for i in range(40):
            run("tiny-position-manager", "tiny", "position-manager",
                NOW - timedelta(seconds=5 * i + 1), "idle-market-closed")
        # large-position-manager: last run 100 s ago: an ongoing gap.
        run("large-position-manager", "large", "position-manager", NOW - timedelta(seconds=100))
        await conn.executemany(
            "INSERT INTO runs (slot_id, process, account, role, slot_time, scheduled_at,"
            " started_at, finished_at, outcome) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)", rows)
        await conn.executemany(
            "INSERT INTO incidents (id, kind, process, account, detail, opened_at, closed_at,"
            " restarts, dedupe_key) VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7, $8)",
            [("hung", "large-dispatcher", "large", "heartbeat 6s old", t2 - timedelta(minutes=1),
              t2 + timedelta(seconds=30), 1, None),
             ("stalled", "large-position-manager", "large", "no completed run",
              NOW - timedelta(seconds=80), None, 3, "watchdog:large-position-manager"),
             ("hung", "tiny-stream", "tiny", "long ago", NOW - timedelta(days=3),
              NOW - timedelta(days=3) + timedelta(minutes=2), 0, None)])
    finally:
        await conn.close()


@pytest.fixture
def env(ops_env: RuntimeEnv) -> RuntimeEnv:
    ops_env.config_path.write_text((ROOT / "conf" / "ops.toml").read_text())
    return ops_env


def environ(env: RuntimeEnv) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    out.update(OPS_HOME=str(env.home), OPS_CONFIG=str(env.config_path),
               OPS_DATABASE_URL=str(env.database_url))
    return out


def test_parse_since() -> None:
    assert parse_since("24h") == timedelta(hours=24)
    assert parse_since("90m") == timedelta(minutes=90)
    assert parse_since("7d") == timedelta(days=7)
    assert parse_since("1.5h") == timedelta(minutes=90)
    for bad in ("", "24", "h", "-1h", "0m", "3x"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad)


async def test_gaps_incidents_and_alerts(env: RuntimeEnv) -> None:
    assert env.database_url
    await seed(env.database_url)
    box = await Outbox.open(default_path(env.home))
    await box.enqueue(Alert("opened", "k", "hung", "p", None, "d", NOW), ["webhook0:x"])
    await box.mark_failed((await box.rows())[0].id, "ClientConnectorError: refused", None,
                          NOW.timestamp())
    await box.close()
    rep = await collect_gaps(env, load_config(env.config_path), timedelta(hours=24), now=NOW)
    assert rep.database_reachable
    by_proc = {(g.process, g.end is None): g for g in rep.gaps}
    past = by_proc[("large-dispatcher", False)]
    assert past.gap_s == pytest.approx(6 * 3600 + 17 * 60, abs=1)
    assert past.expected_interval_s == 2 and past.bound_s == 12
    ongoing = by_proc[("large-position-manager", True)]
    assert ongoing.gap_s == pytest.approx(100, abs=1)
    assert not any(g.process == "tiny-position-manager" for g in rep.gaps)
    assert len(rep.gaps) == 2
    kinds = [(i.kind, i.process, i.closed_at is None) for i in rep.incidents]
    assert kinds == [("hung", "large-dispatcher", False),
                     ("stalled", "large-position-manager", True)]
    assert rep.incidents[0].duration_s == pytest.approx(90)
    assert rep.alerts is not None and rep.alerts.dead == 1
    text = render_text(rep)
    assert "6h17m" in text and "ONGOING" in text and "1 given up" in text
    assert "refused" in text


def test_cli_json_text_and_bad_input(env: RuntimeEnv) -> None:
    import asyncio

    assert env.database_url
    # The subprocess reads the real clock: seed relative to it, not to the import time.
    asyncio.run(seed(env.database_url, datetime.now(UTC).replace(microsecond=0)))
    run = subprocess.run([sys.executable, "-m", "ops", "gaps", "--since", "24h", "--json"],
                         capture_output=True, text=True, env=environ(env), cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert {g["process"] for g in doc["gaps"]} == {"large-dispatcher", "large-position-manager"}
    assert doc["database_reachable"] is True
    run = subprocess.run([sys.executable, "-m", "ops", "gaps", "--since", "2h"],
                         capture_output=True, text=True, env=environ(env), cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "large-position-manager" in run.stdout and "6h17m" not in run.stdout
    bad = subprocess.run([sys.executable, "-m", "ops", "gaps", "--since", "soon"],
                         capture_output=True, text=True, env=environ(env), cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "--since 'soon'" in bad.stderr


def test_cli_during_an_outage_says_so(env: RuntimeEnv, tmp_path: Path) -> None:
    e = environ(env)
    e["OPS_DATABASE_URL"] = f"postgresql://postgres@/postgres?host={tmp_path}/no-such-socket"
    run = subprocess.run([sys.executable, "-m", "ops", "gaps"], capture_output=True, text=True,
                         env=e, cwd=ROOT, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "database unreachable" in run.stdout and "incidents: none" in run.stdout
