"""The one decoding of an account's kill switch (ops.core.models): what the roles act on is
what `ops status` and the dashboard show, and an unreadable switch is never off."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from ops.core.models import KILL_SWITCH_KEY, KillSwitch, kill_switch_from_value, kill_switch_in


@dataclass(frozen=True)
class Row:
    key: str
    value: Any
    account: str = "tiny"


@pytest.mark.parametrize(("value", "mode"), [
    ({"mode": "off"}, KillSwitch.OFF),
    ({"mode": "flatten"}, KillSwitch.FLATTEN),
    ({"mode": "flatten-all"}, KillSwitch.FLATTEN_ALL),
    ("reduce-only", KillSwitch.REDUCE_ONLY),  # a bare mode
    ('{"mode": "reduce-only"}', KillSwitch.REDUCE_ONLY),  # the object as JSON text
    ('{"mode": "off"}', KillSwitch.OFF),
])
def test_what_the_switch_says(value: Any, mode: KillSwitch) -> None:
    assert kill_switch_from_value(value) is mode


@pytest.mark.parametrize("value", [
    None, {}, {"mode": None}, {"mode": "pause-ish"}, {"mode": 1}, "{not json", "", 0, [],
    {"state": "off"}, '{"mode": "maybe"}',
])
def test_an_unreadable_switch_halts(value: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert kill_switch_from_value(value, "tiny") is KillSwitch.HALT
    assert "kill switch of tiny" in caplog.text and "treating it as halt" in caplog.text


def test_rows_without_a_switch_are_off_and_the_switch_row_decides() -> None:
    assert kill_switch_in([]) is KillSwitch.OFF
    assert kill_switch_in([Row("drift_block", {"blocked": True})]) is KillSwitch.OFF
    assert kill_switch_in([Row("drift_block", {}), Row(KILL_SWITCH_KEY, {"mode": "halt"})]) \
        is KillSwitch.HALT
    # A row whose value is unreadable is an engaged switch, not a missing one.
    assert kill_switch_in([Row(KILL_SWITCH_KEY, None)]) is KillSwitch.HALT
