"""Read queries behind `ops status` (and the dashboard/watchdog): today's activity per account.

Only what `Store`'s own reads do not cover: orders and fills today, open positions counted
in Postgres, a ping, and the dashboard's feed of orders, fills and activities. These need
Postgres (there is no buffered copy of order history) and run through `Store.direct`
(`StorageUnavailable` on an outage): then `ops status` reports them as unknown and takes
everything else from `Store` reads, which fall back to the buffer. Heartbeats, last
completed runs, positions, controls and incidents come from `Store` (ops/store/store.py);
buffered rows from `Store.buffer_status()`.

"Today" is the US equity trading day: since midnight America/New_York.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

NEW_YORK = ZoneInfo("America/New_York")


def start_of_trading_day(now: datetime) -> datetime:
    """Midnight America/New_York of `now`'s New York date, as an aware UTC datetime."""
    local = now.astimezone(NEW_YORK)
    return datetime.combine(local.date(), time(0), tzinfo=NEW_YORK).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class AccountActivity:
    account: str
    orders_today: int
    fills_today: int
    open_positions: int


_ACTIVITY_SQL = """
WITH o AS (SELECT account, count(*) AS n FROM orders WHERE created_at >= $1 GROUP BY account),
     f AS (SELECT account, count(*) AS n FROM fills WHERE ts >= $1 GROUP BY account),
     p AS (SELECT account, count(*) AS n FROM positions WHERE qty <> 0 GROUP BY account),
     a AS (SELECT account FROM o UNION SELECT account FROM f UNION SELECT account FROM p)
SELECT a.account, coalesce(o.n, 0) AS orders, coalesce(f.n, 0) AS fills,
       coalesce(p.n, 0) AS positions
FROM a LEFT JOIN o USING (account) LEFT JOIN f USING (account) LEFT JOIN p USING (account)
"""


async def account_activity(
    pool: asyncpg.Pool | asyncpg.Connection, now: datetime
) -> dict[str, AccountActivity]:
    """Orders created and fills received since the start of today, and open positions, per
    account that has any."""
    rows = await pool.fetch(_ACTIVITY_SQL, start_of_trading_day(now))
    return {
        r["account"]: AccountActivity(r["account"], int(r["orders"]), int(r["fills"]),
                                      int(r["positions"]))
        for r in rows
    }


async def ping(pool: asyncpg.Pool | asyncpg.Connection, timeout_s: float) -> None:
    """One round trip; raises when Postgres does not answer within `timeout_s`."""
    await pool.fetchval("SELECT 1", timeout=timeout_s)


# The newest orders, fills and applied activities, merged newest first.
_FEED_SQL = """
(SELECT 'order:' || id AS key, updated_at AS ts, account, 'order' AS kind, symbol, side,
        qty, notional, coalesce(filled_avg_price, limit_price) AS price,
        status
   FROM orders ORDER BY updated_at DESC LIMIT $1)
UNION ALL
(SELECT 'fill:' || f.account || ':' || f.event_key, f.ts, f.account, 'fill',
        coalesce(f.symbol, o.symbol, '?'), coalesce(o.side, ''), f.qty, NULL::numeric,
        f.price, f.event
   FROM fills f LEFT JOIN orders o ON o.id = f.order_id ORDER BY f.ts DESC LIMIT $1)
UNION ALL
(SELECT 'activity:' || account || ':' || activity_id, applied_at, account, 'activity',
        coalesce(symbol, '?'), '', qty_delta, NULL::numeric, price, type
   FROM position_activities ORDER BY applied_at DESC LIMIT $1)
ORDER BY ts DESC LIMIT $1
"""


async def recent_feed(pool: asyncpg.Pool | asyncpg.Connection, limit: int,
                      ) -> list[Mapping[str, Any]]:
    """The newest `limit` orders, fills and applied activities together, newest first (the
    dashboard's feed): rows keyed by column (key, ts, account, kind, symbol, side, qty,
    notional, price, status)."""
    return list(await pool.fetch(_FEED_SQL, limit))
