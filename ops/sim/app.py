"""The aiohttp application: one catch-all route that dispatches REST, WebSocket and admin.

A catch-all lets us collapse duplicate slashes without redirecting (alpaca-py never
follows redirects, docs/broker-protocol.md section 1.3) and order the REST pipeline exactly:
auth (401) -> per-key rate limit (429) -> latency -> injected failures/hangs -> handler.
Admin endpoints (`/_sim/...`) need no Alpaca keys but answer loopback peers only.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from ops.sim import ledger, rest
from ops.sim.clock import SimClock
from ops.sim.engine import Engine
from ops.sim.faults import FaultController, RestFaults, fail_error
from ops.sim.market import Market
from ops.sim.stream import StreamHub
from ops.sim.wire import ApiError, unauthorized

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
_SLASHES = re.compile(r"/{2,}")


@dataclass
class SimParts:
    """Everything a request handler may touch; owned by the Simulator."""

    engine: Engine
    market: Market
    clock: SimClock
    hub: StreamHub
    rest_faults: RestFaults
    faults: FaultController
    after_mutation: Callable[[], None]
    schedule_restart: Callable[[float], None]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


def _error(err: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return _json(err.status, err.body(), (headers or {}) | err.headers)


def build_app(parts: SimParts) -> web.Application:
    async def dispatch(request: web.Request) -> web.StreamResponse:
        path = _SLASHES.sub("/", request.path)
        if len(path) > 1:
            path = path.rstrip("/")
        if path == "/stream":
            return await parts.hub.handle(request)
        if path.startswith("/_sim/"):
            return await _admin(parts, request, path)
        return await _rest(parts, request, path)

    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def _rest(parts: SimParts, request: web.Request, path: str) -> web.Response:
    key = request.headers.get("APCA-API-KEY-ID")
    st = parts.engine.authenticate(key, request.headers.get("APCA-API-SECRET-KEY"))
    if st is None:
        return _error(unauthorized())
    rf = parts.rest_faults
    limited = rf.count(st.spec.key_id)
    headers = rf.rate_headers(st.spec.key_id)
    if limited is not None:
        log.info("rate limit exceeded for %s", st.spec.name)
        return _error(limited)
    if rf.latency_s > 0:
        await asyncio.sleep(rf.latency_s)
    method = request.method.upper()
    fail = rf.take(rf.fails, method, path)
    exhausted = headers | {"X-Ratelimit-Remaining": "0"}
    hang = rf.take(rf.hangs, method, path)
    if hang is not None and not hang.after_processing:
        log.info("fault: hanging %s %s", method, path)
        await rf.hang(hang)
    if fail is not None and not fail.after_processing:
        log.info("fault: answering %s to %s %s", fail.status, method, path)
        return _error(fail_error(fail.status, exhausted if fail.status == 429 else None))
    try:
        handler, params = rest.resolve(method, path)
        ctx = rest.Ctx(request, st, params, request.query, parts.engine, parts.market,
                       parts.clock)
        status, body = await handler(ctx)
        response = _json(status, body, headers)
    except ApiError as err:
        response = _error(err, headers)
    if method != "GET":
        parts.after_mutation()
    if hang is not None and hang.after_processing:
        await rf.hang(hang)
    if fail is not None and fail.after_processing:
        log.info("fault: answering %s to %s %s after processing", fail.status, method, path)
        return _error(fail_error(fail.status, exhausted if fail.status == 429 else None))
    return response


async def _admin(parts: SimParts, request: web.Request, path: str) -> web.Response:
    if request.remote not in LOOPBACK:
        return _json(403, {"message": "simulator admin endpoints are loopback-only"})
    try:
        if path == "/_sim/state" and request.method == "GET":
            return _json(200, state_dump(parts))
        if path == "/_sim/faults" and request.method == "POST":
            return _json(200, await _fault_action(parts, await _admin_body(request)))
        if path == "/_sim/market" and request.method == "POST":
            return _json(200, _market_action(parts, await _admin_body(request)))
    except (ValueError, TypeError, KeyError) as exc:
        return _json(400, {"message": str(exc)})
    except ApiError as err:
        return _error(err)
    return _json(404, {"message": f"unknown admin endpoint {request.method} {path}"})


async def _admin_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise ValueError("admin body must be a JSON object") from None
    if not isinstance(body, dict) or not isinstance(body.get("action"), str):
        raise ValueError('admin body must be a JSON object with a string "action"')
    return body


async def _fault_action(parts: SimParts, body: dict[str, Any]) -> dict[str, Any]:
    action = body.pop("action")
    if action not in FaultController.ACTIONS:
        raise ValueError(f"unknown fault action {action!r}; known: "
                         f"{', '.join(FaultController.ACTIONS)}")
    if action == "restart":
        # Restarting from inside a request of the server being stopped would wait on
        # ourselves: answer first, restart in the background.
        parts.schedule_restart(float(body.get("down_s", 0.0)))
        return {"ok": True, "result": "restart scheduled"}
    method: Callable[..., Any] = getattr(parts.faults, action)
    result = method(**body)
    if inspect.isawaitable(result):
        result = await result
    return {"ok": True, "result": result}


def _market_action(parts: SimParts, body: dict[str, Any]) -> dict[str, Any]:
    action = body["action"]
    if action == "step":
        for _ in range(int(body.get("n", 1))):
            parts.market.step()
    elif action == "set_price":
        try:
            price = Decimal(str(body["price"]))
        except InvalidOperation:
            raise ValueError(f"invalid price {body['price']!r}") from None
        parts.market.set_price(str(body["symbol"]).upper(), price)
        parts.engine.process()
    else:
        raise ValueError(f"unknown market action {action!r}; known: step, set_price")
    parts.after_mutation()
    return {"ok": True, "steps": parts.market.steps}


def state_dump(parts: SimParts) -> dict[str, Any]:
    """Accounts, orders, positions, activities and fault state (no secrets)."""
    accounts = {}
    for name, st in parts.engine.states.items():
        accounts[name] = {
            "account_number": st.spec.account_number,
            "key_id": st.spec.key_id,
            "account": ledger.account_wire(st, parts.market),
            "positions": [ledger.position_wire(st, parts.market, p)
                          for p in st.positions.values()],
            "orders": [o.wire() for o in sorted(st.orders.values(), key=lambda o: o.seq)],
            # Ground truth for tests: every FILL activity (order_id, cum_qty, qty, price,
            # transaction_time). There is no execution id to show: the simulator keeps no
            # link between an activity and the stream's execution_id (none is documented).
            "activities": [dict(a) for a in st.activities],
            "stream_connected": parts.hub.connected(name),
        }
    return {
        "clock": parts.clock.clock_json() | {"mode": parts.clock.mode},
        "market": {"steps": parts.market.steps,
                   "prices": {s: str(p) for s, p in parts.market.to_json()["prices"].items()}},
        "faults": parts.faults.state(),
        "accounts": accounts,
    }

