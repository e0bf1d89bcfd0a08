"""Reads through Broker against the real simulator: timeouts on hung calls, bounded
retries, positions (stock and option), fills, market data, account binding."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ops.broker import (
    AccountMismatchError,
    Broker,
    BrokerApiError,
    BrokerSettings,
    BrokerUnavailable,
)
from ops.core.backoff import Backoff
from ops.core.models import OPTION_MULTIPLIER, OrderRequest, Side
from ops.runtime.credentials import Credentials
from ops.sim import SimConfig, Simulator
from tests.support import eventually

from .conftest import creds, endpoints, make_broker

NO_RETRY = BrokerSettings(rest_timeout_s=1.0, retry=Backoff(max_attempts=1))


def _fails_left(sim: Simulator) -> int:
    return sum(int(r["remaining"]) for r in sim.faults.state()["fails"])


async def test_hung_call_times_out_within_bound(sim: Simulator) -> None:
    broker = make_broker(sim, settings=NO_RETRY)
    sim.faults.hang_next(1, path="/v2/account")
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as ei:
            await broker.get_account()
        elapsed = time.monotonic() - started
        assert sim.faults.state()["hung_now"] == 1  # the server really never answered
    finally:
        sim.faults.release_hangs()
        broker.close()
    assert "timeout" in str(ei.value) and ei.value.what == "get account"
    # Bounded by the 1 s timeout (generous slack for a loaded machine; without our
    # timeout this call would block until the hang is released).
    assert 0.9 <= elapsed < 10.0


async def test_hung_read_is_retried_and_succeeds(sim: Simulator, broker: Broker) -> None:
    sim.faults.hang_next(1, path="/v2/clock")
    try:
        clock = await broker.get_clock()
    finally:
        sim.faults.release_hangs()
    assert clock.is_open is True
    assert broker.stats.retries == 1


async def test_429_on_reads_is_retried_within_bounds(sim: Simulator, broker: Broker) -> None:
    sim.faults.fail_next(2, status=429, path="/v2/positions")
    assert await broker.list_positions() == []
    assert broker.stats.retries == 2 and _fails_left(sim) == 0

    # Out of attempts: exactly max_attempts requests reached the server (alpaca-py's own
    # 3x retry of 429 is disabled), and the 429 surfaces as our error.
    sim.faults.fail_next(10, status=429, path="/v2/positions")
    started = time.monotonic()
    with pytest.raises(BrokerApiError) as ei:
        await broker.list_positions()
    assert ei.value.http_status == 429
    assert _fails_left(sim) == 10 - 4
    assert time.monotonic() - started < 9.0  # alpaca-py alone would sleep 3 s per retry


async def test_500_on_reads_is_retried(sim: Simulator, broker: Broker) -> None:
    sim.faults.fail_next(1, status=500, path="/v2/account")
    account = await broker.get_account()
    assert account.account_number == "PASIM0000001"
    assert broker.stats.retries == 1


async def test_positions_stock_and_option_and_fills(sim: Simulator, broker: Broker) -> None:
    occ = "AAPL261218C00190000"
    for cid, symbol, qty in (("t-pos-s", "AAPL", 3), ("t-pos-o", occ, 2)):
        res = await broker.submit_order(OrderRequest(symbol, Side.BUY, cid, qty=Decimal(qty)))
        assert res.outcome == "accepted", res

    async def both_filled() -> bool:
        return {p.symbol for p in await broker.list_positions()} == {"AAPL", occ}

    await eventually(both_filled, "stock and option positions")
    by_sym = {p.symbol: p for p in await broker.list_positions()}
    stock, option = by_sym["AAPL"], by_sym[occ]
    assert stock.qty == 3 and stock.asset_class == "us_equity" and stock.side == "long"
    assert stock.market_value == stock.qty * stock.current_price  # type: ignore[operator]
    assert option.qty == 2 and option.asset_class == "us_option"
    assert option.current_price is not None
    assert option.market_value == option.qty * option.current_price * OPTION_MULTIPLIER
    assert option.cost_basis == option.qty * option.avg_entry_price * OPTION_MULTIPLIER
    one = await broker.get_position(occ)
    assert one is not None and one.qty == 2
    assert await broker.get_position("MSFT") is None

    fills = await broker.list_fills(after=datetime.now(UTC) - timedelta(hours=1))
    assert {f.symbol for f in fills} == {"AAPL", occ}
    assert sum(f.qty for f in fills if f.symbol == occ) == 2

    closing = await broker.close_position("AAPL", qty=Decimal(1))
    assert closing.side == "sell" and closing.qty == Decimal(1)
    results = await broker.close_all_positions(cancel_orders=True)
    assert {r.symbol for r in results} >= {occ}
    assert all(r.order is not None for r in results if r.http_status == 200)

    async def flat() -> bool:
        return await broker.list_positions() == []

    await eventually(flat, "all positions closed")


async def test_market_data(broker: Broker) -> None:
    occ = "AAPL261218C00190000"
    quotes = await broker.latest_quotes(["AAPL", occ])
    assert set(quotes) == {"AAPL", occ}
    assert 0 < quotes["AAPL"].bid <= quotes["AAPL"].ask
    trades = await broker.latest_trades(["AAPL"])
    assert trades["AAPL"] > 0
    start = datetime.now(UTC) - timedelta(hours=2)
    bars = await broker.bars(["AAPL", "MSFT"], "5Min", start)
    assert set(bars) == {"AAPL", "MSFT"} and all(bars.values())
    first = bars["AAPL"][0]
    assert first.low <= first.open <= first.high and first.timestamp >= start
    with pytest.raises(ValueError, match="timezone-aware"):
        await broker.bars(["AAPL"], "5Min", datetime(2026, 1, 1))  # noqa: DTZ001


async def test_bind_account_accepts_the_right_account(broker: Broker) -> None:
    info = await broker.bind_account("PASIM0000001")
    assert info.account_number == "PASIM0000001" and info.cash == Decimal(100_000)


async def test_wrong_account_binding_refuses(sim: Simulator) -> None:
    tiny_keys = creds(sim, "large", keys_of="tiny")
    broker = Broker(endpoints(sim), tiny_keys)
    try:
        with pytest.raises(AccountMismatchError) as ei:
            await broker.bind_account("PASIM0000001")
    finally:
        broker.close()
    err = ei.value
    msg = str(err)
    assert (err.account_name, err.expected, err.actual) == ("large", "PASIM0000001",
                                                            "PASIM0000002")
    assert "'large'" in msg and "PASIM0000001" in msg and "PASIM0000002" in msg
    spec = sim.account("tiny")
    assert spec.key_id not in msg and spec.secret not in msg

    # Even a caller that ignores the exception cannot trade through this Broker.
    async with Broker(endpoints(sim), tiny_keys) as wrong:
        with pytest.raises(AccountMismatchError):
            await wrong.bind_account("PASIM0000001")
        with pytest.raises(AccountMismatchError):
            await wrong.submit_order(OrderRequest("AAPL", Side.BUY, "t-wrong", qty=Decimal(1)))
        with pytest.raises(AccountMismatchError):
            await wrong.close_all_positions()
    async with make_broker(sim, "tiny") as tiny:
        assert await tiny.list_orders(status="all") == []


async def test_errors_and_reprs_never_show_keys(sim: Simulator) -> None:
    spec = sim.account("large")
    broker = make_broker(sim, settings=NO_RETRY)
    texts = [repr(broker)]
    sim.faults.fail_next(1, status=500, path="/v2/account")
    sim.faults.hang_next(1, path="/v2/clock")
    try:
        for call in (broker.get_account, broker.get_clock):
            try:
                await call()
            except Exception as e:  # collecting the message is the point
                texts.append(f"{e!r} {e}")
    finally:
        sim.faults.release_hangs()
        broker.close()
    bad = Broker(endpoints(sim), Credentials("x", "large", "wrongkey123", "wrongsecret123"),
                 NO_RETRY)
    try:
        with pytest.raises(BrokerApiError) as ei:
            await bad.get_account()
        texts.append(f"{ei.value!r} {ei.value}")
        assert ei.value.http_status == 401
    finally:
        bad.close()
    assert len(texts) == 4
    for t in texts:
        for secret in (spec.key_id, spec.secret, "wrongkey123", "wrongsecret123"):
            assert secret not in t


@pytest.mark.integration
async def test_list_fills_follows_page_tokens() -> None:
    # fill_lot=1 and a manual market: one order of 130 fills in 130 executions.
    sim = Simulator(SimConfig(seed=7, clock="open", market_step_s=None, fill_lot=Decimal(1)))
    await sim.start(host="127.0.0.1", port=0)
    b = make_broker(sim)
    try:
        res = await b.submit_order(OrderRequest("AAPL", Side.BUY, "t-many", qty=Decimal(130)))
        assert res.outcome == "accepted" and res.order is not None
        for _ in range(200):
            sim.market.step()
        order = await b.get_order(res.order.id)
        assert order is not None and order.status == "filled"
        fills = await b.list_fills()
    finally:
        b.close()
        await sim.stop()
    assert len(fills) == 130 and len({f.id for f in fills}) == 130
    assert sum(f.qty for f in fills) == 130
    assert [f.id for f in fills] == sorted(f.id for f in fills)
    assert fills[-1].cum_qty == 130 and fills[-1].fill_type == "fill"


async def test_order_ids_are_checked_before_sending(broker: Broker) -> None:
    for call in (broker.get_order, broker.cancel_order, broker.replace_order):
        with pytest.raises(ValueError, match="'not-a-uuid' is not a UUID"):
            await call("not-a-uuid")
    assert broker.stats.requests == 0
