"""The account series (migration 0019) in real Postgres: written by the same op as the
latest summary, one row per account and minute holding that minute's newest summary, and
a replay of an older write (the outage buffer's, a crash's) never moves it back."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from ops.store import Store
from ops.store.ops import Op, apply_ops, enc
from tests.store.factories import T0, account_info


async def test_one_row_a_minute_newest_wins_and_replays_are_no_ops(ops_store: Store) -> None:
    first = T0 + timedelta(seconds=10)
    await ops_store.record_account("large", account_info("100"), first)
    await ops_store.record_account("large", account_info("101"), first + timedelta(seconds=30))
    await ops_store.record_account("large", account_info("102"), first + timedelta(minutes=1))
    points = await ops_store.account_history(T0, T0 + timedelta(minutes=5))
    assert [(p.as_of, p.equity) for p in points] == [
        (first + timedelta(seconds=30), Decimal("101")),
        (first + timedelta(minutes=1), Decimal("102"))]
    assert points[0].last_equity == Decimal("99000")

    # The first write again, as a replay would apply it: the newer summary stays.
    rows = await ops_store.pool.fetch(
        "SELECT minute, equity FROM account_history ORDER BY minute")
    async with ops_store.pool.acquire() as conn, conn.transaction():
        await apply_ops(conn, [Op("account", enc({
            "account": "large", "account_number": "PA123", "equity": Decimal("100"),
            "cash": Decimal("1000"), "buying_power": Decimal("2000"),
            "last_equity": Decimal("99000"), "as_of": first}))])
    assert await ops_store.pool.fetch(
        "SELECT minute, equity FROM account_history ORDER BY minute") == rows
    assert [r["minute"] for r in rows] == [T0, T0 + timedelta(minutes=1)]
    # Outside the window asked for: nothing.
    assert await ops_store.account_history(T0 + timedelta(hours=1),
                                           T0 + timedelta(hours=2)) == []
