"""The dispatcher as a real `python -m ops run dispatcher --account tiny` process.

Invariant 2 across a crash: the test-only fault point OPS_FAULT=dispatcher.after_submit
makes the process SIGKILL itself after the broker accepted the order and before anything
was recorded; the next process life reconciles: the signal is settled as submitted with
the broker's order id, and the broker holds exactly one order for its client_order_id.
The tick interval is an hour, so the order can only reach the broker through NOTIFY.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from ops.core.risk import signal_client_order_id
from ops.roles.dispatcher import FAULT_AFTER_SUBMIT, FAULT_ENV, RECONCILE_KEY
from ops.store.postgres import connect
from tests.support import eventually

from .conftest import REPO, RoleEnv, RoleProc


async def spawn(role_env: RoleEnv, account: str, **extra_env: str) -> RoleProc:
    environ = role_env.subprocess_env()  # drops the test runner's own OPS_* variables
    environ.update(extra_env)
    log_path = role_env.home / f"dispatcher-{account}-{len(role_env.procs)}.log"
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ops", "run", "dispatcher", "--account", account,
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=environ, cwd=str(REPO))
    rp = RoleProc(proc, log_path)
    role_env.procs.append(rp)
    return rp


async def wait(pred: Any, what: str, proc: RoleProc, timeout_s: float = 30.0) -> None:
    """`eventually`, with the process's output in the failure message."""
    async def check() -> bool:
        if proc.proc.returncode is not None:
            raise AssertionError(f"process exited with {proc.proc.returncode}")
        result = pred()
        return bool(result if isinstance(result, bool) else await result)

    try:
        await eventually(check, what, timeout_s=timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {proc.log_path.name} ---\n{proc.log_text()}") from None


async def fetch(url: str, sql: str, *args: Any) -> Any:
    conn = await connect(url)
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()


async def reconciled_state(url: str, account: str) -> dict[str, Any] | None:
    row = await fetch(url, "SELECT value FROM controls WHERE account = $1 AND key = $2",
                      account, RECONCILE_KEY)
    return None if row is None else dict(row["value"])


async def test_kill_9_between_submit_and_record_never_doubles(role_env: RoleEnv) -> None:
    # A tick an hour apart (the watchdog's gap bound raised to match, as config requires).
    role_env.write_config(dispatcher_s=3600.0,
                          extra="[watchdog.gap_bounds_s]\ndispatcher = 7200\n")
    url, sim = role_env.pg_url, role_env.sim
    first = await spawn(role_env, "tiny", **{FAULT_ENV: FAULT_AFTER_SUBMIT})

    async def reconciled_after(ts: str | None) -> bool:
        state = await reconciled_state(url, "tiny")
        return (state is not None and state["state"] == "reconciled"
                and state.get("at") != ts)

    await wait(lambda: reconciled_after(None), "first life reconciled", first)
    first_at = (await reconciled_state(url, "tiny") or {})["at"]

    # Plain SQL insert: the trigger NOTIFYs the dispatcher.
    row = await fetch(url, "INSERT INTO signals (account, symbol, side, qty) "
                           "VALUES ('tiny', 'NVDA', 'buy', 1) RETURNING id")
    sid = int(row["id"])
    cid = signal_client_order_id("tiny", sid)
    code = await asyncio.wait_for(first.proc.wait(), 30)
    assert code == -signal.SIGKILL, first.log_text()
    st = sim.engine.states["tiny"]
    assert [o.client_order_id for o in st.orders.values()] == [cid]
    sig = await fetch(url, "SELECT status, broker_order_id FROM signals WHERE id = $1", sid)
    assert sig["status"] == "claimed" and sig["broker_order_id"] is None

    second = await spawn(role_env, "tiny")

    async def settled() -> bool:
        r = await fetch(url, "SELECT status FROM signals WHERE id = $1", sid)
        return bool(r["status"] == "submitted")

    await wait(lambda: reconciled_after(first_at), "second life reconciled", second)
    await wait(settled, "signal settled as submitted", second)
    order_id = st.by_client_id[cid]
    sig = await fetch(url, "SELECT status, broker_order_id, reason FROM signals WHERE id = $1",
                      sid)
    assert sig["broker_order_id"] == order_id, dict(sig)
    assert [o.client_order_id for o in st.orders.values()] == [cid]
    state = await reconciled_state(url, "tiny")
    assert state is not None and state["settled_submitted"] == 1
    stored = await fetch(url, "SELECT signal_id FROM orders WHERE id = $1", order_id)
    assert stored is not None and stored["signal_id"] == sid

    # The second life is inert to the fault variable's absence and dispatches normally.
    row = await fetch(url, "INSERT INTO signals (account, symbol, side, qty) "
                           "VALUES ('tiny', 'AMD', 'buy', 1) RETURNING id")
    cid2 = signal_client_order_id("tiny", int(row["id"]))
    await wait(lambda: cid2 in st.by_client_id, "second signal at the broker via NOTIFY",
               second)
    assert await second.stop() == 0, second.log_text()
    assert len(st.orders) == 2
