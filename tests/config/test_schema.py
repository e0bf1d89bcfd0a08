"""The config models as code uses them: built directly (validated), copied with
`dataclasses.replace` (validated), frozen, shared defaults, the JSON view; and the schema
loads no validation library."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from decimal import Decimal

import pytest

from ops.core.config import (
    AlertsConfig,
    BrokerConfig,
    ConfigError,
    RetryConfig,
    RiskLimits,
    Schedule,
    SimConfig,
    StrategyConfig,
    WatchdogConfig,
)
from ops.runtime.config import load_config_text
from tests.config.samples import MINIMAL


def test_building_a_model_validates_every_field_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Schedule(dispatcher_s=0, position_manager_s="15")  # type: ignore[arg-type]
    assert str(info.value).splitlines() == [
        "Schedule: dispatcher_s: must be greater than 0 (got 0)",
        "Schedule: position_manager_s: expected a number (got '15')",
    ]
    with pytest.raises(ConfigError, match=r"^SimConfig: unknown key 'prot' \(did you mean "
                                          r"'port'\?\)$"):
        SimConfig(prot=1)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="^RiskLimits: max_qty: field required$"):
        RiskLimits(max_order_notional=Decimal(1), max_symbol_notional=Decimal(2),  # type: ignore[call-arg]
                   max_open_positions=1, daily_loss_limit=Decimal(1))


def test_numbers_are_stored_as_their_declared_type() -> None:
    schedule = Schedule(dispatcher_s=5)
    assert type(schedule.dispatcher_s) is float and schedule.dispatcher_s == 5.0
    risk = RiskLimits.from_mapping({"max_order_notional": 0.1, "max_symbol_notional": 100,
                                    "max_open_positions": 1, "daily_loss_limit": 50,
                                    "max_qty": 1.5})
    assert risk.max_order_notional == Decimal("0.1")  # via its text, not the binary float
    assert risk.max_symbol_notional == Decimal(100)
    with pytest.raises(ConfigError, match="^risk.toml: max_open_positions: expected an integer"):
        RiskLimits.from_mapping({"max_order_notional": 1, "max_symbol_notional": 1,
                                 "max_open_positions": True, "daily_loss_limit": 1,
                                 "max_qty": 1}, "risk.toml")


def test_replace_validates_like_building() -> None:
    retry = RetryConfig()
    assert dataclasses.replace(retry, max_s=20.0).max_s == 20.0
    with pytest.raises(ConfigError, match=r"^RetryConfig: initial_s: must not exceed max_s "
                                          r"\(0\.1\) \(got 0\.5\)$"):
        dataclasses.replace(retry, max_s=0.1)


def test_models_are_frozen_and_defaults_are_safe_to_share() -> None:
    broker = BrokerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        broker.rest_timeout_s = 1.0  # type: ignore[misc]
    assert broker.retry is BrokerConfig().retry  # one frozen default instance
    assert AlertsConfig().retry == RetryConfig(initial_s=1.0, max_s=60.0, max_attempts=0,
                                               deadline_s=3600.0)
    first, second = WatchdogConfig(), WatchdogConfig()
    assert first.gap_bounds_s == second.gap_bounds_s and first.gap_bounds_s is not \
        second.gap_bounds_s
    a = StrategyConfig(name="a", callable="m:f", accounts=["x"])
    b = StrategyConfig(name="b", callable="m:f", accounts=["x"])
    assert a.params == {} and a.params is not b.params


def test_gap_bounds_given_in_code_keep_the_other_defaults() -> None:
    watchdog = WatchdogConfig(gap_bounds_s={"dispatcher": 40})
    assert watchdog.gap_bounds_s["dispatcher"] == 40.0
    assert watchdog.gap_bounds_s["stream"] == 60.0


def test_public_dict_is_plain_json() -> None:
    text = MINIMAL + (
        '[[signal_engine.strategies]]\nname = "x"\ncallable = "m:f"\naccounts = ["solo"]\n'
        "params = { at = 1979-05-27T07:32:00Z, day = 1979-05-27, n = nan, w = [1, 2.5] }\n"
    )
    public = load_config_text(text, "m.toml").to_public_dict()
    risk = public["accounts"]["solo"]["risk"]
    assert (risk["max_order_notional"], risk["max_qty"], risk["signal_ttl_s"]) == ("100", "1.5",
                                                                                300.0)
    assert public["accounts"]["solo"]["schedule"]["dispatcher_s"] == 5.0
    assert public["broker"]["retry"] == {"initial_s": 0.5, "max_s": 10.0, "max_attempts": 5,
                                         "deadline_s": 30.0}
    assert public["signal_engine"]["strategies"][0]["params"] == {
        "at": "1979-05-27T07:32:00Z", "day": "1979-05-27", "n": None, "w": [1, 2.5]}
    assert json.loads(json.dumps(public)) == public


@pytest.mark.integration  # a fresh interpreter
def test_the_schema_and_the_roles_load_no_validation_library() -> None:
    code = (
        "import sys\n"
        "import ops.core.config, ops.runtime.config\n"
        "import ops.roles.stream, ops.roles.dispatcher, ops.roles.position_manager\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic',"
        " 'pydantic_core')))\n"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"
