"""Hostile trade-stream frames against the real stream role process.

`python -m ops run stream --account large` runs against the simulator; between real
orders and fills the simulator sends frames meant to break a parser: not JSON, NUL bytes,
JSON nested past the decoder's recursion limit, a `stream` that is a list (unhashable),
envelopes with missing / wrong-typed fields, an unknown event. Afterwards: the same
process is still running and never reconnected because of them (no crash loop), each
distinct bad frame is an incident in Postgres, the unknown event is stored verbatim,
and every fill the simulator made is stored exactly once.
"""

from __future__ import annotations

from decimal import Decimal

from ops.broker import Broker
from ops.core.models import OrderRequest, Side
from tests.roles.conftest import RoleEnv
from tests.roles.test_stream import fills_match, query
from tests.support import eventually

HOSTILE = [
    '{"stream":"trade_updates",',  # truncated JSON
    'a\x00b{"stream"',  # NUL: Postgres text refuses it
    "[" * 5000 + "]" * 5000,  # past json's recursion limit
    '{"stream": ["trade_updates"]}',  # unhashable stream name
    '{"stream": "trade_updates", "data": []}',
    '{"stream": "trade_updates", "data": {"event": "fill"}}',  # no order
    '{"stream": "trade_updates", "data": {"event": "fill", "order": {"id": "x", '
    '"client_order_id": "c", "status": "filled", "created_at": "yesterday"}}}',
    '{"stream": "trade_updates", "data": {"event": "fill", "price": "NaN", "order": {'
    '"id": "y", "client_order_id": "c", "status": "filled", '
    '"created_at": "2026-11-24T15:00:00Z"}}}',
    '"just a string"',
    "null",
    '{"stream": "bogus"}',
]


def connects(text: str) -> int:
    return text.count("connected (connect #")


async def test_hostile_frames_never_stop_the_stream(role_env: RoleEnv,
                                                    large_broker: Broker) -> None:
    sim, url = role_env.sim, role_env.pg_url
    proc = await role_env.spawn("stream", "large")
    await sim.wait_stream("large", within_s=30)
    await eventually(lambda: connects(proc.log_text()) == 1, "connected once", 30)

    first = await large_broker.submit_order(OrderRequest("NVDA", Side.BUY, "hf-1",
                                                         qty=Decimal(250)))
    assert first.order is not None
    for payload in HOSTILE:
        sim.faults.emit_malformed_frame("large", payload)
    sim.faults.emit_unknown_event("large", "order_frozen", first.order.id)
    second = await large_broker.submit_order(OrderRequest("AAPL", Side.BUY, "hf-2",
                                                          qty=Decimal(150)))
    assert second.order is not None

    async def all_recorded() -> bool:
        inc = await query(url, "SELECT count(*) AS n FROM incidents "
                               "WHERE kind = 'stream-bad-message'")
        return int(str(inc[0]["n"])) == len(HOSTILE) and await fills_match(role_env)
    await eventually(all_recorded, "every bad frame an incident, every fill stored", 60)

    frozen = await query(url, "SELECT count(*) AS n FROM order_events WHERE "
                              "event = 'order_frozen' AND order_id = $1", first.order.id)
    assert frozen[0]["n"] == 1
    dup = await query(url, "SELECT execution_id FROM order_events WHERE execution_id IS NOT "
                           "NULL GROUP BY execution_id HAVING count(*) > 1")
    assert dup == []
    assert proc.proc.returncode is None, proc.log_text()[-3000:]
    assert connects(proc.log_text()) == 1, "a hostile frame forced a reconnect"
    assert "Traceback" not in proc.log_text()
    details = [str(r["detail"]) for r in await query(
        url, "SELECT detail FROM incidents WHERE kind = 'stream-bad-message'")]
    assert any("\\x00" in d for d in details), details  # shown escaped, stored
    assert await proc.stop() == 0
