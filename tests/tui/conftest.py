"""Dashboard fixtures: the demo config, a Store over the per-test Postgres, and a
frozen clock. Supervisord-backed tests start a real one (see test_controls.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ops.core.config import Config
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "conf" / "ops.toml"
#: The frozen "now" of tests without supervisord.
T = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)


#: The fixture's broker account numbers (tests/tui/fixtures.py account_info).
NUMBERS = {"large": "PASIM0000001", "tiny": "PASIM0000002"}


def pin_demo_identity(home: Path) -> None:
    """Make the fixture's account numbers `home`'s demo identity (what `ops up --demo`
    generates per home, ops.runtime.demo), so the config expects the numbers the fixture's
    broker reports."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "demo.json").write_text(json.dumps({"port": 8765, "accounts": [
        {"name": name, "account_number": number} for name, number in NUMBERS.items()]}))


@pytest.fixture
def config(ops_env: RuntimeEnv) -> Config:
    pin_demo_identity(ops_env.home)
    return load_config(CONFIG, home=ops_env.home)


@pytest.fixture
def dash_env(ops_env: RuntimeEnv) -> RuntimeEnv:
    """ops_env with the demo config (and no supervisord: its socket does not exist)."""
    return RuntimeEnv(config_path=CONFIG, home=ops_env.home, database_url=ops_env.database_url)
