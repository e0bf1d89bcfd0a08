"""The stream role as a real `python -m ops run stream` process: killed with SIGKILL while
fills happen, a fresh process recovers them with its connect fill check, each execution
stored once."""

from __future__ import annotations

import asyncio
import signal

from ops.broker import Broker
from tests.roles.conftest import RoleEnv, order_request
from tests.roles.test_stream import db_fills, fills_match, sim_fills
from tests.support import eventually


async def test_kill_9_while_fills_happen_then_restart(
    role_env: RoleEnv, large_broker: Broker
) -> None:
    sim = role_env.sim
    first = await role_env.spawn("stream", "large")
    await sim.wait_stream("large", within_s=30)
    await eventually(lambda: "fill check (connect" in first.log_text(), "connect fill check", 30)
    assert (await large_broker.submit_order(order_request("AAPL", 150))).outcome == "accepted"
    await eventually(lambda: len(sim_fills(sim)) == 2, "two executions at the broker")
    await eventually(lambda: fills_match(role_env), "stream-delivered fills stored")

    # Mute, trade, kill -9 mid-way: nothing of this reaches the dead process.
    sim.faults.mute("large")
    assert (await large_broker.submit_order(order_request("AAPL", 250))).outcome == "accepted"
    first.kill()
    assert await first.proc.wait() == -signal.SIGKILL
    await eventually(lambda: len(sim_fills(sim)) == 5, "three more executions at the broker")
    sim.faults.unmute("large", deliver=False)
    assert not await fills_match(role_env)

    second = await role_env.spawn("stream", "large")
    await eventually(lambda: fills_match(role_env), "every fill stored after restart", 30)
    rows = await db_fills(role_env.pg_url)
    assert len(rows) == len(set(rows)) == 5
    assert await asyncio.wait_for(second.stop(), 30) == 0
