"""revoke_key: the broker rejects an account's API key (rotated or revoked) until lifted:
REST 401 `request is not authorized`, stream authentication refused; other accounts and
already-open sockets go on; via Python and the admin endpoint; lifted by clear()."""

from __future__ import annotations

import json

import aiohttp
import pytest
import websockets
from alpaca.common.exceptions import APIError

from ops.sim import Simulator

from .conftest import listening_ws, trading


async def test_a_revoked_key_is_refused_by_rest_and_stream_until_restored(
    sim: Simulator
) -> None:
    c = trading(sim)
    assert (await c.account()).account_number == "PASIM0000001"
    async with aiohttp.ClientSession() as s, s.post(
        sim.rest_url + "/_sim/faults", json={"action": "revoke_key", "account": "large"}
    ) as resp:
        assert resp.status == 200
    assert sim.faults.state()["revoked_keys"] == ["large"]
    with pytest.raises(APIError) as err:
        await c.account()
    assert err.value.status_code == 401 and "not authorized" in str(err.value)
    spec = sim.account("large")
    async with websockets.connect(sim.stream_url) as ws:
        await ws.send(json.dumps({"action": "authenticate",
                                  "data": {"key_id": spec.key_id, "secret_key": spec.secret}}))
        reply = json.loads(await ws.recv())
        assert reply["data"]["status"] == "unauthorized"
    assert (await trading(sim, "tiny").account()).account_number == "PASIM0000002"
    sim.faults.revoke_key("large", on=False)
    assert (await c.account()).account_number == "PASIM0000001"
    async with listening_ws(sim):
        pass
    sim.faults.revoke_key("large")
    sim.faults.clear()
    assert sim.faults.state()["revoked_keys"] == []
    with pytest.raises(ValueError, match="unknown simulator account"):
        sim.faults.revoke_key("nope")
