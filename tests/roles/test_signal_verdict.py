"""`ops signal add` waits for a real dispatcher's verdict (`python -m ops run dispatcher`
against the simulator) and prints it: submitted with the broker's order id (exit 0), rejected
by a risk gate with the reason the dispatcher stored (exit 1), expired (exit 1). `ops signal
list` and `show` then read the same reasons and order from the signals table."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from ops.roles.dispatcher import RECONCILE_KEY
from ops.store.postgres import connect
from tests.support import eventually

from .conftest import REPO, RoleEnv, RoleProc


async def ops(role_env: RoleEnv, *args: str) -> tuple[int, str, str]:
    """`python -m ops ARGS` without blocking the loop the simulator serves from."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops", *args, env=role_env.subprocess_env(), cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def fetchrow(url: str, sql: str, *args: Any) -> Any:
    conn = await connect(url)
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def reconciled(role_env: RoleEnv, proc: RoleProc) -> None:
    async def done() -> bool:
        assert proc.proc.returncode is None, proc.log_text()
        row = await fetchrow(role_env.pg_url, "SELECT value FROM controls WHERE account = "
                             "'tiny' AND key = $1", RECONCILE_KEY)
        return row is not None and dict(row["value"]).get("state") == "reconciled"

    await eventually(done, "tiny-dispatcher reconciled", timeout_s=60)


def signal_id(stdout: str) -> int:
    first = stdout.splitlines()[0]
    assert first.startswith("signal "), stdout
    return int(first.split()[1].rstrip(":"))


async def test_add_prints_the_dispatchers_verdict(role_env: RoleEnv) -> None:
    dispatcher = await role_env.spawn("dispatcher", "tiny")
    await reconciled(role_env, dispatcher)
    add = ("signal", "add", "--account", "tiny", "--side", "buy", "--wait", "60")

    code, out, err = await ops(role_env, *add, "--symbol", "NVDA", "--qty", "1")
    assert code == 0, (out, err, dispatcher.log_text())
    sid = signal_id(out)
    assert out.splitlines()[0] == f"signal {sid}: buy 1 NVDA for tiny"
    row = await fetchrow(role_env.pg_url, "SELECT status, broker_order_id FROM signals "
                         "WHERE id = $1", sid)
    assert row["status"] == "submitted" and row["broker_order_id"]
    assert out.splitlines()[1].startswith("submitted after "), out
    assert f"broker order {row['broker_order_id']}" in out
    assert row["broker_order_id"] in {o.id for o in role_env.sim.engine.states["tiny"]
                                      .orders.values()}

    # 500 AAPL (~95,000) passes every up-front check (max_qty 1000) but not the exposure
    # gate: the dispatcher's reason, as it stored it.
    code, out, err = await ops(role_env, *add, "--symbol", "AAPL", "--qty", "500")
    assert code == 1, (out, err, dispatcher.log_text())
    big = signal_id(out)
    reason = (await fetchrow(role_env.pg_url, "SELECT reason FROM signals WHERE id = $1",
                             big))["reason"]
    assert reason.startswith("max_order_notional: order notional ")
    assert "exceeds max_order_notional 50,000.00" in reason
    assert out.splitlines()[1].startswith("rejected after ") and out.rstrip().endswith(reason)

    code, out, err = await ops(role_env, *add, "--symbol", "AMD", "--qty", "1",
                               "--expires-in", "0.001")
    assert code == 1, (out, err, dispatcher.log_text())
    gone = signal_id(out)
    assert out.splitlines()[1].startswith("expired after "), out
    assert "expiry: signal expired at " in out

    code, out, err = await ops(role_env, "signal", "list", "--account", "tiny", "--json")
    assert code == 0, err
    listed = {s["id"]: s for s in json.loads(out)["signals"]}
    assert [listed[i]["state"] for i in (sid, big, gone)] == ["submitted", "rejected",
                                                              "expired"]
    assert listed[big]["reason"] == reason and listed[sid]["order"] is not None
    code, out, err = await ops(role_env, "signal", "show", str(big))
    assert code == 0 and f"reason:\n  {reason}" in out, (out, err)
    assert await dispatcher.stop() == 0, dispatcher.log_text()
