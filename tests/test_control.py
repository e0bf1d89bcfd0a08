"""`ops signal add`, `ops pause`, `ops resume`: real processes (and the same code in-process
for the long table of bad arguments), real Postgres, the demo config conf/ops.toml."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ops.cli import main
from ops.store.postgres import connect

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def environ(pg_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env.update(OPS_CONFIG=str(REPO / "conf" / "ops.toml"), OPS_HOME=str(tmp_path / "home"),
               OPS_DATABASE_URL=pg_url, PYTHONPATH=str(REPO))
    return env


def ops(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], env=environ, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def query(url: str, sql: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        conn = await connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def test_signal_add_inserts_and_prints_the_id(environ: dict[str, str], pg_url: str) -> None:
    out = ops(environ, "signal", "add", "--account", "tiny", "--symbol", "AAPL", "--side",
              "buy", "--qty", "2", "--expires-in", "60", "--key", "k-1", "--no-wait")
    assert out.returncode == 0, out.stderr
    sid = int(out.stdout.strip())
    rows = query(pg_url, "SELECT * FROM signals")
    assert len(rows) == 1
    r = rows[0]
    assert (r["id"], r["account"], r["symbol"], r["side"], r["qty"], r["status"]) == (
        sid, "tiny", "AAPL", "buy", Decimal(2), "pending")
    assert r["expires_at"] is not None and r["strategy"] == "manual"
    # Same idempotency key: no second signal, the same id.
    again = ops(environ, "signal", "add", "--account", "tiny", "--symbol", "AAPL", "--side",
                "buy", "--qty", "2", "--key", "k-1", "--no-wait")
    assert again.returncode == 0 and int(again.stdout.strip()) == sid
    assert len(query(pg_url, "SELECT id FROM signals")) == 1

    limit = ops(environ, "signal", "add", "--account", "large", "--symbol", "MSFT", "--side",
                "sell", "--qty", "1", "--type", "limit", "--limit-price", "421.5",
                "--tif", "gtc", "--no-wait")
    assert limit.returncode == 0, limit.stderr
    r = query(pg_url, "SELECT * FROM signals WHERE id = $1", int(limit.stdout))[0]
    assert (r["order_type"], r["limit_price"], r["time_in_force"]) == (
        "limit", Decimal("421.5"), "gtc")
    assert r["reduce_only"] is False

    exit_ = ops(environ, "signal", "add", "--account", "large", "--symbol", "MSFT", "--side",
                "sell", "--qty", "1", "--reduce-only", "--no-wait")
    assert exit_.returncode == 0, exit_.stderr
    r = query(pg_url, "SELECT * FROM signals WHERE id = $1", int(exit_.stdout))[0]
    assert r["reduce_only"] is True and r["side"] == "sell"


@pytest.mark.parametrize(("args", "named"), [
    (["--symbol", "aapl"], "--symbol 'aapl'"),
    (["--qty", "0"], "--qty '0'"),
])
def test_signal_add_bad_arguments_subprocess(
    environ: dict[str, str], pg_url: str, args: list[str], named: str
) -> None:
    base = {"--account": "tiny", "--symbol": "AAPL", "--side": "buy", "--qty": "1"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [x for kv in base.items() for x in kv]
    out = ops(environ, "signal", "add", *argv)
    assert out.returncode == 2, out
    assert named in out.stderr and out.stderr.startswith("ops signal add: error:")
    assert query(pg_url, "SELECT id FROM signals") == []


BAD = [
    ({"--account": "nosuch"}, "--account 'nosuch': no such account in the config "
                              "(known: large, tiny)"),
    ({"--symbol": "AAPL!"}, "--symbol 'AAPL!'"),
    ({"--symbol": "TOOLONGNAME"}, "--symbol 'TOOLONGNAME'"),
    ({"--symbol": "ZZZZZZ"}, "--symbol 'ZZZZZZ': not a stock symbol (1-5 letters"),
    ({"--symbol": "AB1"}, "--symbol 'AB1': not a stock symbol"),
    # The account's risk limits that refuse it whatever the book holds (conf/ops.toml).
    ({"--qty": "1e9"}, "--qty '1e9': above tiny's max_qty 10 ([accounts.tiny.risk] max_qty "
                       "in the config); the dispatcher would refuse it"),
    ({"--account": "large", "--qty": "501"}, "--qty '501': above large's max_qty 500"),
    ({"--symbol": "AAPL240621C00190000"}, "--symbol 'AAPL240621C00190000': an option, and "
                                          "tiny does not trade options ([accounts.tiny.risk] "
                                          "allow_options = false)"),
    ({"--account": "large", "--symbol": "AAPL240621C00190000", "--qty": "1.5"},
     "--qty '1.5': options trade in whole contracts"),
    ({"--wait": "-1"}, "--wait -1.0: must be a number of seconds >= 0"),
    ({"--wait": "nan"}, "--wait nan"),
    ({"--qty": "-1"}, "--qty '-1': must be a finite number > 0"),
    ({"--qty": "nan"}, "--qty 'nan'"),
    ({"--qty": "inf"}, "--qty 'inf'"),
    ({"--qty": "abc"}, "--qty 'abc': not a number"),
    ({"--type": "limit"}, "--limit-price is required with --type limit"),
    ({"--type": "limit", "--limit-price": "0"}, "--limit-price '0'"),
    ({"--limit-price": "10"}, "--limit-price '10': only for --type limit"),
    ({"--qty": None, "--notional": "50", "--tif": "gtc"}, "--notional '50': only for"),
    ({"--qty": None, "--notional": "1e999"}, "--notional '1e999': must be below"),
    ({"--expires-in": "-5"}, "--expires-in -5.0"),
    ({"--expires-in": "nan"}, "--expires-in nan"),
    ({"--strategy": " "}, "--strategy"),
    ({"--symbol": "AAPL240621C00190000", "--qty": None, "--notional": "50"},
     "--notional '50': options need --qty"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_signal_add_bad_arguments_in_process(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    pg_url: str, change: dict[str, str | None], message: str,
) -> None:
    for k, v in environ.items():
        if k.startswith("OPS_"):
            monkeypatch.setenv(k, v)
    args = {"--account": "tiny", "--symbol": "AAPL", "--side": "buy", "--qty": "1", **change}
    argv = ["signal", "add"] + [x for k, v in args.items() if v is not None for x in (k, v)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert query(pg_url, "SELECT id FROM signals") == []


def test_argparse_level_errors_exit_2(environ: dict[str, str]) -> None:
    out = ops(environ, "signal", "add", "--account", "tiny", "--symbol", "AAPL", "--side",
              "hold", "--qty", "1")
    assert out.returncode == 2 and "--side" in out.stderr
    out = ops(environ, "pause", "tiny", "--mode", "panic")
    assert out.returncode == 2 and "--mode" in out.stderr


def test_pause_and_resume(environ: dict[str, str], pg_url: str) -> None:
    def switch(account: str) -> tuple[Any, str] | None:
        rows = query(pg_url, "SELECT value, updated_by FROM controls "
                             "WHERE account = $1 AND key = 'kill_switch'", account)
        return None if not rows else (rows[0]["value"], rows[0]["updated_by"])

    out = ops(environ, "pause", "tiny")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("tiny: kill switch off -> halt (no new entries")
    value, by = switch("tiny") or (None, "")
    assert value == {"mode": "halt"} and by.startswith("cli:")
    assert switch("large") is None

    out = ops(environ, "pause", "tiny", "--mode", "flatten")
    assert out.returncode == 0 and "halt -> flatten" in out.stdout
    assert (switch("tiny") or (None,))[0] == {"mode": "flatten"}

    out = ops(environ, "resume", "tiny")
    assert out.returncode == 0 and "flatten -> off (trading resumes)" in out.stdout
    assert (switch("tiny") or (None,))[0] == {"mode": "off"}

    bad = ops(environ, "pause", "nosuch", "--mode", "reduce-only")
    assert bad.returncode == 2
    assert "ops pause: error: TIER 'nosuch': no such account" in bad.stderr
    bad = ops(environ, "resume", "Tiny")
    assert bad.returncode == 2 and "TIER 'Tiny'" in bad.stderr
    assert switch("nosuch") is None


def test_bad_config_exits_78(environ: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[accounts.tiny]\nsecret_id = 3\n")
    out = ops({**environ, "OPS_CONFIG": str(cfg)}, "pause", "tiny")
    assert out.returncode == 78 and str(cfg) in out.stderr  # EX_CONFIG, not "bad argument"
    out = ops({**environ, "OPS_CONFIG": str(cfg)}, "signal", "add", "--account", "tiny",
              "--symbol", "AAPL", "--side", "buy", "--qty", "1")
    assert out.returncode == 78 and str(cfg) in out.stderr


def test_signal_add_during_an_outage_is_buffered_then_inserted(
    environ: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    down = f"postgresql://postgres@/nodb?host={tmp_path / 'no-such-socket-dir'}"
    out = ops({**environ, "OPS_DATABASE_URL": down}, "signal", "add", "--account", "tiny",
              "--symbol", "NVDA", "--side", "buy", "--qty", "1", "--key", "outage-1",
              "--no-wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("signal buffered (buy 1 NVDA for tiny): Postgres is "
                                 "unreachable")
    # Waiting (the default) has no verdict to wait for: exit 3, said so. (The same key
    # makes the replay insert one signal, checked below.)
    out = ops({**environ, "OPS_DATABASE_URL": down}, "signal", "add", "--account", "tiny",
              "--symbol", "NVDA", "--side", "buy", "--qty", "1", "--key", "outage-1")
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout.startswith("signal buffered (buy 1 NVDA for tiny)"), out.stdout
    assert "no verdict to wait for" in out.stdout
    assert query(pg_url, "SELECT id FROM signals") == []

    async def drain() -> None:
        from ops.runtime.env import RuntimeEnv
        from ops.store.store import Store

        home = Path(environ["OPS_HOME"])
        env = RuntimeEnv(config_path=tmp_path / "x.toml", home=home, database_url=pg_url)
        async with await Store.open(env, process="test", url=pg_url) as store:
            assert await store.wait_drained(20)

    asyncio.run(drain())
    rows = query(pg_url, "SELECT account, symbol, idempotency_key, status FROM signals")
    assert [tuple(r) for r in rows] == [("tiny", "NVDA", "outage-1", "pending")]


def test_positions_accept_waits_for_the_position_manager_and_reports(
    environ: dict[str, str], pg_url: str
) -> None:
    """No position manager runs: the request is recorded (who, when) and stays pending;
    the command says so and exits 1. A bad account or wait is exit 2 naming it."""
    out = ops(environ, "positions", "accept", "large", "--wait", "0.5")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "has not applied it within 0.5s" in out.stderr
    assert "large-position-manager" in out.stderr
    rows = query(pg_url, "SELECT account, requested_by, applied_at FROM position_accepts")
    assert [(r["account"], r["applied_at"]) for r in rows] == [("large", None)]
    assert str(rows[0]["requested_by"]).startswith("cli:")
    bad = ops(environ, "positions", "accept", "nope")
    assert bad.returncode == 2 and "nope" in bad.stderr
    bad = ops(environ, "positions", "accept", "large", "--wait", "-1")
    assert bad.returncode == 2 and "--wait" in bad.stderr


def test_pause_flatten_all_needs_yes(environ: dict[str, str], pg_url: str) -> None:
    """flatten-all sells external positions too: without --yes nothing is written and the
    message says how it differs from flatten."""
    def mode() -> Any:
        rows = query(pg_url, "SELECT value FROM controls "
                             "WHERE account = 'tiny' AND key = 'kill_switch'")
        return None if not rows else rows[0]["value"]

    out = ops(environ, "pause", "tiny", "--mode", "flatten-all")
    assert out.returncode == 2 and mode() is None
    for needle in ("ops pause: error:", "--mode flatten-all closes EVERY position",
                   "external ones", "--mode flatten closes only what the pipeline manages",
                   "Add --yes"):
        assert needle in out.stderr, (needle, out.stderr)
    out = ops(environ, "pause", "tiny", "--mode", "flatten-all", "--yes")
    assert out.returncode == 0, out.stderr
    assert "off -> flatten-all (EVERY open order is canceled" in out.stdout
    assert mode() == {"mode": "flatten-all"}
    # Managed only says what it leaves alone.
    out = ops(environ, "pause", "tiny", "--mode", "flatten")
    assert out.returncode == 0 and "flatten-all -> flatten" in out.stdout
    assert "external positions (opened by hand or by another tool)" in out.stdout
    assert "left untouched" in out.stdout
