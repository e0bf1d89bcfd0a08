"""Invariant 7 with real processes: one active instance per (account, role).

- Two `ops run dispatcher --account large` processes at once while signals keep arriving:
  exactly one trades (the other logs that it waits, naming the holder, and decides
  nothing); SIGKILL of the active one mid-stream -> the waiting one takes the Postgres
  advisory lock and goes on; every signal is decided and none has two broker orders.
- Every other role kind (position-manager, signal-engine; the stream is proven in
  tests/roles/test_runtime_process.py): the second copy waits, and takes over when the
  first stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from datetime import UTC, datetime

import pytest

from ops.core.risk import signal_client_order_id
from ops.store.postgres import connect
from tests.roles.conftest import RoleEnv, RoleProc
from tests.support import eventually

pytestmark = pytest.mark.system  # two copies of a role process at once

WAITS = "another instance is active; this one waits"


def acquired(proc: RoleProc, name: str) -> bool:
    return f"singleton lock {name} acquired" in proc.log_text()


def decided_lines(proc: RoleProc) -> list[str]:
    """The dispatcher's per-signal decision log lines ("signal N buy 1 NVDA submitted")."""
    return [ln for ln in proc.log_text().splitlines()
            if " signal " in ln and (" submitted" in ln or " rejected" in ln)]


async def insert_signals(url: str, n: int, every_s: float, done: list[int]) -> None:
    conn = await connect(url)
    try:
        for i in range(n):
            sid = await conn.fetchval(
                """INSERT INTO signals (account, symbol, side, qty, created_at, strategy)
                   VALUES ('large', $1, 'buy', 1, $2, 'singleton-test') RETURNING id""",
                ("NVDA", "AAPL", "MSFT")[i % 3], datetime.now(UTC))
            done.append(int(sid))
            await asyncio.sleep(every_s)
    finally:
        await conn.close()


async def statuses(url: str) -> Counter[str]:
    conn = await connect(url)
    try:
        rows = await conn.fetch("SELECT status FROM signals")
    finally:
        await conn.close()
    return Counter(str(r["status"]) for r in rows)


async def test_two_dispatchers_one_trades_the_other_takes_over(role_env: RoleEnv) -> None:
    url, sim = role_env.pg_url, role_env.sim
    role_env.write_config(dispatcher_s=0.5)
    first = await role_env.spawn("dispatcher", "large")
    await eventually(lambda: acquired(first, "large:dispatcher"), "first holds the lock", 30)
    second = await role_env.spawn("dispatcher", "large")
    await eventually(lambda: WAITS in second.log_text(), "second waits", 30)
    assert f"pid={first.pid}" in second.log_text()  # it names the holder

    ids: list[int] = []
    feeder = asyncio.create_task(insert_signals(url, 30, 0.1, ids))
    try:
        await eventually(lambda: len(decided_lines(first)) >= 8, "first trades", 30)
        assert decided_lines(second) == [] and not acquired(second, "large:dispatcher")
        first.kill()  # mid-stream: signals keep arriving
        assert await first.proc.wait() == -signal.SIGKILL
        await eventually(lambda: acquired(second, "large:dispatcher"), "second takes over", 30)
        await feeder
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder

    # A signal for an account the config lacks: no dispatcher owns it, the running one
    # (as build() wires it) rejects it with a reason instead of leaving it pending forever.
    conn = await connect(url)
    try:
        ghost = await conn.fetchval("INSERT INTO signals (account, symbol, side, qty) "
                                    "VALUES ('ghost', 'NVDA', 'buy', 1) RETURNING id")
    finally:
        await conn.close()
    ids.append(int(ghost))

    async def all_decided() -> bool:
        st = await statuses(url)
        return sum(st.values()) == len(ids) and not (
            st["pending"] or st["claimed"] or st["unknown"])
    await eventually(all_decided, "every signal decided", 30)
    assert len(decided_lines(second)) >= 1  # the second did trade after the takeover
    conn = await connect(url)
    try:
        reason = await conn.fetchval("SELECT reason FROM signals WHERE id = $1 AND "
                                     "status = 'rejected'", ghost)
    finally:
        await conn.close()
    assert reason == ("unknown account 'ghost': not an account in the config "
                      "(known: large, tiny)"), reason
    by_cid = Counter(o.client_order_id for o in sim.engine.states["large"].orders.values())
    doubles = {sid: by_cid[signal_client_order_id("large", sid)] for sid in ids
               if by_cid[signal_client_order_id("large", sid)] > 1}
    assert doubles == {}, f"signals with two broker orders: {doubles}"
    st = await statuses(url)
    submitted = sum(1 for sid in ids if by_cid[signal_client_order_id("large", sid)] == 1)
    assert submitted == st["submitted"], (st, submitted)
    assert await second.stop() == 0


@pytest.mark.parametrize(("role", "account", "lock"), [
    ("position-manager", "tiny", "tiny:position-manager"),
    ("signal-engine", None, "-:signal-engine"),
])
async def test_second_copy_of_each_role_waits_then_takes_over(
    role_env: RoleEnv, role: str, account: str | None, lock: str
) -> None:
    first = await role_env.spawn(role, account)
    await eventually(lambda: "singleton lock" in first.log_text() and "acquired"
                     in first.log_text(), f"first {role} holds its lock", 30)
    second = await role_env.spawn(role, account)
    await eventually(lambda: WAITS in second.log_text(), f"second {role} waits", 30)
    assert "acquired" not in second.log_text()
    assert await first.stop() == 0  # a clean stop releases the lock at once
    await eventually(lambda: "acquired" in second.log_text(), f"second {role} takes over", 30)
    assert lock in second.log_text(), second.log_text()[-2000:]
    assert await second.stop() == 0
