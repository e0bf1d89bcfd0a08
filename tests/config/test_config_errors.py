"""Every kind of bad config gets one exact `FILE: KEY.PATH: PROBLEM` line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.core.config import ConfigError, Problem, RetryConfig
from ops.runtime.config import load_config, load_config_text
from tests.config.samples import MINIMAL

SRC = "conf/ops.toml"

OTHER_ACCOUNT = """
[accounts.other]
secret_id = "ops-pipeline/alpaca/other"
expected_account_number = "PA999"
rest_url = "http://127.0.0.1:8765"
stream_url = "ws://127.0.0.1:8765/stream"
data_url = "http://127.0.0.1:8765"
[accounts.other.risk]
max_order_notional = 100
max_symbol_notional = 200
max_open_positions = 2
daily_loss_limit = 50
max_qty = 1
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, SRC)
    return str(info.value)


def replaced(old: str, new: str, text: str = MINIMAL) -> str:
    assert old in text
    return text.replace(old, new, 1)


CASES: list[tuple[str, str, str]] = [
    (
        "negative interval",
        MINIMAL + "[accounts.solo.schedule]\ndispatcher_s = -1\n",
        "conf/ops.toml: accounts.solo.schedule.dispatcher_s: must be greater than 0 (got -1)",
    ),
    (
        "missing secret id",
        replaced('secret_id = "ops-pipeline/alpaca/solo"\n', ""),
        "conf/ops.toml: accounts.solo.secret_id: field required",
    ),
    (
        "missing expected account number",
        replaced('expected_account_number = "PA123"\n', ""),
        "conf/ops.toml: accounts.solo.expected_account_number: field required",
    ),
    (
        "missing risk table",
        MINIMAL[: MINIMAL.index("[accounts.solo.risk]")],
        "conf/ops.toml: accounts.solo.risk: field required",
    ),
    (
        "unknown nested key",
        replaced("max_qty = 1.5\n", "max_qty = 1.5\nfoo = 1\n"),
        "conf/ops.toml: accounts.solo.risk: unknown key 'foo'",
    ),
    (
        "unknown top-level key",
        "foo = 1\n" + MINIMAL,
        "conf/ops.toml: unknown key 'foo'",
    ),
    (
        "unknown section",
        MINIMAL + "[logging]\nlevel = 'INFO'\n",
        "conf/ops.toml: unknown key 'logging'",
    ),
    (
        "string for a number",
        replaced("max_qty = 1.5", 'max_qty = "abc"'),
        "conf/ops.toml: accounts.solo.risk.max_qty: expected a number (got 'abc')",
    ),
    (
        "string for a float",
        MINIMAL + '[broker]\nrest_timeout_s = "10"\n',
        "conf/ops.toml: broker.rest_timeout_s: expected a number (got '10')",
    ),
    (
        "float for an integer",
        replaced("max_open_positions = 2", "max_open_positions = 2.5"),
        "conf/ops.toml: accounts.solo.risk.max_open_positions: expected an integer (got 2.5)",
    ),
    (
        "string for a bool",
        replaced(
            'data_url = "http://127.0.0.1:8765"\n',
            'data_url = "http://127.0.0.1:8765"\npaper = "yes"\n',
        ),
        "conf/ops.toml: accounts.solo.paper: expected true or false (got 'yes')",
    ),
    (
        "nan money",
        replaced("daily_loss_limit = 50", "daily_loss_limit = nan"),
        "conf/ops.toml: accounts.solo.risk.daily_loss_limit: must be a finite number (got nan)",
    ),
    (
        "unknown provider",
        MINIMAL + '[credentials]\nprovider = "gcp"\n',
        "conf/ops.toml: credentials.provider: must be one of 'aws', 'env' or 'file' (got 'gcp')",
    ),
    (
        "non-loopback metrics host",
        MINIMAL + '[metrics]\nhost = "0.0.0.0"\n',
        "conf/ops.toml: metrics.host: must be a loopback address such as 127.0.0.1: metrics "
        "are never exposed beyond this host (got '0.0.0.0')",
    ),
    (
        "rest url with a path",
        replaced('rest_url = "http://127.0.0.1:8765"', 'rest_url = "http://127.0.0.1:8765/v2"'),
        "conf/ops.toml: accounts.solo.rest_url: must be a bare origin such as "
        "http://127.0.0.1:8765: no path and no trailing slash (got path '/v2')",
    ),
    (
        "data url with a trailing slash",
        replaced('data_url = "http://127.0.0.1:8765"', 'data_url = "http://127.0.0.1:8765/"'),
        "conf/ops.toml: accounts.solo.data_url: must be a bare origin such as "
        "http://127.0.0.1:8765: no path and no trailing slash (got path '/')",
    ),
    (
        "http stream url",
        replaced(
            'stream_url = "ws://127.0.0.1:8765/stream"',
            'stream_url = "http://127.0.0.1:8765/stream"',
        ),
        "conf/ops.toml: accounts.solo.stream_url: must be a URL starting with ws:// or wss:// "
        "(got scheme 'http')",
    ),
    (
        "bad port",
        replaced('rest_url = "http://127.0.0.1:8765"', 'rest_url = "http://127.0.0.1:99999"'),
        "conf/ops.toml: accounts.solo.rest_url: has an invalid port",
    ),
    (
        "invalid account name",
        MINIMAL.replace("accounts.solo", "accounts.Solo"),
        "conf/ops.toml: accounts.Solo: invalid account name 'Solo': must match "
        "^[a-z][a-z0-9_-]{0,31}$",
    ),
    (
        "no accounts",
        "[accounts]\n",
        "conf/ops.toml: accounts: at least one account is required",
    ),
    (
        "missing accounts",
        "[sim]\nport = 8765\n",
        "conf/ops.toml: accounts: field required",
    ),
    (
        "strategy for an unknown account",
        MINIMAL + '[[signal_engine.strategies]]\nname = "demo"\n'
        'callable = "ops.strategies.demo:generate"\naccounts = ["solo", "ghost"]\n',
        "conf/ops.toml: signal_engine.strategies[0].accounts: unknown account 'ghost' "
        "(configured: solo)",
    ),
    (
        "strategy callable without attr",
        MINIMAL + '[[signal_engine.strategies]]\nname = "demo"\n'
        'callable = "ops.strategies.demo"\naccounts = ["solo"]\n',
        "conf/ops.toml: signal_engine.strategies[0].callable: must match "
        "^[A-Za-z_]\\w*(\\.[A-Za-z_]\\w*)*:[A-Za-z_]\\w*(\\.[A-Za-z_]\\w*)*$ "
        "(got 'ops.strategies.demo')",
    ),
    (
        "duplicate strategy",
        MINIMAL
        + ('[[signal_engine.strategies]]\nname = "demo"\ncallable = "m:f"\naccounts = ["solo"]\n')
        * 2,
        "conf/ops.toml: signal_engine.strategies[1].name: duplicate strategy name 'demo'",
    ),
    (
        "two accounts sharing a secret",
        MINIMAL + OTHER_ACCOUNT.replace("ops-pipeline/alpaca/other", "ops-pipeline/alpaca/solo"),
        "conf/ops.toml: accounts.other.secret_id: same secret as account 'solo' "
        "('ops-pipeline/alpaca/solo'); each account needs its own credentials",
    ),
    (
        "two accounts with one broker account",
        MINIMAL + OTHER_ACCOUNT.replace("PA999", "PA123"),
        "conf/ops.toml: accounts.other.expected_account_number: same broker account as "
        "account 'solo' ('PA123')",
    ),
    (
        "paper account on the live host",
        replaced('rest_url = "http://127.0.0.1:8765"', 'rest_url = "https://api.alpaca.markets"'),
        "conf/ops.toml: accounts.solo.rest_url: paper = true but this is the live host "
        "api.alpaca.markets; use paper-api.alpaca.markets",
    ),
    (
        "order limit above symbol limit",
        replaced("max_order_notional = 100", "max_order_notional = 500"),
        "conf/ops.toml: accounts.solo.risk.max_order_notional: must not exceed "
        "max_symbol_notional (200) (got 500)",
    ),
    (
        "interval not below the watchdog gap bound",
        MINIMAL + "[accounts.solo.schedule]\ndispatcher_s = 200\n",
        "conf/ops.toml: accounts.solo.schedule.dispatcher_s: must be less than "
        "watchdog.gap_bounds_s.dispatcher (120), or the watchdog restarts healthy "
        "processes (got 200)",
    ),
    (
        "unknown watchdog role",
        MINIMAL + "[watchdog.gap_bounds_s]\nstreem = 5\n",
        "conf/ops.toml: watchdog.gap_bounds_s.streem: unknown role 'streem' "
        "(known: stream, dispatcher, position-manager, signal-engine, monitor)",
    ),
    (
        "unknown role in per-role stale bounds",
        MINIMAL + "[watchdog.heartbeat_stale_by_role_s]\ndispatch = 9\n",
        "conf/ops.toml: watchdog.heartbeat_stale_by_role_s.dispatch: unknown role 'dispatch' "
        "(known: stream, dispatcher, position-manager, signal-engine, monitor)",
    ),
    (
        "per-role stale bound below heartbeat interval",
        MINIMAL + "[watchdog.heartbeat_stale_by_role_s]\nstream = 0.5\n",
        "conf/ops.toml: watchdog.heartbeat_stale_by_role_s.stream: must be greater than "
        "heartbeat_interval_s (1) (got 0.5)",
    ),
    (
        "stale threshold below heartbeat interval",
        MINIMAL + "[watchdog]\nheartbeat_interval_s = 5\nheartbeat_stale_s = 2\n",
        "conf/ops.toml: watchdog.heartbeat_stale_s: must be greater than "
        "heartbeat_interval_s (5) (got 2)",
    ),
    (
        "pool min above max",
        MINIMAL + "[database]\npool_min = 9\npool_max = 3\n",
        "conf/ops.toml: database.pool_min: must not exceed pool_max (3) (got 9)",
    ),
    (
        "unsupported path variable",
        MINIMAL + '[buffer]\npath = "${HOME}/buffer.db"\n',
        "conf/ops.toml: buffer.path: unsupported variable ${HOME}: only ${OPS_HOME} is expanded",
    ),
    (
        "retry initial above max",
        MINIMAL + "[broker.retry]\ninitial_s = 20\n",
        "conf/ops.toml: broker.retry.initial_s: must not exceed max_s (10) (got 20)",
    ),
    (
        "negative exit percentage",
        MINIMAL + "[accounts.solo.exits]\nstop_loss_pct = -2\n",
        "conf/ops.toml: accounts.solo.exits.stop_loss_pct: must be greater than 0 (got -2)",
    ),
    (
        "negative days before expiry",
        MINIMAL + "[accounts.solo.exits]\nclose_options_days_before_expiry = -1\n",
        "conf/ops.toml: accounts.solo.exits.close_options_days_before_expiry: "
        "must be at least 0 (got -1)",
    ),
    (
        "table where a value belongs",
        MINIMAL + "[sim]\nclock = { mode = 'open' }\n",
        "conf/ops.toml: sim.clock: must be one of 'open', 'nyse' or 'closed' (got a table)",
    ),
    (
        "bad aws region",
        MINIMAL + '[credentials]\naws_region = "US East"\n',
        "conf/ops.toml: credentials.aws_region: must look like us-east-1 (got 'US East')",
    ),
    (
        "bad sns topic",
        MINIMAL + '[alerts]\nsns_topic_arn = "ops-alerts"\n',
        "conf/ops.toml: alerts.sns_topic_arn: must look like "
        "arn:aws:sns:us-east-1:123456789012:ops-alerts (got 'ops-alerts')",
    ),
    (
        "endpoint without scheme",
        MINIMAL + '[credentials]\naws_endpoint_url = "localhost:4566"\n',
        "conf/ops.toml: credentials.aws_endpoint_url: must be a URL starting with http:// or "
        "https:// (got scheme 'localhost')",
    ),
    (
        "strategy without accounts",
        MINIMAL + '[[signal_engine.strategies]]\nname = "demo"\ncallable = "m:f"\naccounts = []\n',
        "conf/ops.toml: signal_engine.strategies[0].accounts: must not be empty",
    ),
    (
        "list where a table belongs",
        MINIMAL + "[[sim]]\nport = 1\n",
        "conf/ops.toml: sim: expected a table (got a list)",
    ),
    (
        "duplicate account tables",
        MINIMAL + "[accounts.solo]\n",
        "conf/ops.toml: accounts.solo: duplicate account 'solo' (line 14)",
    ),
    (
        "duplicate inline accounts",
        "[accounts]\nlarge = {}\nlarge = {}\n",
        "conf/ops.toml: accounts.large: duplicate account 'large' (line 3)",
    ),
    (
        "duplicate key",
        MINIMAL + "[accounts.solo.schedule]\ndispatcher_s = 1\ndispatcher_s = 2\n",
        "conf/ops.toml: accounts.solo.schedule.dispatcher_s: duplicate key 'dispatcher_s' "
        "(line 16)",
    ),
    (
        "duplicate key at end of file",
        "[sim]\nport = 1\nport = 2",
        "conf/ops.toml: sim.port: duplicate key 'port' (line 3)",
    ),
    (
        "duplicate sub-table",
        MINIMAL + "[accounts.solo.risk]\n",
        "conf/ops.toml: accounts.solo.risk: duplicate table [accounts.solo.risk] (line 14)",
    ),
    (
        "duplicate table named with a quoted key",
        MINIMAL + "[accounts.solo.\"risk\"]\n",
        "conf/ops.toml: accounts.solo.risk: duplicate table [accounts.solo.risk] (line 14)",
    ),
    (
        "key redefined by a dotted key",
        "[sim]\nport = 1\nport.x = 2\n",
        "conf/ops.toml: sim.port.x: duplicate key 'port.x' (line 3)",
    ),
    (
        "a table made an array of tables",
        "[sim]\n[[sim]]\n",
        "conf/ops.toml: line 2, column 6: invalid TOML: cannot overwrite a value",
    ),
    (
        "bad TOML syntax",
        "[sim]\nport = \n",
        "conf/ops.toml: line 2, column 8: invalid TOML: invalid value",
    ),
    (
        "unclosed table header",
        "[accounts.large\n",
        "conf/ops.toml: line 1, column 16: invalid TOML: expected ']' at the end of a table "
        "declaration",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_exact_error_message(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_several_problems_are_listed_one_per_line() -> None:
    text = replaced('secret_id = "ops-pipeline/alpaca/solo"\n', "")
    text = replaced("max_qty = 1.5", 'max_qty = "abc"\nbar = 2', text)
    text += "[accounts.solo.schedule]\ndispatcher_s = 0\n[metrics]\nport = 70000\n"
    assert error_of(text).splitlines() == [
        "conf/ops.toml: accounts.solo.secret_id: field required",
        "conf/ops.toml: accounts.solo.risk.max_qty: expected a number (got 'abc')",
        "conf/ops.toml: accounts.solo.risk: unknown key 'bar'",
        "conf/ops.toml: accounts.solo.schedule.dispatcher_s: must be greater than 0 (got 0)",
        "conf/ops.toml: metrics.port: must be at most 65535 (got 70000)",
    ]


def test_bad_account_name_is_reported_with_body_errors() -> None:
    text = MINIMAL.replace("accounts.solo", "accounts.9lives").replace("max_qty = 1.5", "")
    assert error_of(text).splitlines() == [
        "conf/ops.toml: accounts.9lives: invalid account name '9lives': must match "
        "^[a-z][a-z0-9_-]{0,31}$",
        "conf/ops.toml: accounts.9lives.risk.max_qty: field required",
    ]


def test_problems_are_structured() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(MINIMAL + "[sim]\nport = 0\n", "x.toml")
    assert info.value.source == "x.toml"
    assert info.value.problems == (Problem("sim.port", "must be at least 1 (got 0)"),)


def test_credentials_in_a_url_are_refused_without_echoing_them() -> None:
    text = MINIMAL + '[alerts]\nwebhook_urls = ["https://user:hunter2pass@hooks.example.com/x"]\n'
    message = error_of(text)
    assert message == (
        "conf/ops.toml: alerts.webhook_urls[0]: must not contain credentials (user@host)"
    )
    assert "hunter2pass" not in message


def test_unknown_key_value_is_never_echoed() -> None:
    text = replaced("max_qty = 1.5", 'max_qty = 1.5\napi_secret = "sUp3rS3cretValue"')
    message = error_of(text)
    assert message == "conf/ops.toml: accounts.solo.risk: unknown key 'api_secret'"
    assert "sUp3rS3cretValue" not in message


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ops.toml"
    path.write_text("[sim]\nport = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: line 2, column 8: invalid TOML: invalid value"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: config file not found"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: config file is not UTF-8 text"


def test_unbounded_retry_is_refused_in_code_too() -> None:
    with pytest.raises(ConfigError) as info:
        RetryConfig(max_attempts=0, deadline_s=None)
    assert str(info.value) == "RetryConfig: max_attempts: 0 (unbounded) needs a deadline_s"
