"""Loading valid configs: the shipped files, defaults, a third account, helpers."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

from ops.core.backoff import Backoff
from ops.core.config import KNOWN_ROLES, Config, default_secret_id
from ops.runtime.config import load_config, load_config_text, load_runtime_config
from ops.runtime.env import runtime_env
from tests.config.samples import MINIMAL

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_default_config_runs_the_demo(tmp_path: Path) -> None:
    # A home that never ran `ops up --demo`: simulator accounts on [sim] port, with account
    # numbers no simulator serves.
    cfg = load_config(ROOT / "conf" / "ops.toml", tmp_path)
    assert list(cfg.accounts) == ["large", "tiny"]
    large, tiny = cfg.accounts["large"], cfg.accounts["tiny"]
    assert large.secret_id == default_secret_id("large") == "ops-pipeline/alpaca"
    assert tiny.secret_id == default_secret_id("tiny") == "ops-pipeline/alpaca/tiny"
    assert large.expected_account_number == "DEMO-NOT-GENERATED-large"
    assert tiny.expected_account_number == "DEMO-NOT-GENERATED-tiny"
    for acct in (large, tiny):
        assert acct.simulator
        assert acct.rest_url == "http://127.0.0.1:8765"
        assert acct.stream_url == "ws://127.0.0.1:8765/stream"
        assert acct.data_url == "http://127.0.0.1:8765"
        assert acct.paper and acct.enabled
    assert large.risk.max_order_notional > tiny.risk.max_order_notional
    assert tiny.risk.max_symbol_notional <= Decimal(1000)
    assert cfg.credentials.provider == "file"
    assert cfg.credentials.file_path == "${OPS_HOME}/secrets.json"
    [demo] = cfg.signal_engine.strategies
    assert (demo.name, demo.callable, demo.accounts) == (
        "demo",
        "ops.strategies.demo:generate",
        ["large", "tiny"],
    )
    assert cfg.sim.port == 8765
    assert cfg.watchdog.tick_event == "TICK_5"


def test_shipped_production_example_loads() -> None:
    cfg = load_config(ROOT / "conf" / "production.example.toml")
    assert cfg.credentials.provider == "aws"
    for acct in cfg.accounts.values():
        assert acct.rest_url == "https://paper-api.alpaca.markets"
        assert acct.stream_url == "wss://paper-api.alpaca.markets/stream"
        assert acct.data_url == "https://data.alpaca.markets"


def test_defaults_are_present() -> None:
    cfg = load_config_text(MINIMAL, "min.toml")
    acct = cfg.accounts["solo"]
    assert acct.paper is True and acct.enabled is True
    assert acct.risk.max_qty == Decimal("1.5")
    assert acct.risk.allow_short is False and acct.risk.allow_options is False
    assert acct.risk.signal_ttl_s == 300
    assert (acct.schedule.dispatcher_s, acct.schedule.position_manager_s) == (5, 15)
    assert acct.schedule.market_hours_only is True
    assert acct.exits.stop_loss_pct is None and acct.exits.max_hold_s is None
    assert (cfg.database.pool_min, cfg.database.pool_max) == (1, 5)
    assert cfg.credentials.provider == "aws"
    assert cfg.credentials.aws_region == "us-east-1"
    assert cfg.credentials.aws_endpoint_url is None
    assert (cfg.watchdog.heartbeat_interval_s, cfg.watchdog.heartbeat_stale_s) == (1, 5)
    assert set(cfg.watchdog.gap_bounds_s) == set(KNOWN_ROLES)
    assert cfg.broker.rest_timeout_s == 10 and cfg.broker.rate_limit_per_min == 200
    assert (cfg.broker.rate_limit_burst, cfg.broker.data_feed) == (20, None)
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.enabled is False
    assert (cfg.sim.port, cfg.sim.clock) == (8765, "open")
    assert cfg.signal_engine.strategies == []
    assert cfg.alerts.webhook_urls == [] and cfg.alerts.sns_topic_arn is None


def test_buffer_and_secrets_paths_follow_ops_home(tmp_path: Path) -> None:
    env = runtime_env({"OPS_HOME": str(tmp_path)})
    cfg = load_config_text(MINIMAL, "min.toml")
    assert cfg.buffer.resolved_path(env) == tmp_path / "buffer.sqlite3"
    assert cfg.credentials.resolved_file_path(env) == tmp_path / "secrets.json"
    custom = load_config_text(
        MINIMAL + '[buffer]\npath = "${OPS_HOME}/b/x.db"\n'
        '[credentials]\nprovider = "file"\nfile_path = "/etc/ops/s.json"\n',
        "min.toml",
    )
    assert custom.buffer.resolved_path(env) == tmp_path / "b" / "x.db"
    assert custom.credentials.resolved_file_path(env) == Path("/etc/ops/s.json")


def test_partial_gap_bounds_keep_other_defaults() -> None:
    cfg = load_config_text(MINIMAL + "[watchdog.gap_bounds_s]\ndispatcher = 40\n", "m.toml")
    assert cfg.watchdog.gap_bounds_s["dispatcher"] == 40
    assert cfg.watchdog.gap_bounds_s["stream"] == 60


def test_per_role_stale_bound_overrides_the_global_one() -> None:
    cfg = load_config_text(
        MINIMAL + "[watchdog.heartbeat_stale_by_role_s]\nsignal-engine = 30\n", "m.toml")
    assert cfg.watchdog.heartbeat_stale_for("signal-engine") == 30
    assert cfg.watchdog.heartbeat_stale_for("dispatcher") == cfg.watchdog.heartbeat_stale_s == 5


def test_a_third_account_is_one_more_block() -> None:
    text = (
        (ROOT / "conf" / "ops.toml").read_text()
        + """
[accounts.medium]
secret_id = "ops-pipeline/alpaca/medium"
expected_account_number = "PASIM0000003"
rest_url = "http://127.0.0.1:8765"
stream_url = "ws://127.0.0.1:8765/stream"
data_url = "http://127.0.0.1:8765"
[accounts.medium.risk]
max_order_notional = 1000
max_symbol_notional = 3000
max_open_positions = 5
daily_loss_limit = 300
max_qty = 100
"""
    )
    cfg = load_config_text(text, "three.toml")
    assert list(cfg.accounts) == ["large", "tiny", "medium"]
    assert cfg.accounts["medium"].secret_id == default_secret_id("medium")
    assert list(cfg.enabled_accounts()) == ["large", "tiny", "medium"]


def test_disabled_account_is_not_enabled() -> None:
    cfg = load_config_text(
        MINIMAL.replace("[accounts.solo.risk]", "enabled = false\n[accounts.solo.risk]"), "m.toml"
    )
    assert cfg.enabled_accounts() == {}


def test_strategy_callable_is_not_imported() -> None:
    text = (
        MINIMAL
        + """
[[signal_engine.strategies]]
name = "x"
callable = "no_such_module_ops_test.sub:make"
accounts = ["solo"]
params = { window = 3, symbols = ["AAPL"] }
"""
    )
    cfg = load_config_text(text, "m.toml")
    assert cfg.signal_engine.strategies[0].params == {"window": 3, "symbols": ["AAPL"]}
    assert "no_such_module_ops_test" not in sys.modules


def test_public_dict_cuts_alert_urls_to_their_origin() -> None:
    text = MINIMAL + (
        '[alerts]\nwebhook_urls = ["https://hooks.example.com/services/T0KEN"]\n'
        'deadman_url = "https://hc-ping.com/abc-uuid"\n'
    )
    public = load_config_text(text, "m.toml").to_public_dict()
    assert public["alerts"]["webhook_urls"] == ["https://hooks.example.com/…"]
    assert public["alerts"]["deadman_url"] == "https://hc-ping.com/…"
    assert "T0KEN" not in repr(public)
    assert public["accounts"]["solo"]["risk"]["max_qty"] == "1.5"


def test_retry_config_maps_to_the_shared_backoff() -> None:
    cfg = load_config_text(MINIMAL, "m.toml")
    assert cfg.broker.retry.to_backoff() == Backoff(
        initial_s=0.5, max_s=10.0, max_attempts=5, deadline_s=30.0
    )


def test_load_runtime_config_uses_ops_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL)
    env, cfg = load_runtime_config(runtime_env({"OPS_CONFIG": str(path)}))
    assert env.config_path == path
    assert isinstance(cfg, Config) and list(cfg.accounts) == ["solo"]
