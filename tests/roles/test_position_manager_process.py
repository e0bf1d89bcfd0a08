"""The position-manager role as a real process (`python -m ops run position-manager
--account large`): the runtime wires build(ctx) to a ticker; positions reach Postgres,
an exit rule from the config file fires at the simulator exactly once, and a stop is
clean (exit 0)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

from ops.broker import Broker, BrokerEndpoints
from ops.core.models import OrderRequest, Side
from ops.roles.position_manager import exit_prefix
from ops.runtime.credentials import Credentials
from ops.store import Store
from tests.roles.conftest import RoleEnv, config_text
from tests.support import eventually

EXITS = """
[accounts.large.exits]
take_profit_pct = 5
"""


async def test_process_syncs_positions_and_takes_profit_once(role_env: RoleEnv) -> None:
    sim = role_env.sim
    # TOML: the exits table of large must follow large's other tables; config_text puts
    # `extra` at the end, which is still valid (a table may be defined anywhere once).
    # The position is opened here by hand (no stream stores its fill as the pipeline's),
    # so it is external: `manage_external = true` makes it the pipeline's to exit.
    text = config_text(sim, position_manager_s=0.5, extra=EXITS)
    role_env.write_config_text(text.replace(
        "[accounts.large.risk]", "manage_external = true\n\n[accounts.large.risk]", 1))
    spec = sim.account("large")
    broker = Broker(BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url),
                    Credentials("t", "large", spec.key_id, spec.secret))
    res = await broker.submit_order(OrderRequest(
        symbol="AAPL", side=Side.BUY, qty=Decimal(7),
        client_order_id=f"test-{uuid.uuid4().hex[:12]}"))
    assert res.outcome == "accepted"
    proc = await role_env.spawn("position-manager", "large")
    store = await Store.open(role_env.env, process="test-reader")
    try:
        async def synced() -> bool:
            snap = await store.positions("large")
            held = [(p.position.symbol, p.position.qty) for p in snap.rows]
            return held == [("AAPL", Decimal(7))]
        await eventually(synced, "AAPL 7 synced into positions", timeout_s=30)

        async def tracked() -> bool:
            n = await store.pool.fetchval(
                "SELECT count(*) FROM position_exit_state WHERE account = 'large'")
            return bool(n)
        await eventually(tracked, "exit state of AAPL persisted", timeout_s=30)

        pos = await broker.get_position("AAPL")
        assert pos is not None
        sim.market.set_price("AAPL", pos.avg_entry_price * Decimal("1.2"))

        async def exited() -> bool:
            return await broker.get_position("AAPL") is None
        await eventually(exited, "take-profit exit filled", timeout_s=30)

        async def forgotten() -> bool:
            n = await store.pool.fetchval(
                "SELECT count(*) FROM position_exit_state WHERE account = 'large'")
            return bool(n == 0)
        await eventually(forgotten, "exit state dropped after the close", timeout_s=30)
        exits = [o for o in sim.engine.states["large"].orders.values()
                 if o.client_order_id.startswith(exit_prefix("large"))]
        assert len(exits) == 1 and exits[0].client_order_id.endswith("-take_profit")
        row = await store.pool.fetchrow("SELECT rule, outcome FROM exit_decisions")
        assert (row["rule"], row["outcome"]) == ("take_profit", "accepted")

        async def counted() -> bool:
            raw = await store.pool.fetchval(
                "SELECT counters FROM heartbeats WHERE process = 'large-position-manager'")
            c = json.loads(raw) if isinstance(raw, str) else (raw or {})
            return bool(c.get("position-manager.exits_submitted") == 1
                        and c.get("position-manager.syncs", 0) >= 2)
        await eventually(counted, "heartbeat counters show the sync and the one exit")
    finally:
        await store.close()
        broker.close()
    assert await proc.stop() == 0, proc.log_text()
