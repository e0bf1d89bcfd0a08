"""Non-trade activities through the adapter: `activity_from_raw` keeps what Alpaca sends
(documented example pairs, unknown types, garbage numbers) and `Broker.list_activities`
reads them from the simulator, every page, oldest first, FILLs left out."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from ops.broker import Broker, BrokerDataError
from ops.broker.convert import activity_from_raw
from ops.core.models import OptionSymbol, OrderRequest, Side
from ops.sim import Simulator

# Alpaca's "Non-Trade Activities for Option Events" example pair (exercise of 2 calls).
OPEXC = {"id": "20230721011955195::5f596936-6f23-4cef-bdf1-3806aae57dbf",
         "activity_type": "OPEXC", "date": "2023-07-21", "net_amount": "0",
         "description": "Option Exercise", "symbol": "AAPL230721C00150000", "qty": "-2",
         "status": "executed"}
OPTRD = {"id": "20230721011955196::6f596936-6f23-4cef-bdf1-3806aae57dbf",
         "activity_type": "OPTRD", "date": "2023-07-21", "net_amount": "-30000",
         "description": "Option Trade", "symbol": "AAPL", "qty": "200", "price": "150",
         "status": "executed"}


def test_documented_pair_converts() -> None:
    exc, trd = activity_from_raw(OPEXC), activity_from_raw(OPTRD)
    assert (exc.activity_type, exc.symbol, exc.qty, exc.price) == (
        "OPEXC", "AAPL230721C00150000", Decimal(-2), None)
    assert exc.date == date(2023, 7, 21) and exc.transaction_time is None
    assert exc.status == "executed" and exc.description == "Option Exercise"
    assert (trd.qty, trd.price, trd.net_amount) == (Decimal(200), Decimal(150),
                                                    Decimal(-30000))
    assert trd.raw == OPTRD


def test_unknown_types_and_garbage_are_kept_not_fatal() -> None:
    a = activity_from_raw({"id": "x::1", "activity_type": "REOSC", "qty": "a lot",
                           "price": {"odd": 1}, "net_amount": True, "date": "soon",
                           "symbol": ""})
    assert a.activity_type == "REOSC" and a.qty is None and a.price is None
    assert a.net_amount is None and a.date is None and a.symbol is None
    assert a.raw["qty"] == "a lot"
    # A time instead of a date: its own calendar day.
    t = activity_from_raw({"id": "y::2", "activity_type": "SPLIT",
                           "transaction_time": "2024-06-10T08:00:00Z", "qty": 5})
    assert t.date == date(2024, 6, 10) and t.qty == 5
    assert t.transaction_time == datetime(2024, 6, 10, 8, tzinfo=UTC)
    assert activity_from_raw({"id": "z::3"}).activity_type == ""
    with pytest.raises(BrokerDataError, match="'id'"):
        activity_from_raw({"activity_type": "OPEXP", "qty": "1"})


async def test_list_activities_reads_every_page_of_the_wanted_types(
        sim: Simulator, broker: Broker) -> None:
    res = await broker.submit_order(OrderRequest("AAPL", Side.BUY, "ops-large-t1",
                                                 qty=Decimal(8)))
    assert res.outcome == "accepted"
    for i in range(104):  # over one page of 100
        sim.faults.split("AAPL", "2:1" if i % 2 == 0 else "1:2")
    got = await broker.list_activities(["SPLIT", "OPEXP"])
    assert len(got) == 104 and len({a.id for a in got}) == 104
    assert [a.id for a in got] == sorted(a.id for a in got)
    assert [a.qty for a in got[:2]] == [Decimal(8), Decimal(-8)]
    assert {a.activity_type for a in got} == {"SPLIT"}  # the FILL is not asked for
    day = sim.clock.today()
    assert await broker.list_activities(["SPLIT"], after=day + timedelta(days=1)) == []
    assert len(await broker.list_activities(
        ["SPLIT"], after=datetime.now(UTC) - timedelta(days=2))) == 104
    with pytest.raises(ValueError, match="activity type"):
        await broker.list_activities([])


async def test_list_activities_option_events(sim: Simulator, broker: Broker) -> None:
    spot = sim.market.price("AAPL")
    itm = OptionSymbol("AAPL", sim.clock.today() + timedelta(days=7), "C",
                       Decimal(int(spot) - 20))
    res = await broker.submit_order(OrderRequest(str(itm), Side.BUY, "ops-large-t2",
                                                 qty=Decimal(1)))
    assert res.outcome == "accepted"
    sim.faults.exercise("large", str(itm))
    exc, trd = await broker.list_activities(["OPEXC", "OPTRD", "OPASN", "OPEXP"])
    assert (exc.activity_type, exc.symbol, exc.qty) == ("OPEXC", str(itm), Decimal(-1))
    assert (trd.activity_type, trd.symbol, trd.qty, trd.price) == (
        "OPTRD", "AAPL", Decimal(100), itm.strike)
    assert exc.date == trd.date == sim.clock.today()
