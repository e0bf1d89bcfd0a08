"""Dashboard fixtures: the demo config, a Store over the per-test Postgres, and a
frozen clock. Supervisord-backed tests start a real one (see test_controls.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ops.config import Config, load_config
from ops.env import RuntimeEnv

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "conf" / "ops.toml"
#: The frozen "now" of tests without supervisord.
T = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)


@pytest.fixture
def config() -> Config:
    return load_config(CONFIG)


@pytest.fixture
def dash_env(ops_env: RuntimeEnv) -> RuntimeEnv:
    """ops_env with the demo config (and no supervisord: its socket does not exist)."""
    return RuntimeEnv(config_path=CONFIG, home=ops_env.home, database_url=ops_env.database_url)
