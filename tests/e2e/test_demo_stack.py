"""The demo stack end to end, through a real supervisord: `ops up --demo` in a subprocess.

One stack per module (see conftest.py): healthy; both accounts trade; `ops pause tiny`
halts tiny only; flatten leaves tiny flat at the simulator. The tests run in any order
(the suite shuffles them): each waits for the state it needs, and a test that pauses tiny
resumes it after (`resumes_tiny`). Teardown always runs `ops down`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ops.runtime.demo import read_identity
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.timeout(240)

ACCOUNTS = ("large", "tiny")


def test_up_reports_every_process(demo_stack: Stack) -> None:
    up = demo_stack.up
    assert up.returncode == 0, f"ops up failed:\n{up.stdout}\n{up.stderr}"
    out = up.stdout
    assert "ops-pipeline is up" in out
    for name in ("postgres", "sim:sim", "signal-engine", "watchdog:watchdog", "large:large-stream",
                 "large:large-dispatcher", "large:large-position-manager", "tiny:tiny-stream",
                 "tiny:tiny-dispatcher", "tiny:tiny-position-manager"):
        assert name in out, name
    assert f"supervisorctl -c {demo_stack.env.home}/supervisord.conf" in out
    assert "ops dash" in out


def _status(stack: Stack) -> tuple[int, dict[str, Any]]:
    out = stack.ops("status", "--json")
    return out.returncode, json.loads(out.stdout)


def test_status_healthy(demo_stack: Stack) -> None:
    # Just after `ops up` a role may still be before its first completed run ("starting").
    # (After a pause and its resume, tiny's dispatcher says "paused" until its next run.)
    def healthy() -> dict[str, Any] | None:
        code, js = _status(demo_stack)
        return js if code == 0 and all(p["status"] == "ok" for p in js["processes"]) else None

    js = demo_stack.poll("ops status --json exit 0", healthy, timeout_s=60)
    assert js["status"] == "healthy"
    procs = {p["name"]: p for p in js["processes"]}
    assert set(procs) == {"postgres", "sim", "signal-engine", "watchdog",
                          *(f"{a}-{r}" for a in ACCOUNTS
                            for r in ("stream", "dispatcher", "position-manager"))}
    for p in procs.values():
        assert p["state"] == "RUNNING" and p["status"] == "ok", p
        assert isinstance(p["pid"], int)
    assert procs["large-dispatcher"]["expected_interval_s"] == 2
    assert procs["large-dispatcher"]["heartbeat_age_s"] < 5
    identity = read_identity(demo_stack.env.home)  # generated for this home by `ops up`
    assert identity is not None
    assert {a["name"]: a["account_number"] for a in js["accounts"]} == {
        a.name: a.account_number for a in identity.accounts}
    assert js["database"]["reachable"] is True
    assert js["incidents"] == []


def test_up_again_only_waits(demo_stack: Stack) -> None:
    again = demo_stack.ops("up", "--demo", "--timeout", "60", timeout=90)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "supervisord already runs" in again.stdout
    assert "ops-pipeline is up" in again.stdout


def test_supervisorctl_lists_the_groups(demo_stack: Stack) -> None:
    exe = shutil.which("supervisorctl", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "-c", str(demo_stack.env.home / "supervisord.conf"), "status"],
                         capture_output=True, text=True, timeout=30)
    lines = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines() if line}
    for account in ACCOUNTS:
        for role in ("stream", "dispatcher", "position-manager"):
            assert lines[f"{account}:{account}-{role}"] == "RUNNING"
    assert lines["signal-engine"] == lines["postgres"] == lines["sim"] == "RUNNING"
    assert lines["watchdog"] == "RUNNING"


def _activity(stack: Stack) -> dict[str, tuple[int, int, int]]:
    rows = stack.query("""
        SELECT a.account,
               (SELECT count(*) FROM orders o WHERE o.account = a.account) AS orders,
               (SELECT count(*) FROM fills f WHERE f.account = a.account) AS fills,
               (SELECT count(*) FROM positions p WHERE p.account = a.account AND p.qty <> 0)
                   AS positions
        FROM (VALUES ('large'), ('tiny')) AS a(account)""")
    return {r["account"]: (r["orders"], r["fills"], r["positions"]) for r in rows}


def test_both_accounts_trade_within_60s(demo_stack: Stack) -> None:
    def all_trading() -> dict[str, tuple[int, int, int]] | None:
        act = _activity(demo_stack)
        return act if all(min(v) > 0 for v in act.values()) else None

    # 60 s from `ops up` returning (it already spent up_seconds of its own).
    act = demo_stack.poll("orders, fills and positions for both accounts", all_trading,
                          timeout_s=60)
    print(f"activity (orders, fills, open positions): {act}")


def _tiny_kill_switch_rejection(stack: Stack) -> datetime | None:
    rows = stack.query("""SELECT min(decided_at) AS at FROM signals
                          WHERE account = 'tiny' AND status = 'rejected'
                            AND reason LIKE '%kill switch halt%'""")
    at: datetime | None = rows[0]["at"]
    return at


@pytest.fixture
def resumes_tiny(demo_stack: Stack) -> Iterator[None]:
    """`ops resume tiny` after the test: the others expect tiny trading."""
    yield
    out = demo_stack.ops("resume", "tiny")
    assert out.returncode == 0, out.stdout + out.stderr


def test_pause_tiny_stops_its_new_orders_only(demo_stack: Stack, resumes_tiny: None) -> None:
    out = demo_stack.ops("pause", "tiny")
    assert out.returncode == 0, out.stderr
    assert "halt" in out.stdout
    # The first tiny signal refused for the kill switch proves its dispatcher sees the halt.
    halted_at: datetime = demo_stack.poll(
        "a tiny signal rejected by the kill switch", lambda: _tiny_kill_switch_rejection(
            demo_stack), timeout_s=60)

    def progress() -> tuple[int, int] | None:
        large = demo_stack.query(
            "SELECT count(*) AS n FROM orders WHERE account = 'large' AND created_at > $1",
            halted_at)[0]["n"]
        refused = demo_stack.query(
            "SELECT count(*) AS n FROM signals WHERE account = 'tiny' AND side = 'buy'"
            " AND created_at > $1 AND status = 'rejected'", halted_at)[0]["n"]
        return (large, refused) if large >= 2 and refused >= 1 else None

    demo_stack.poll("large trading on while tiny's new buy signals are refused", progress,
                    timeout_s=60)
    # Halt means no new entries (exits stay allowed): no tiny buy reached the broker.
    tiny_buys = demo_stack.query(
        "SELECT id, symbol, created_at FROM orders WHERE account = 'tiny' AND side = 'buy'"
        " AND created_at > $1", halted_at)
    assert tiny_buys == []
    code, js = _status(demo_stack)
    tiny = next(a for a in js["accounts"] if a["name"] == "tiny")
    assert tiny["kill_switch"] == "halt"
    procs = {p["name"]: p["status"] for p in js["processes"]}
    assert procs["tiny-dispatcher"] == "paused"
    assert procs["large-dispatcher"] == "ok"
    assert code == 0, js  # a deliberate pause is not an alarm


def _sim_get(stack: Stack, account: str, path: str) -> Any:
    secrets = json.loads((stack.env.home / "secrets.json").read_text())
    secret_id = "ops-pipeline/alpaca" if account == "large" else f"ops-pipeline/alpaca/{account}"
    keys = secrets[secret_id]
    req = urllib.request.Request(
        f"http://127.0.0.1:{stack.sim_port}{path}",
        headers={"APCA-API-KEY-ID": keys["api_key"], "APCA-API-SECRET-KEY": keys["api_secret"]})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_flatten_leaves_tiny_flat_at_the_simulator(demo_stack: Stack,
                                                   resumes_tiny: None) -> None:
    # Something to flatten: tiny holds a position at the simulator.
    demo_stack.poll("tiny holding a position at the simulator",
                    lambda: _sim_get(demo_stack, "tiny", "/v2/positions") != [], timeout_s=90)
    out = demo_stack.ops("pause", "tiny", "--mode", "flatten")
    assert out.returncode == 0, out.stderr

    def flat() -> bool:
        positions = _sim_get(demo_stack, "tiny", "/v2/positions")
        orders = _sim_get(demo_stack, "tiny", "/v2/orders?status=open")
        return bool(positions == [] and orders == [])

    demo_stack.poll("tiny flat at the simulator (no positions, no open orders)", flat,
                    timeout_s=60)
    # large is untouched: it keeps trading (its own positions come and go with the demo
    # strategy's round trips, so "still has positions" would not be a fair check).
    flattened_at = datetime.now(UTC)
    demo_stack.poll(
        "large trading on after tiny's flatten",
        lambda: demo_stack.query("SELECT count(*) AS n FROM orders WHERE account = 'large'"
                                 " AND created_at > $1", flattened_at)[0]["n"] > 0,
        timeout_s=60)
    # ...and Postgres catches up with the broker on the next position sync.
    demo_stack.poll(
        "tiny's stored positions flat",
        lambda: demo_stack.query("SELECT count(*) AS n FROM positions WHERE account = 'tiny'"
                                 " AND qty <> 0")[0]["n"] == 0,
        timeout_s=30)
