"""`ops doctor` against a real simulator, a real Postgres and a real buffer file."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ops.commands.doctor import Check, run_checks
from ops.commands.stack import write_demo_secrets
from ops.runtime.config import load_config
from ops.runtime.demo import read_identity, served_accounts
from ops.runtime.env import RuntimeEnv
from ops.sim import SimConfig, Simulator
from ops.sim.accounts import SimAccountSpec, demo_accounts

ROOT = Path(__file__).resolve().parents[1]
#: Every test starts the simulator or an `ops` process.
pytestmark = pytest.mark.integration


def _config_for(port: int, tmp: Path, *, tiny_number: str | None = None) -> Path:
    """conf/ops.toml on `port`; `tiny_number` set: tiny expects that account instead of
    the one generated for the home."""
    text = (ROOT / "conf" / "ops.toml").read_text().replace("8765", str(port))
    if tiny_number is not None:
        text = text.replace("[accounts.tiny]\n", "[accounts.tiny]\n"
                            f'expected_account_number = "{tiny_number}"\n')
    path = tmp / f"ops-{tiny_number or 'demo'}.toml"
    path.write_text(text)
    return path


def _home_sim(home: Path) -> list[SimAccountSpec]:
    """The home's demo identity and keys (what `ops up --demo` makes), as its simulator
    serves them."""
    env = RuntimeEnv(config_path=ROOT / "conf" / "ops.toml", home=home, database_url=None)
    config = load_config(env.config_path, home)
    path = write_demo_secrets(env, config)
    identity = read_identity(home)
    assert identity is not None
    return demo_accounts(served_accounts(identity, path))


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


async def test_doctor_checks(tmp_path: Path, pg_url: str) -> None:
    home = tmp_path / "home"
    accounts = _home_sim(home)
    tiny_number = accounts[1].account_number
    async with Simulator(SimConfig(seed=7, market_step_s=None, accounts=accounts)) as sim:
        port = int(sim.rest_url.rsplit(":", 1)[1])
        env = RuntimeEnv(config_path=_config_for(port, tmp_path), home=home,
                         database_url=pg_url)
        config = load_config(env.config_path, home)
        write_demo_secrets(env, config)
        lines: list[str] = []
        checks = _by_name(await run_checks(env, config, lambda c: lines.append(c.render())))
        for name in ("credentials large", "credentials tiny", "account binding large",
                     "account binding tiny", "clock skew", "database", "buffer", "disk space"):
            assert checks[name].ok, checks[name]
        assert tiny_number in checks["account binding tiny"].detail
        assert re.search(r"[+-]\d+\.\d\ds vs broker clock", checks["clock skew"].detail)
        sup = checks["supervisord"]
        assert not sup.ok and "does not exist" in sup.detail and "ops up" in sup.fix
        assert len(lines) == len(checks)

        # Keys for one account configured against another's number: refused, both named.
        env2 = RuntimeEnv(config_path=_config_for(port, tmp_path, tiny_number="PASIM0000001X"),
                          home=home, database_url=pg_url)
        bad = _by_name(await run_checks(env2, load_config(env2.config_path, home),
                                        lambda c: None))
        binding = bad["account binding tiny"]
        assert not binding.ok
        assert "PASIM0000001X" in binding.detail and tiny_number in binding.detail
        assert "expected_account_number" in binding.fix
        assert bad["account binding large"].ok

        # The command: exit 1 (supervisord is not running), secrets never printed.
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "ops", "doctor"], capture_output=True,
            text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "OPS_HOME": str(home), "OPS_CONFIG": str(env.config_path),
                 "OPS_DATABASE_URL": pg_url})
        assert out.returncode == 1, out.stdout + out.stderr
        assert re.search(r"^ok\s+account binding large", out.stdout, re.MULTILINE)
        assert re.search(r"^FAIL\s+supervisord", out.stdout, re.MULTILINE)
        assert out.stdout.rstrip().endswith("1 FAIL")
        for acct in accounts:
            assert acct.secret not in out.stdout + out.stderr
            assert acct.key_id not in out.stdout + out.stderr


async def test_doctor_unreadable_secret_and_dead_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # Nothing listens on this origin and no secrets file exists; the database URL points
    # at a socket directory with no server.
    env = RuntimeEnv(config_path=_config_for(9, tmp_path), home=home,
                     database_url=f"postgresql://postgres@/postgres?host={tmp_path}")
    checks = _by_name(await run_checks(env, load_config(env.config_path, home),
                                       lambda c: None))
    cred = checks["credentials large"]
    assert not cred.ok and "secrets.json" in cred.detail and "ops-pipeline/alpaca" in cred.fix
    assert "account binding large" not in checks  # nothing to bind with
    assert not checks["clock skew"].ok
    db = checks["database"]
    assert not db.ok and "OPS_DATABASE_URL" in db.fix
    assert checks["buffer"].ok and checks["disk space"].ok


async def test_doctor_names_the_secret_of_a_rejected_key(tmp_path: Path) -> None:
    """A 401 means the broker was reached and refused the key: the fix names the secret to
    rotate, not the network (issue 13)."""
    import json

    from ops.runtime.credentials import write_secrets_file

    home = tmp_path / "home"
    async with Simulator(SimConfig(seed=7, market_step_s=None, accounts=_home_sim(home))) as sim:
        port = int(sim.rest_url.rsplit(":", 1)[1])
        env = RuntimeEnv(config_path=_config_for(port, tmp_path), home=home,
                         database_url=f"postgresql://postgres@/postgres?host={tmp_path}")
        config = load_config(env.config_path, home)
        path = write_demo_secrets(env, config)
        secrets = json.loads(path.read_text())
        secrets["ops-pipeline/alpaca/tiny"]["api_secret"] = "revoked-" + "x" * 24
        write_secrets_file(path, secrets)
        checks = _by_name(await run_checks(env, config, lambda c: None))
    binding = checks["account binding tiny"]
    assert not binding.ok and "401" in binding.detail
    assert "rotate secret 'ops-pipeline/alpaca/tiny'" in binding.fix
    assert "reachable" not in binding.fix
    assert checks["account binding large"].ok
    assert "revoked-" not in binding.detail + binding.fix
