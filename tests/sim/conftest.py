"""Fixtures for the simulator tests: a started Simulator and real alpaca-py clients on it.

alpaca-py is synchronous (requests), so tests call it through `asyncio.to_thread`; the
TradingStream runs inside the test's loop via `_run_forever()` (docs/broker-protocol.md 4.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from uuid import UUID

import pytest
import websockets
from alpaca.data.historical import OptionHistoricalDataClient, StockHistoricalDataClient
from alpaca.trading.client import TradingClient
from alpaca.trading.models import (
    Asset,
    Calendar,
    Clock,
    ClosePositionResponse,
    Order,
    Position,
    TradeAccount,
)
from alpaca.trading.requests import (
    CancelOrderResponse,
    ClosePositionRequest,
    GetCalendarRequest,
    GetOrdersRequest,
    OrderRequest,
    ReplaceOrderRequest,
)
from alpaca.trading.stream import TradingStream
from websockets.asyncio.client import ClientConnection

from ops.sim import SimConfig, Simulator

Msg = dict[str, Any]
T = TypeVar("T")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    # No market timer: tests step the market themselves, so every run is deterministic.
    async with Simulator(SimConfig(seed=7, clock="open", market_step_s=None, fill_lot=100)) as s:
        yield s


class Trader:
    """Typed async facade over a real alpaca-py TradingClient (which returns Model | dict)."""

    def __init__(self, client: TradingClient) -> None:
        self.client = client

    async def _call(self, kind: type[T], fn: Callable[..., object], *args: object) -> T:
        result = await asyncio.to_thread(fn, *args)
        assert isinstance(result, kind), result
        return result

    async def _list(self, kind: type[T], fn: Callable[..., object], *args: object) -> list[T]:
        result = await asyncio.to_thread(fn, *args)
        assert isinstance(result, list)
        assert all(isinstance(x, kind) for x in result), result
        return result

    async def account(self) -> TradeAccount:
        return await self._call(TradeAccount, self.client.get_account)

    async def clock(self) -> Clock:
        return await self._call(Clock, self.client.get_clock)

    async def calendar(self, req: GetCalendarRequest) -> list[Calendar]:
        return await self._list(Calendar, self.client.get_calendar, req)

    async def asset(self, symbol: str) -> Asset:
        return await self._call(Asset, self.client.get_asset, symbol)

    async def submit(self, req: OrderRequest) -> Order:
        return await self._call(Order, self.client.submit_order, req)

    async def order(self, order_id: UUID | str) -> Order:
        return await self._call(Order, self.client.get_order_by_id, order_id)

    async def order_by_cid(self, client_order_id: str) -> Order:
        return await self._call(Order, self.client.get_order_by_client_id, client_order_id)

    async def orders(self, req: GetOrdersRequest | None = None) -> list[Order]:
        return await self._list(Order, self.client.get_orders, req)

    async def replace(self, order_id: UUID | str, req: ReplaceOrderRequest) -> Order:
        return await self._call(Order, self.client.replace_order_by_id, order_id, req)

    async def cancel(self, order_id: UUID | str) -> None:
        result: object = await asyncio.to_thread(self.client.cancel_order_by_id, order_id)
        assert result is None

    async def cancel_all(self) -> list[CancelOrderResponse]:
        return await self._list(CancelOrderResponse, self.client.cancel_orders)

    async def positions(self) -> list[Position]:
        return await self._list(Position, self.client.get_all_positions)

    async def position(self, symbol: str) -> Position:
        return await self._call(Position, self.client.get_open_position, symbol)

    async def close(self, symbol: str, req: ClosePositionRequest | None = None) -> Order:
        return await self._call(Order, self.client.close_position, symbol, req)

    async def close_all(self, cancel_orders: bool) -> list[ClosePositionResponse]:
        return await self._list(ClosePositionResponse, self.client.close_all_positions,
                                cancel_orders)

    async def get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Raw GET (e.g. account activities, which TradingClient does not wrap)."""
        result = await asyncio.to_thread(self.client.get, path, params)
        assert isinstance(result, list)
        return result


def trading(sim: Simulator, name: str = "large", *, retries: int | None = None,
            retry_wait: int | None = None, secret: str | None = None) -> Trader:
    spec = sim.account(name)
    client = TradingClient(spec.key_id, secret or spec.secret, paper=True,
                           url_override=sim.rest_url)
    if retries is not None:
        client._retry = retries  # alpaca-py retries 429/504 3x with 3 s sleeps by default
    if retry_wait is not None:
        client._retry_wait = retry_wait
    return Trader(client)


def stocks(sim: Simulator, name: str = "large") -> StockHistoricalDataClient:
    spec = sim.account(name)
    return StockHistoricalDataClient(spec.key_id, spec.secret, url_override=sim.data_url)


def options(sim: Simulator, name: str = "large") -> OptionHistoricalDataClient:
    spec = sim.account(name)
    return OptionHistoricalDataClient(spec.key_id, spec.secret, url_override=sim.data_url)


class Recorder:
    """A real TradingStream (raw_data=True) running in this loop, recording what it gets."""

    def __init__(self, sim: Simulator, name: str = "large") -> None:
        spec = sim.account(name)
        self.sim = sim
        self.name = name
        self.messages: list[Msg] = []
        self._changed = asyncio.Event()
        self.stream = TradingStream(spec.key_id, spec.secret, paper=True, raw_data=True,
                                    url_override=sim.stream_url)
        self.stream.subscribe_trade_updates(self._on_update)
        self._task: asyncio.Task[None] | None = None

    async def _on_update(self, msg: Msg) -> None:
        self.messages.append(msg)
        self._changed.set()

    async def start(self) -> Recorder:
        self._task = asyncio.create_task(
            self.stream._run_forever()  # type: ignore[no-untyped-call]
        )
        await self.sim.wait_stream(self.name, within_s=15)
        return self

    async def stop(self) -> None:
        await self.stream.stop_ws()
        # _consume() polls its stop queue only every 5 s; a server-side close ends the wait.
        await self.sim.faults.drop_streams(self.name, mode="1000")
        if self._task is not None:
            await asyncio.wait_for(self._task, 15)

    def events(self, order_id: str | None = None) -> list[str]:
        return [m["data"]["event"] for m in self.messages
                if order_id is None or m["data"]["order"]["id"] == order_id]

    async def wait_for(self, pred: Callable[[list[Msg]], bool], within_s: float = 10) -> None:
        async with asyncio.timeout(within_s):
            while not pred(self.messages):
                self._changed.clear()
                await self._changed.wait()


async def raw_ws_messages(ws: Any, n: int, within_s: float = 5) -> list[Msg]:
    out = []
    async with asyncio.timeout(within_s):
        for _ in range(n):
            out.append(json.loads(await ws.recv()))
    return out


@contextlib.asynccontextmanager
async def listening_ws(sim: Simulator, name: str = "large") -> AsyncIterator[ClientConnection]:
    """A raw `websockets` client, authenticated and listening to trade_updates."""
    spec = sim.account(name)
    async with websockets.connect(sim.stream_url) as ws:
        await ws.send(json.dumps({"action": "authenticate",
                                  "data": {"key_id": spec.key_id, "secret_key": spec.secret}}))
        assert json.loads(await ws.recv())["data"]["status"] == "authorized"
        await ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        assert json.loads(await ws.recv())["stream"] == "listening"
        yield ws

