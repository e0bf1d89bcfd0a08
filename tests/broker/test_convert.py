"""Raw broker JSON -> ops.core.models: tolerant of absent optionals and unknown values,
precise about what is wrong when a required field is bad."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from ops.broker.convert import (
    account_from_raw,
    fill_from_raw,
    order_from_raw,
    position_from_raw,
    trade_update_from_raw,
)
from ops.broker.errors import BrokerDataError

ORDER: dict[str, Any] = {
    "id": "7d1b6a80-2b1f-4e0a-9a3c-2f9f5d0c6b11", "client_order_id": "large-1",
    "created_at": "2024-05-01T14:30:00.101Z", "updated_at": "2024-05-01T10:30:00.123456789-04:00",
    "submitted_at": "2024-05-01T14:30:00.099Z", "symbol": "AAPL", "asset_class": "us_equity",
    "qty": "10", "filled_qty": "0", "filled_avg_price": None, "type": "limit", "side": "buy",
    "time_in_force": "day", "limit_price": 170.5, "status": "new",
}


def test_order_parses_nanoseconds_offsets_and_numbers() -> None:
    o = order_from_raw(ORDER)
    assert o.updated_at == datetime(2024, 5, 1, 14, 30, 0, 123456, tzinfo=UTC)
    assert o.limit_price == Decimal("170.5") and o.qty == Decimal(10)
    assert o.filled_avg_price is None and o.filled_qty == 0
    assert o.raw["symbol"] == "AAPL"


def test_order_keeps_unknown_status_and_tolerates_missing_optionals() -> None:
    minimal = {"id": "x", "client_order_id": "c", "status": "brand_new_status",
               "created_at": "2024-05-01T14:30:00"}
    o = order_from_raw(minimal)
    assert o.status == "brand_new_status"
    assert o.created_at.tzinfo is UTC and o.updated_at == o.created_at
    assert o.symbol == "" and o.qty is None


@pytest.mark.parametrize(
    ("patch", "needle"),
    [({"id": None}, "'id'"), ({"qty": "ten"}, "'qty' = 'ten'"),
     ({"created_at": "yesterday"}, "'created_at' = 'yesterday'"),
     ({"filled_qty": True}, "'filled_qty' = True"),
     ({"limit_price": "NaN"}, "'limit_price' = 'NaN': expected a finite number"),
     ({"limit_price": "1.5.0"}, "'limit_price' = '1.5.0': expected a decimal number"),
     ({"stop_price": [1]}, "'stop_price' = [1]"),
     ({"filled_at": "soon"}, "'filled_at' = 'soon': expected an ISO-8601 timestamp"),
     ({"canceled_at": 5}, "'canceled_at' = 5")],
)
def test_order_errors_name_field_and_value(patch: dict[str, Any], needle: str) -> None:
    with pytest.raises(BrokerDataError) as ei:
        order_from_raw(ORDER | patch)
    assert needle in str(ei.value)


def test_trade_update_falls_back_to_updated_at_and_keys_fills_by_execution() -> None:
    u = trade_update_from_raw({"stream": "trade_updates", "data": {"event": "new", "order": ORDER}})
    assert u.timestamp == order_from_raw(ORDER).updated_at
    assert u.event_key.startswith(ORDER["id"] + ":new:")
    f = trade_update_from_raw({"stream": "trade_updates", "data": {
        "event": "fill", "order": ORDER, "execution_id": "e1", "price": "1.5", "qty": "2",
        "position_qty": "-2", "timestamp": "2024-05-01T14:30:01Z"}})
    assert f.event_key == "exec:e1" and f.position_qty == Decimal(-2)


def test_trade_update_without_order_is_an_error() -> None:
    with pytest.raises(BrokerDataError, match="order"):
        trade_update_from_raw({"stream": "trade_updates", "data": {"event": "new"}})


def test_account_zero_last_equity_is_kept() -> None:
    a = account_from_raw({"id": "a", "account_number": "PA1", "status": "ACTIVE",
                          "cash": "1", "equity": "2", "last_equity": "0", "buying_power": "3"})
    assert a.last_equity == 0 and a.currency == "USD" and a.options_buying_power is None


def test_position_side_from_sign_and_fill_defaults() -> None:
    p = position_from_raw({"symbol": "X", "qty": "-3", "avg_entry_price": "1",
                           "cost_basis": "-3"})
    assert p.side == "short"
    f = fill_from_raw({"id": "t::u", "order_id": "o", "symbol": "X", "price": "1", "qty": "2",
                       "transaction_time": "2024-05-01T14:30:00-04:00"})
    assert f.cum_qty == 2 and f.leaves_qty == 0
    assert f.transaction_time.utcoffset() == timedelta(hours=-4)
    assert f.transaction_time == datetime(2024, 5, 1, 18, 30, tzinfo=UTC)


def test_trade_update_keeps_the_frame_text_it_was_given() -> None:
    msg = {"stream": "trade_updates", "data": {"event": "new", "order": ORDER}}
    assert trade_update_from_raw(msg).raw_json is None
    text = '{"stream": "trade_updates"}'  # kept verbatim, whatever it holds
    u = trade_update_from_raw(msg, text)
    assert u.raw_json == text and u.raw == msg
    # Naive timestamps are UTC on the fast path too; JSON numbers still parse.
    o = order_from_raw(ORDER | {"filled_at": "2024-05-01T14:31:00", "qty": 3, "notional": 2.5})
    assert o.filled_at == datetime(2024, 5, 1, 14, 31, tzinfo=UTC)
    assert o.qty == Decimal(3) and o.notional == Decimal("2.5")
