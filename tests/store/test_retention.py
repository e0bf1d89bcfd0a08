"""History retention (ops/store/retention.py) against real Postgres: old run-ledger,
position-history and account-history rows go, in batches; recent rows and the audit tables
stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]
import pytest

from ops.store.postgres import connect
from ops.store.retention import Pruner

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def _seed(conn: asyncpg.Connection, old: int, recent: int) -> None:
    ages = [timedelta(days=40 + i / 100) for i in range(old)] + \
           [timedelta(days=i / 100) for i in range(recent)]
    for i, age in enumerate(ages):
        t = NOW - age
        await conn.execute(
            "INSERT INTO runs (slot_id, process, role, slot_time, scheduled_at, outcome) "
            "VALUES ($1, 'tiny-dispatcher', 'dispatcher', $2, $2, 'ok')", f"s{i}", t)
        await conn.execute(
            "INSERT INTO position_history (account, symbol, synced_at, qty) "
            "VALUES ('tiny', 'AAPL', $1, 1)", t)
        await conn.execute(
            "INSERT INTO account_history (account, minute, as_of, equity) "
            "VALUES ('tiny', $1, $1, 1000)", t)
    await conn.execute(
        "INSERT INTO order_events (account, event_key, order_id, symbol, event, ts, raw) "
        "VALUES ('tiny', 'k1', 'o1', 'AAPL', 'fill', $1, '{}')", NOW - timedelta(days=400))


async def _count(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def test_old_history_is_pruned_in_batches_and_recent_rows_stay(pg_url: str) -> None:
    conn = await connect(pg_url)
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2)
    try:
        await _seed(conn, old=7, recent=4)
        clock = [0.0]
        pruner = Pruner(pool, timedelta(days=30), batch=3, every_s=3600,
                        monotonic=lambda: clock[0])
        # Batches of 3 per table per call; calls again at once while rows remain.
        assert [await pruner.step(NOW) for _ in range(3)] == [9, 9, 3]
        assert pruner.deleted == {"runs": 7, "position_history": 7, "account_history": 7}
        assert await _count(conn, "runs") == 4
        assert await _count(conn, "position_history") == 4
        assert await _count(conn, "account_history") == 4
        oldest = await conn.fetchval("SELECT min(slot_time) FROM runs")
        assert oldest >= NOW - timedelta(days=30)
        # The audit trail is never pruned, however old.
        assert await _count(conn, "order_events") == 1
        # Nothing left: it rests until `every_s` has passed.
        await conn.execute(
            "INSERT INTO runs (slot_id, process, role, slot_time, scheduled_at, outcome) "
            "VALUES ('late', 'x', 'dispatcher', $1, $1, 'ok')", NOW - timedelta(days=31))
        assert await pruner.step(NOW) == 0
        clock[0] += 3600
        assert await pruner.step(NOW) == 1
    finally:
        await pool.close()
        await conn.close()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="keep"):
        Pruner(None, timedelta(0))
