"""The account's options and day-trading fields (issue 14.4): parsed when present, None when
absent (Alpaca removed the PDT fields on 2026-07-06, docs/broker-protocol.md 3.1 / 6.10), and a
malformed one named."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from ops.broker.convert import account_from_raw
from ops.broker.errors import BrokerDataError

BASE: dict[str, Any] = {"id": "3f1c7a5e-0000-4000-8000-000000000001",
                        "account_number": "PA1", "status": "ACTIVE", "cash": "1000",
                        "equity": "1000", "buying_power": "2000"}


def test_present_as_alpaca_sends_them() -> None:
    a = account_from_raw(BASE | {"options_buying_power": "800", "options_trading_level": 2,
                                 "pattern_day_trader": False, "daytrade_count": 3})
    assert a.options_buying_power == Decimal(800)
    assert (a.options_trading_level, a.pattern_day_trader, a.daytrade_count) == (2, False, 3)


def test_strings_are_accepted_too() -> None:
    a = account_from_raw(BASE | {"options_trading_level": "3", "pattern_day_trader": "true",
                                 "daytrade_count": "0"})
    assert (a.options_trading_level, a.pattern_day_trader, a.daytrade_count) == (3, True, 0)


def test_absent_or_null_means_unknown() -> None:
    for extra in ({}, {"options_trading_level": None, "pattern_day_trader": None,
                       "daytrade_count": None}):
        a = account_from_raw(BASE | extra)
        assert a.options_trading_level is None and a.pattern_day_trader is None
        assert a.daytrade_count is None and a.options_buying_power is None


@pytest.mark.parametrize(("key", "value"), [("daytrade_count", "2.5"),
                                            ("daytrade_count", True),
                                            ("options_trading_level", "high"),
                                            ("pattern_day_trader", "maybe")])
def test_a_malformed_field_is_named(key: str, value: object) -> None:
    with pytest.raises(BrokerDataError, match=key):
        account_from_raw(BASE | {key: value})
