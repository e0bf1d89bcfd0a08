"""Route table of the simulator's REST API: trading (/v2) and market data (/v2/stocks, /v1beta1).

Each handler takes a `Ctx` (authenticated account, path params, query, JSON body) and
returns `(status, body)`; the server turns that into a response and applies faults,
latency and the rate limit around it. Errors are raised as `ApiError`.

Two broker rules are applied here, before the engine sees an order (ledger.py has the
rules): the options trading level of an opening option order, and pattern-day-trading
protection for any order that would be a 4th day trade in 5 business days on an account
under 25,000 -- submits, closes of one position, and each position of a close-all (its
207 item then carries the refusal). An order whose client_order_id the account already
used skips both: the engine answers "client_order_id must be unique", as Alpaca does, so a
client re-sending after a timeout finds its order instead of a refusal it never got.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from ops.sim import contracts, data, ledger, queries
from ops.sim.accounts import AccountState
from ops.sim.clock import SimClock
from ops.sim.engine import Engine
from ops.sim.market import Market
from ops.sim.orders import parse_new_order
from ops.sim.wire import ApiError, not_found, parse_bool, parse_time, stable_uuid, unprocessable

Reply = tuple[int, Any]


@dataclass
class Ctx:
    request: web.Request
    st: AccountState
    params: dict[str, str]
    query: Mapping[str, str]
    engine: Engine
    market: Market
    clock: SimClock

    async def body(self) -> dict[str, Any]:
        raw = await self.request.read()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(400, 40010000, "request body format is invalid") from None
        if not isinstance(body, dict):
            raise ApiError(400, 40010000, "request body format is invalid")
        return body


Handler = Callable[[Ctx], Awaitable[Reply]]


async def get_account(c: Ctx) -> Reply:
    return 200, ledger.account_wire(c.st, c.market, c.clock.today())


def _broker_rules(c: Ctx, body: Mapping[str, Any]) -> None:
    """Options level and PDT protection for a submit body (module docstring). A body the
    engine will refuse as malformed is left to the engine, so its error is the one seen."""
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        return
    symbol = symbol.upper()
    try:
        asset_class, _ = c.market.classify(symbol)
        req = parse_new_order(dict(body) | {"symbol": symbol},
                              option=asset_class == "us_option")
    except (ApiError, ValueError):
        return
    if req.client_order_id is not None and req.client_order_id in c.st.by_client_id:
        return
    if asset_class == "us_option":
        ledger.check_option_order(c.st, symbol, req.side, req.qty, req.position_intent)
    ledger.check_pdt(c.st, c.market, symbol, req.side, c.clock.today())


def _close_side(st: AccountState, symbol: str) -> str | None:
    pos = st.positions.get(symbol.upper())
    if pos is None or pos.qty == 0:
        return None
    return "sell" if pos.qty > 0 else "buy"


async def get_clock(c: Ctx) -> Reply:
    return 200, c.clock.clock_json()


async def get_calendar(c: Ctx) -> Reply:
    try:
        start = parse_time(c.query["start"], "start").date() if c.query.get("start") else None
        end = parse_time(c.query["end"], "end").date() if c.query.get("end") else None
    except ValueError as exc:
        raise unprocessable(str(exc)) from None
    start = start or c.clock.today()
    end = end or start + timedelta(days=30)
    return 200, c.clock.calendar_json(start, end)


async def get_asset(c: Ctx) -> Reply:
    symbol = c.params["symbol"].upper()
    try:
        kind, _ = c.market.classify(symbol)
    except ValueError:
        raise not_found("asset not found") from None
    return 200, {
        "id": stable_uuid("asset", symbol), "class": kind,
        "exchange": ledger.exchange_of(symbol, kind), "symbol": symbol,
        "name": f"{symbol} (simulated)", "status": "active", "tradable": True,
        "marginable": kind == "us_equity", "shortable": kind == "us_equity",
        "easy_to_borrow": kind == "us_equity", "fractionable": kind == "us_equity",
        "attributes": [],
    }


async def list_positions(c: Ctx) -> Reply:
    return 200, [ledger.position_wire(c.st, c.market, p)
                 for _, p in sorted(c.st.positions.items())]


async def get_position(c: Ctx) -> Reply:
    return 200, c.engine.position(c.st, c.params["symbol"])


async def close_position(c: Ctx) -> Reply:
    symbol = c.params["symbol"].upper()
    side = _close_side(c.st, symbol)
    if side is not None:
        ledger.check_pdt(c.st, c.market, symbol, side, c.clock.today())
    return 200, c.engine.close_position(c.st, c.params["symbol"], c.query).wire()


async def close_all_positions(c: Ctx) -> Reply:
    cancel = parse_bool(c.query.get("cancel_orders"))
    today = c.clock.today()
    refused: dict[str, ApiError] = {}
    for symbol in sorted(c.st.positions):
        side = _close_side(c.st, symbol)
        try:
            if side is not None:
                ledger.check_pdt(c.st, c.market, symbol, side, today)
        except ApiError as err:
            refused[symbol] = err
    if not refused:
        return 207, c.engine.close_all(c.st, cancel)
    # Some closes are day trades the account may not make: those positions get the
    # refusal as their 207 item, the others are closed as the engine closes them.
    if cancel:
        c.engine.cancel_all(c.st)
    out: list[dict[str, Any]] = []
    for symbol in sorted(c.st.positions):
        failed = refused.get(symbol)
        if failed is None:
            try:
                order = c.engine.close_position(c.st, symbol, {})
            except ApiError as exc:
                failed = exc
            else:
                out.append({"symbol": symbol, "status": 200, "order_id": order.id,
                            "body": order.wire()})
                continue
        out.append({"symbol": symbol, "status": failed.status, "body": failed.body()})
    return 207, out


async def submit_order(c: Ctx) -> Reply:
    body = await c.body()
    _broker_rules(c, body)
    return 200, c.engine.submit(c.st, body).wire()


async def list_orders(c: Ctx) -> Reply:
    return 200, [o.wire() for o in queries.list_orders(c.st, c.query)]


async def get_order(c: Ctx) -> Reply:
    return 200, c.engine.order(c.st, c.params["id"]).wire()


async def get_order_by_client_id(c: Ctx) -> Reply:
    cid = c.query.get("client_order_id")
    if not cid:
        raise unprocessable("client_order_id is required")
    return 200, c.engine.order_by_client_id(c.st, cid).wire()


async def cancel_order(c: Ctx) -> Reply:
    c.engine.cancel(c.st, c.params["id"])
    return 204, None


async def cancel_all_orders(c: Ctx) -> Reply:
    return 207, c.engine.cancel_all(c.st)


async def replace_order(c: Ctx) -> Reply:
    return 200, c.engine.replace(c.st, c.params["id"], await c.body()).wire()


async def activities_of_type(c: Ctx) -> Reply:
    kind = c.params["type"].upper()
    return 200, queries.activities(c.st, dict(c.query) | {"activity_types": kind})


async def activities(c: Ctx) -> Reply:
    return 200, queries.activities(c.st, c.query)


async def stock_quotes(c: Ctx) -> Reply:
    return 200, data.latest_quotes(c.market, c.query, option=False)


async def stock_trades(c: Ctx) -> Reply:
    return 200, data.latest_trades(c.market, c.query, option=False)


async def stock_latest_bars(c: Ctx) -> Reply:
    return 200, data.latest_bars(c.market, c.query)


async def stock_bars(c: Ctx) -> Reply:
    return 200, data.bars(c.market, c.query, nyse=c.clock.mode == "nyse")


async def stock_snapshots(c: Ctx) -> Reply:
    return 200, data.snapshots(c.market, c.query)


async def option_quotes(c: Ctx) -> Reply:
    return 200, data.latest_quotes(c.market, c.query, option=True)


async def option_trades(c: Ctx) -> Reply:
    return 200, data.latest_trades(c.market, c.query, option=True)


async def option_contract(c: Ctx) -> Reply:
    symbol = c.params["symbol"].upper()
    try:
        kind, occ = c.market.classify(symbol)
    except ValueError:
        raise not_found("option contract not found") from None
    if occ is None:
        raise not_found("option contract not found")
    return 200, contracts.contract_json(c.market, occ)


async def option_contracts(c: Ctx) -> Reply:
    return 200, contracts.list_contracts(c.market, c.query)


_ID = r"(?P<id>[^/]+)"
_SYM = r"(?P<symbol>[^/]+)"
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", r"/v2/account", get_account),
    ("GET", r"/v2/clock", get_clock),
    ("GET", r"/v2/calendar", get_calendar),
    ("GET", rf"/v2/assets/{_SYM}", get_asset),
    ("GET", r"/v2/positions", list_positions),
    ("DELETE", r"/v2/positions", close_all_positions),
    ("GET", rf"/v2/positions/{_SYM}", get_position),
    ("DELETE", rf"/v2/positions/{_SYM}", close_position),
    ("POST", r"/v2/orders", submit_order),
    ("GET", r"/v2/orders", list_orders),
    ("DELETE", r"/v2/orders", cancel_all_orders),
    ("GET", r"/v2/orders:by_client_order_id", get_order_by_client_id),
    ("GET", rf"/v2/orders/{_ID}", get_order),
    ("DELETE", rf"/v2/orders/{_ID}", cancel_order),
    ("PATCH", rf"/v2/orders/{_ID}", replace_order),
    ("GET", r"/v2/account/activities", activities),
    ("GET", r"/v2/account/activities/(?P<type>[A-Za-z_]+)", activities_of_type),
    ("GET", r"/v2/options/contracts", option_contracts),
    ("GET", rf"/v2/options/contracts/{_SYM}", option_contract),
    ("GET", r"/v2/stocks/quotes/latest", stock_quotes),
    ("GET", r"/v2/stocks/trades/latest", stock_trades),
    ("GET", r"/v2/stocks/bars/latest", stock_latest_bars),
    ("GET", r"/v2/stocks/bars", stock_bars),
    ("GET", r"/v2/stocks/snapshots", stock_snapshots),
    ("GET", r"/v1beta1/options/quotes/latest", option_quotes),
    ("GET", r"/v1beta1/options/trades/latest", option_trades),
]
COMPILED = [(m, re.compile(f"^{p}$"), h) for m, p, h in ROUTES]


def resolve(method: str, path: str) -> tuple[Handler, dict[str, str]]:
    """The handler for (method, path); ApiError 404/405 when there is none."""
    allowed = False
    for m, rx, handler in COMPILED:
        match = rx.match(path)
        if match is not None:
            if m == method:
                return handler, match.groupdict()
            allowed = True
    if allowed:
        raise ApiError(405, 40510000, "method not allowed")
    raise ApiError(404, 40410000, "endpoint not found")
