"""The `refuse_next_orders` fault: orders refused at the REST level with a chosen status,
code and message (docs/broker-protocol.md sections 3.7a and 5), for submits and position closes;
narrowed by account/side/symbol, counted down, shown in state(), lifted by clear(), via
Python and the admin endpoint, and seen by alpaca-py as Alpaca's own refusals are.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from alpaca.common.exceptions import APIError

from ops.sim import Simulator

from .conftest import trading
from .test_faults import buy, rest

PDT = {"code": 40310100, "message": "trade denied due to pattern day trading protection"}


async def admin(sim: Simulator, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        sim.rest_url + "/_sim/faults", json=body
    ) as resp:
        return resp.status, await resp.json()


def order_body(symbol: str = "AAPL", side: str = "buy", qty: int = 1) -> dict[str, Any]:
    return {"symbol": symbol, "qty": qty, "side": side, "type": "market",
            "time_in_force": "day"}


async def test_default_is_the_pdt_refusal_and_nothing_is_created(sim: Simulator) -> None:
    sim.faults.refuse_next_orders()
    before = len(sim.engine.states["large"].orders)
    status, body, _ = await rest(sim, "POST", "/v2/orders", json=order_body())
    assert (status, body) == (403, PDT)
    assert len(sim.engine.states["large"].orders) == before
    # n=1: the next one goes through.
    status, body, _ = await rest(sim, "POST", "/v2/orders", json=order_body())
    assert status == 200 and body["status"] in ("new", "filled", "accepted")
    assert sim.faults.state()["refuse_next_orders"] == []


async def test_narrowed_by_account_side_and_symbol(sim: Simulator) -> None:
    sim.faults.refuse_next_orders(n=5, account="tiny", side="sell", symbol="spy")
    assert (await rest(sim, "POST", "/v2/orders", json=order_body("SPY")))[0] == 200
    assert (await rest(sim, "POST", "/v2/orders", json=order_body("SPY"), name="tiny"))[0] == 200
    # tiny now holds SPY; its sell is refused, large's is not concerned.
    status, body, _ = await rest(sim, "POST", "/v2/orders",
                                 json=order_body("SPY", "sell"), name="tiny")
    assert (status, body) == (403, PDT)
    status, _, _ = await rest(sim, "POST", "/v2/orders", json=order_body("SPY", "sell"))
    assert status == 200
    [rule] = sim.faults.state()["refuse_next_orders"]
    assert rule["remaining"] == 4 and rule["account"] == "tiny" and rule["symbol"] == "SPY"


async def test_close_position_honours_it_with_the_closing_side(sim: Simulator) -> None:
    assert (await rest(sim, "POST", "/v2/orders", json=order_body("MSFT", qty=2)))[0] == 200
    sim.faults.refuse_next_orders(n=1, side="buy")  # a close of a long sells: not matched
    sim.faults.refuse_next_orders(n=1, status=401, code=40110000,
                                  message="request is not authorized", side="sell")
    status, body, _ = await rest(sim, "DELETE", "/v2/positions/MSFT")
    assert (status, body) == (401, {"code": 40110000, "message": "request is not authorized"})
    assert sim.engine.states["large"].positions["MSFT"].qty == 2
    assert [r["side"] for r in sim.faults.state()["refuse_next_orders"]] == ["buy"]
    sim.faults.clear()
    assert sim.faults.state()["refuse_next_orders"] == []
    status, body, _ = await rest(sim, "DELETE", "/v2/positions/MSFT")
    assert status == 200 and body["side"] == "sell"


async def test_close_all_reports_the_refusal_per_symbol(sim: Simulator) -> None:
    assert (await rest(sim, "POST", "/v2/orders", json=order_body("MSFT")))[0] == 200
    sim.faults.refuse_next_orders(n=1, symbol="MSFT", status=403, code=40310000,
                                  message="insufficient qty available for order "
                                          "(requested: 1, available: 0)",
                                  extra={"available": "0", "held_for_orders": "1"})
    status, body, _ = await rest(sim, "DELETE", "/v2/positions")
    assert status == 207
    [item] = body
    assert item["status"] == 403 and item["body"]["code"] == 40310000
    assert item["body"]["held_for_orders"] == "1"


async def test_admin_action_and_validation(sim: Simulator) -> None:
    status, body = await admin(sim, {"action": "refuse_next_orders", "n": 2,
                                     "account": "large"})
    assert status == 200 and body["result"]["remaining"] == 2
    assert body["result"]["code"] == 40310100
    cases: list[tuple[dict[str, Any], str]] = [
        ({"n": 0}, "n must be"), ({"status": 200}, "status must be"),
        ({"side": "both"}, "side must be"), ({"account": "nope"}, "unknown")]
    for bad, needle in cases:
        status, body = await admin(sim, {"action": "refuse_next_orders", **bad})
        assert status == 400 and needle in body["message"], (bad, body)
    state = sim.faults.state()
    assert len(state["refuse_next_orders"]) == 1
    json.dumps(state)  # the state dump stays JSON


async def test_alpaca_py_sees_alpacas_error(sim: Simulator) -> None:
    sim.faults.refuse_next_orders()
    with pytest.raises(APIError) as err:
        await trading(sim).submit(buy("AAPL"))
    assert err.value.status_code == 403
    assert err.value.code == 40310100
    assert "pattern day trading" in str(err.value.message)
