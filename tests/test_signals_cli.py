"""`ops signal list|show`, and `ops signal add` waiting with no dispatcher to decide, through
real processes against a real Postgres: what each prints, its exit codes. The verdicts of
a running dispatcher: tests/roles/test_signal_verdict.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from ops.core.models import Heartbeat, Order
from ops.runtime.env import RuntimeEnv
from ops.store import Store

REPO = Path(__file__).resolve().parents[1]
#: Two accounts and a disabled one; nothing here talks to a broker (the URLs are never
#: used).
CONFIG = """
[accounts.large]
secret_id = "ops-pipeline/alpaca"
expected_account_number = "PATEST000001"
rest_url = "http://127.0.0.1:9"
stream_url = "ws://127.0.0.1:9/stream"
data_url = "http://127.0.0.1:9"

[accounts.large.risk]
max_order_notional = 5000
max_symbol_notional = 15000
max_open_positions = 10
daily_loss_limit = 2000
max_qty = 500

[accounts.tiny]
secret_id = "ops-pipeline/alpaca/tiny"
expected_account_number = "PATEST000002"
rest_url = "http://127.0.0.1:9"
stream_url = "ws://127.0.0.1:9/stream"
data_url = "http://127.0.0.1:9"

[accounts.tiny.risk]
max_order_notional = 100
max_symbol_notional = 250
max_open_positions = 3
daily_loss_limit = 50
max_qty = 10

[accounts.old]
secret_id = "ops-pipeline/alpaca/old"
expected_account_number = "PATEST000003"
rest_url = "http://127.0.0.1:9"
stream_url = "ws://127.0.0.1:9/stream"
data_url = "http://127.0.0.1:9"
enabled = false

[accounts.old.risk]
max_order_notional = 100
max_symbol_notional = 250
max_open_positions = 3
daily_loss_limit = 50
max_qty = 10

[credentials]
provider = "file"
file_path = "${OPS_HOME}/secrets.json"
"""
REASON = ("max_order_notional: order notional 1,900.00 exceeds max_order_notional 100.00\n"
          "second line of the reason")


@pytest.fixture
def environ(pg_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "ops.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env.update(OPS_CONFIG=str(config), OPS_HOME=str(tmp_path / "home"),
               OPS_DATABASE_URL=pg_url, PYTHONPATH=str(REPO))
    return env


def ops(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], env=environ, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def store_env(environ: dict[str, str], tmp_path: Path) -> RuntimeEnv:
    return RuntimeEnv(config_path=Path(environ["OPS_CONFIG"]), home=tmp_path / "seed",
                      database_url=environ["OPS_DATABASE_URL"])


def seed(environ: dict[str, str], tmp_path: Path) -> dict[str, int]:
    """Four signals as the dispatcher leaves them: one submitted (its order partly
    filled), one rejected (a two-line reason), one expired, one still queued."""
    now = datetime.now(UTC)

    async def write() -> dict[str, int]:
        ids: dict[str, int] = {}
        async with await Store.open(store_env(environ, tmp_path), process="seed") as store:
            for name, account, symbol, qty, minutes in (
                    ("submitted", "large", "MSFT", "4", 40), ("rejected", "tiny", "AAPL", "10", 30),
                    ("expired", "tiny", "NVDA", "1", 20), ("queued", "tiny", "SPY", "1", 1)):
                sid = await store.insert_signal(
                    account=account, symbol=symbol, side="buy", qty=Decimal(qty),
                    created_at=now - timedelta(minutes=minutes), idempotency_key=f"k-{name}")
                assert sid is not None
                ids[name] = sid
            cid = f"ops-large-sig-{ids['submitted']}"
            await store.record_signal_decision(
                ids["submitted"], "submitted", reason="allowed: buy 4 MSFT",
                client_order_id=cid, broker_order_id="b-msft", attempts=1,
                decided_at=now - timedelta(minutes=40) + timedelta(seconds=2))
            at = now - timedelta(minutes=39)
            await store.upsert_orders("large", [Order(
                id="b-msft", client_order_id=cid, symbol="MSFT", side="buy",
                order_type="market", time_in_force="day", status="partially_filled",
                created_at=at, updated_at=at, submitted_at=at, qty=Decimal(4),
                filled_qty=Decimal(3), filled_avg_price=Decimal("420.25"))])
            await store.record_signal_decision(
                ids["rejected"], "rejected", reason=REASON,
                client_order_id=f"ops-tiny-sig-{ids['rejected']}", attempts=1)
            await store.record_signal_decision(
                ids["expired"], "expired", reason="expiry: signal is 601.0s old, older than "
                "signal_ttl_s 120.0", attempts=1)
        return ids

    return asyncio.run(write())


def test_list_shows_every_state_newest_first_and_filters(
        environ: dict[str, str], tmp_path: Path) -> None:
    ids = seed(environ, tmp_path)
    out = ops(environ, "signal", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "4 signals (1 queued, 1 submitted, 1 rejected, 1 expired)"
    assert lines[1].split() == ["ID", "ACCOUNT", "CREATED", "AGE", "SIDE", "SIZE", "SYMBOL",
                                "STATE", "ORDER", "REASON"]
    rows = [line.split() for line in lines[2:]]
    assert [int(r[0]) for r in rows] == [ids["queued"], ids["expired"], ids["rejected"],
                                         ids["submitted"]]
    assert [(r[1], r[5], r[6], r[7]) for r in rows] == [
        ("tiny", "1", "SPY", "queued"), ("tiny", "1", "NVDA", "expired"),
        ("tiny", "10", "AAPL", "rejected"), ("large", "4", "MSFT", "submitted")]
    rejected = lines[4]
    assert "max_order_notional: order notional 1,900.00 exceeds" in rejected
    assert "second line" not in out.stdout  # the first line of the reason only
    assert "b-msft" in lines[5]

    tiny_rejected = ops(environ, "signal", "list", "--account", "tiny", "--status", "rejected")
    assert tiny_rejected.returncode == 0
    assert [line.split()[0] for line in tiny_rejected.stdout.splitlines()[2:]] == [
        str(ids["rejected"])]
    recent = ops(environ, "signal", "list", "--since", "35m")
    assert recent.stdout.splitlines()[0] == "3 signals (1 queued, 1 rejected, 1 expired)"
    one = ops(environ, "signal", "list", "--limit", "1")
    assert one.stdout.splitlines()[-1] == "(the newest 1 shown; see --limit)"
    none = ops(environ, "signal", "list", "--account", "large", "--status", "queued")
    assert none.returncode == 0 and none.stdout.strip() == "no signals"

    as_json = ops(environ, "signal", "list", "--status", "submitted", "--json")
    doc = json.loads(as_json.stdout)
    assert doc["count"] == 1 and doc["status"] == "submitted"
    sig = doc["signals"][0]
    assert (sig["id"], sig["state"], sig["qty"], sig["broker_order_id"]) == (
        ids["submitted"], "submitted", "4", "b-msft")
    assert sig["order"]["filled_qty"] == "3" and sig["order"]["status"] == "partially_filled"


def test_show_prints_every_field_the_order_and_the_reason(
        environ: dict[str, str], tmp_path: Path) -> None:
    ids = seed(environ, tmp_path)
    out = ops(environ, "signal", "show", str(ids["submitted"]))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in (f"id:            {ids['submitted']}", "state:         submitted",
                   "account:       large", "symbol:        MSFT", "qty:           4",
                   "key:           k-submitted", "broker order:  b-msft",
                   f"client order:  ops-large-sig-{ids['submitted']}",
                   "order status:  partially_filled", "filled:        3 @ 420.25 of 4",
                   "2s after it was created", "reason:\n  allowed: buy 4 MSFT"):
        assert needle in text, (needle, text)

    rejected = ops(environ, "signal", "show", f"#{ids['rejected']}")
    assert rejected.returncode == 0
    assert "state:         rejected" in rejected.stdout
    assert "reason:\n  max_order_notional: order notional 1,900.00" in rejected.stdout
    assert "  second line of the reason" in rejected.stdout  # the whole reason

    queued = json.loads(ops(environ, "signal", "show", str(ids["queued"]), "--json").stdout)
    assert (queued["state"], queued["status"], queued["decided_at"], queued["order"]) == (
        "queued", "pending", None, None)


def test_a_reduce_only_signal_says_so_in_list_show_and_json(
        environ: dict[str, str], tmp_path: Path) -> None:
    async def write() -> int:
        async with await Store.open(store_env(environ, tmp_path), process="seed") as store:
            sid = await store.insert_signal(account="tiny", symbol="SPY", side="sell",
                                            qty=Decimal(1), reduce_only=True)
            assert sid is not None
            return sid

    sid = asyncio.run(write())
    listed = ops(environ, "signal", "list").stdout.splitlines()
    assert "sell (reduce-only)" in listed[2], listed
    shown = ops(environ, "signal", "show", str(sid)).stdout
    assert "side:          sell (reduce-only)" in shown, shown
    doc = json.loads(ops(environ, "signal", "show", str(sid), "--json").stdout)
    assert (doc["side"], doc["reduce_only"]) == ("sell", True)


def test_bad_arguments_exit_2_naming_them(environ: dict[str, str], tmp_path: Path) -> None:
    seed(environ, tmp_path)
    for argv, needle in (
            (("show", "abc"), "signal id 'abc': expected a positive whole number"),
            (("show", "0"), "signal id '0'"),
            (("show", "999999"), "no signal with id 999999 (`ops signal list` lists them)"),
            (("list", "--since", "yesterday"), "--since 'yesterday'"),
            (("list", "--limit", "0"), "--limit 0: must be at least 1"),
            (("list", "--account", "nosuch"), "--account 'nosuch': no such account in the "
                                              "config (known: large, old, tiny)"),
            (("add", "--account", "old", "--symbol", "AAPL", "--side", "buy", "--qty", "1"),
             "--account 'old': disabled in the config ([accounts.old] enabled = false): no "
             "dispatcher runs for it")):
        out = ops(environ, "signal", *argv)
        assert out.returncode == 2, (argv, out.stdout, out.stderr)
        assert out.stderr.startswith(f"ops signal {argv[0]}: error: "), out.stderr
        assert needle in out.stderr, (needle, out.stderr)
    out = ops(environ, "signal", "list", "--status", "done")
    assert out.returncode == 2 and "--status" in out.stderr


def test_a_config_error_exits_78(environ: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[accounts.tiny]\nsecret_id = 3\n")
    for argv in (("list",), ("show", "1")):
        out = ops({**environ, "OPS_CONFIG": str(cfg)}, "signal", *argv)
        assert out.returncode == 78, (argv, out.stdout, out.stderr)
        assert str(cfg) in out.stderr


def test_postgres_unreachable_exits_1_and_says_so(environ: dict[str, str],
                                                  tmp_path: Path) -> None:
    down = f"postgresql://postgres@/nodb?host={tmp_path / 'no-such-socket-dir'}"
    for argv in (("list",), ("show", "1")):
        out = ops({**environ, "OPS_DATABASE_URL": down}, "signal", *argv)
        assert out.returncode == 1, (argv, out.stdout, out.stderr)
        assert "Postgres is unreachable" in out.stderr and "nothing was read" in out.stderr
        assert "Traceback" not in out.stderr


def test_add_without_a_dispatcher_times_out_saying_so(environ: dict[str, str],
                                                      tmp_path: Path) -> None:
    """No dispatcher ever ran: exit 3 after --wait, naming it; the signal stays queued."""
    out = ops(environ, "signal", "add", "--account", "tiny", "--symbol", "AAPL", "--side",
              "buy", "--qty", "1", "--wait", "0.5")
    assert out.returncode == 3, out.stdout + out.stderr
    first, verdict = out.stdout.splitlines()
    assert first.startswith("signal ") and first.endswith(": buy 1 AAPL for tiny")
    sid = int(first.split()[1].rstrip(":"))
    assert verdict.startswith("no verdict within 0.5s: still queued after ")
    assert "the dispatcher may not be running: tiny-dispatcher has never reported a " \
           "heartbeat" in verdict
    assert f"`ops signal show {sid}` tells what became of it" in verdict
    shown = json.loads(ops(environ, "signal", "show", str(sid), "--json").stdout)
    assert shown["state"] == "queued"

    # A dispatcher that reported long ago: said so, with its last heartbeat's age.
    async def old_beat() -> None:
        async with await Store.open(store_env(environ, tmp_path), process="seed") as store:
            at = datetime.now(UTC) - timedelta(minutes=10)
            await store.heartbeat(Heartbeat(process="tiny-dispatcher", account="tiny",
                                            role="dispatcher", pid=1, ts=at, started_at=at))

    asyncio.run(old_beat())
    out = ops(environ, "signal", "add", "--account", "tiny", "--symbol", "AAPL", "--side",
              "buy", "--qty", "1", "--wait", "0")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "tiny-dispatcher's last heartbeat was 10m ago (`ops status`)" in out.stdout


def test_ctrl_c_while_waiting_says_the_signal_stays(environ: dict[str, str]) -> None:
    """SIGINT during the wait: exit 130, the id named, no traceback; the signal stays."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops", "signal", "add", "--account", "tiny", "--symbol", "AAPL",
         "--side", "buy", "--qty", "1", "--wait", "120"],
        env=environ, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed (flushed) once inserted, before the wait
        assert first.startswith("signal ") and first.rstrip().endswith("buy 1 AAPL for tiny")
        sid = int(first.split()[1].rstrip(":"))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert f"interrupted while waiting; signal {sid} stays queued for the dispatcher" in err
    assert "Traceback" not in err
    shown = json.loads(ops(environ, "signal", "show", str(sid), "--json").stdout)
    assert shown["state"] == "queued"
