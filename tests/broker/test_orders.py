"""Order calls through Broker against the real simulator: the happy paths and the
ambiguous-submit paths (duplicate client_order_id, 5xx, timeouts) that must never
produce a second order."""

from __future__ import annotations

from decimal import Decimal

from ops.broker import Broker, BrokerApiError
from ops.core.models import OrderRequest, OrderType, Side
from ops.sim import Simulator
from tests.support import eventually


def limit_buy(cid: str, qty: int = 5, price: str = "1.00", symbol: str = "AAPL") -> OrderRequest:
    # Far below the market: stays open until cancelled or replaced.
    return OrderRequest(symbol, Side.BUY, cid, qty=Decimal(qty), order_type=OrderType.LIMIT,
                        limit_price=Decimal(price))


async def orders_with_cid(broker: Broker, cid: str) -> int:
    return sum(1 for o in await broker.list_orders(status="all") if o.client_order_id == cid)


async def test_submit_get_list_cancel_replace(broker: Broker) -> None:
    res = await broker.submit_order(limit_buy("t-open-1"))
    assert res.outcome == "accepted" and res.order is not None, res
    order = res.order
    assert order.client_order_id == "t-open-1" and order.limit_price == Decimal("1")
    assert order.status in ("new", "accepted", "pending_new")

    got = await broker.get_order(order.id)
    assert got is not None and got.id == order.id
    by_cid = await broker.get_order_by_client_id("t-open-1")
    assert by_cid is not None and by_cid.id == order.id
    assert await broker.get_order_by_client_id("no-such-cid") is None
    assert await broker.get_order("00000000-0000-4000-8000-000000000000") is None

    open_ids = [o.id for o in await broker.list_orders(status="open")]
    assert open_ids == [order.id]

    new = await broker.replace_order(order.id, qty=Decimal(7), limit_price=Decimal("1.50"))
    assert new.id != order.id and new.replaces == order.id
    assert new.qty == Decimal(7) and new.limit_price == Decimal("1.5")
    old = await broker.get_order(order.id)
    assert old is not None and old.status == "replaced" and old.replaced_by == new.id

    await broker.cancel_order(new.id)

    async def canceled() -> bool:
        o = await broker.get_order(new.id)
        return o is not None and o.status == "canceled"

    await eventually(canceled, "replacement order canceled")
    assert await broker.list_orders(status="open") == []
    assert {o.id for o in await broker.list_orders(status="all")} == {order.id, new.id}


async def test_list_orders_pages_without_gaps_or_duplicates(broker: Broker) -> None:
    ids = []
    for i in range(5):
        res = await broker.submit_order(limit_buy(f"t-page-{i}", qty=1))
        assert res.order is not None
        ids.append(res.order.id)
    paged = await broker.list_orders(status="all", limit=2)
    assert [o.id for o in paged] == ids
    newest_first = await broker.list_orders(status="all", limit=2, direction="desc")
    assert [o.id for o in newest_first] == ids[::-1]
    assert await broker.list_orders(status="all", symbols=["MSFT"]) == []


async def test_cancel_all_orders(broker: Broker) -> None:
    for i in range(2):
        assert (await broker.submit_order(limit_buy(f"t-ca-{i}"))).outcome == "accepted"
    results = await broker.cancel_all_orders()
    assert len(results) == 2 and all(r.http_status == 200 for r in results)

    async def none_open() -> bool:
        return await broker.list_orders(status="open") == []

    await eventually(none_open, "all orders canceled")


async def test_rejection_carries_alpaca_message(sim: Simulator) -> None:
    from .conftest import make_broker

    async with make_broker(sim, "tiny") as tiny:
        res = await tiny.submit_order(OrderRequest("AAPL", Side.BUY, "t-rej", qty=Decimal(1000)))
    assert res.outcome == "rejected" and res.order is None
    assert res.http_status == 403 and res.code == 40310000
    assert res.reason is not None and "buying power" in res.reason


async def test_invalid_request_rejected_before_sending(broker: Broker) -> None:
    res = await broker.submit_order(OrderRequest("AAPL", Side.BUY, "x" * 200, qty=Decimal(1)))
    assert res.outcome == "rejected" and res.http_status is None
    assert res.reason is not None and "client_order_id" in res.reason
    assert await broker.list_orders() == []


async def test_duplicate_client_order_id_settles_as_existing_order(broker: Broker) -> None:
    first = await broker.submit_order(limit_buy("t-dup"))
    assert first.outcome == "accepted" and first.order is not None
    again = await broker.submit_order(limit_buy("t-dup", qty=9))
    assert again.outcome == "accepted" and again.order is not None
    assert again.order.id == first.order.id and again.order.qty == Decimal(5)
    assert again.http_status == 422
    assert await orders_with_cid(broker, "t-dup") == 1


async def test_5xx_after_creating_settles_to_the_one_order(sim: Simulator,
                                                           broker: Broker) -> None:
    for status, cid in ((500, "t-500"), (504, "t-504")):
        sim.faults.fail_next(1, status=status, path="/v2/orders", method="POST",
                             after_processing=True)
        res = await broker.submit_order(limit_buy(cid))
        assert res.outcome == "accepted", res
        assert res.order is not None and res.order.client_order_id == cid
        assert res.http_status == status
        assert await orders_with_cid(broker, cid) == 1
    # Nothing retried the POST behind our back (alpaca-py's own 504 retry is disabled).
    assert len(await broker.list_orders(status="all")) == 2


async def test_5xx_before_creating_is_unknown_and_never_resent(sim: Simulator,
                                                               broker: Broker) -> None:
    sim.faults.fail_next(1, status=504, path="/v2/orders", method="POST")
    res = await broker.submit_order(limit_buy("t-lost"))
    assert res.outcome == "unknown" and res.order is None and res.http_status == 504
    assert res.reason is not None and "t-lost" in res.reason
    assert await orders_with_cid(broker, "t-lost") == 0
    later = await broker.settle("t-lost")
    assert later.outcome == "unknown"
    assert await orders_with_cid(broker, "t-lost") == 0


async def test_429_on_submit_is_settled_not_resent(sim: Simulator, broker: Broker) -> None:
    sim.faults.fail_next(1, status=429, path="/v2/orders", method="POST")
    res = await broker.submit_order(limit_buy("t-429"))
    assert res.outcome == "unknown" and res.http_status == 429
    assert await orders_with_cid(broker, "t-429") == 0


async def test_submit_timeout_settles_by_lookup(sim: Simulator, broker: Broker) -> None:
    # The broker creates the order, then never answers: our timeout fires, the lookup
    # finds the order, and exactly one exists.
    sim.faults.hang_next(1, path="/v2/orders", method="POST", after_processing=True)
    try:
        res = await broker.submit_order(limit_buy("t-hang"))
    finally:
        sim.faults.release_hangs()
    assert res.outcome == "accepted" and res.order is not None, res
    assert res.order.client_order_id == "t-hang"
    assert await orders_with_cid(broker, "t-hang") == 1


async def test_replace_unchanged_is_an_api_error(broker: Broker) -> None:
    res = await broker.submit_order(limit_buy("t-same"))
    assert res.order is not None
    try:
        await broker.replace_order(res.order.id, limit_price=Decimal("1.00"))
    except BrokerApiError as e:
        assert e.http_status is not None and 400 <= e.http_status < 500
        assert e.what.startswith("replace order")
    else:
        raise AssertionError("replacing with unchanged parameters was accepted")
