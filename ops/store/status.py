"""Read queries behind `ops status` (and the dashboard/watchdog): today's activity per account.

Only what `Store`'s own reads do not cover: orders and fills today, and open positions
counted in Postgres. These need Postgres (there is no buffered copy of order history):
during an outage `ops status` reports them as unknown and takes everything else from
`Store` reads, which fall back to the buffer. Heartbeats, last completed runs, positions,
controls and incidents come from `Store` (ops/store/store.py); buffered rows from
`Store.buffer_status()`.

"Today" is the US equity trading day: since midnight America/New_York.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time
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
    account that has any. Raises the driver's error when Postgres is unreachable."""
    rows = await pool.fetch(_ACTIVITY_SQL, start_of_trading_day(now))
    return {
        r["account"]: AccountActivity(r["account"], int(r["orders"]), int(r["fills"]),
                                      int(r["positions"]))
        for r in rows
    }


async def ping(pool: asyncpg.Pool | asyncpg.Connection, timeout_s: float) -> None:
    """One round trip; raises when Postgres does not answer within `timeout_s`."""
    await pool.fetchval("SELECT 1", timeout=timeout_s)
