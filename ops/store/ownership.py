"""Ownership queries: the managed quantity per symbol and its adjustments (migration 0017).

`managed_quantities` sums, per symbol, the signed fills of the pipeline's own orders
(client_order_id `ops-<account>-...`; each fill's quantity from its order's cumulative
quantities, as ops.store.positions does) and the `position_adjustments` rows;
`managed_quantities_of` is the same sum for several accounts in one query (the
dashboard's owner column); `record_adjustment` adds one row exactly once per source (an
adoption, a non-trade activity). Straight to Postgres: ownership decides what may be
sold, so it is read from the truth; the position manager does not act on ownership while
Postgres is away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

_MANAGED_SQL = """
WITH f AS (
    SELECT e.symbol,
           e.cum_qty - coalesce(lag(e.cum_qty) OVER (PARTITION BY e.order_id
                                                    ORDER BY e.cum_qty), 0) AS qty,
           coalesce(o.side, e.raw -> 'data' -> 'order' ->> 'side',
                    e.raw -> 'activity' ->> 'side') AS side
    FROM order_events e
    LEFT JOIN orders o ON o.id = e.order_id AND o.account = e.account
    WHERE e.account = $1 AND e.cum_qty IS NOT NULL AND e.symbol = ANY($2::text[])
      AND e.client_order_id LIKE $3
)
SELECT symbol, sum(CASE side WHEN 'buy' THEN qty WHEN 'sell' THEN -qty ELSE 0 END) AS q
FROM f GROUP BY symbol
UNION ALL
SELECT symbol, sum(managed_delta) FROM position_adjustments
WHERE account = $1 AND symbol = ANY($2::text[]) GROUP BY symbol
"""


#: `_MANAGED_SQL` for many (account, symbol) pairs at once: $1, $2 are parallel arrays of
#: account and symbol (one entry per pair); $3, $4, $5 of account, its LIKE pattern and the
#: time the quantity is wanted at (null: now; fills and adjustments after it are left out),
#: one entry per account (thousands of pairs: per-pair patterns and times cost the
#: encoding). The window is partitioned by account too (one account's order ids say
#: nothing about another's).
_MANAGED_MANY_SQL = """
WITH acct AS (
    SELECT * FROM unnest($3::text[], $4::text[], $5::timestamptz[])
                  AS acct(account, pattern, asof)
), w AS (
    SELECT DISTINCT p.account, p.symbol, acct.pattern, acct.asof
    FROM unnest($1::text[], $2::text[]) AS p(account, symbol) JOIN acct USING (account)
), f AS (
    SELECT e.account, e.symbol,
           e.cum_qty - coalesce(lag(e.cum_qty) OVER (PARTITION BY e.account, e.order_id
                                                    ORDER BY e.cum_qty), 0) AS qty,
           coalesce(o.side, e.raw -> 'data' -> 'order' ->> 'side',
                    e.raw -> 'activity' ->> 'side') AS side
    FROM w
    JOIN order_events e ON e.account = w.account AND e.symbol = w.symbol
    LEFT JOIN orders o ON o.id = e.order_id AND o.account = e.account
    WHERE e.cum_qty IS NOT NULL AND e.client_order_id LIKE w.pattern
      AND (w.asof IS NULL OR e.ts <= w.asof)
)
SELECT account, symbol,
       sum(CASE side WHEN 'buy' THEN qty WHEN 'sell' THEN -qty ELSE 0 END) AS q
FROM f GROUP BY account, symbol
UNION ALL
SELECT a.account, a.symbol, sum(a.managed_delta) FROM position_adjustments a
JOIN w ON w.account = a.account AND w.symbol = a.symbol
WHERE w.asof IS NULL OR a.at <= w.asof
GROUP BY a.account, a.symbol
"""


def pipeline_prefix(account: str) -> str:
    """The client_order_id prefix of every order the pipeline sends for `account`."""
    return f"ops-{account}-"


def _prefix_pattern(account: str) -> str:
    """A LIKE pattern matching the pipeline's client_order_ids of `account`."""
    prefix = pipeline_prefix(account).replace("\\", "\\\\").replace("%", "\\%")
    return prefix.replace("_", "\\_") + "%"


async def managed_quantities(pool: asyncpg.Pool, account: str,
                             symbols: Iterable[str]) -> dict[str, Decimal]:
    """The recorded managed quantity of each symbol (absent: 0)."""
    wanted = sorted(set(symbols))
    if not wanted:
        return {}
    out: dict[str, Decimal] = {}
    for r in await pool.fetch(_MANAGED_SQL, account, wanted, _prefix_pattern(account)):
        if r["q"] is not None:
            out[r["symbol"]] = out.get(r["symbol"], Decimal(0)) + Decimal(r["q"])
    return out


async def managed_quantities_of(pool: asyncpg.Pool | asyncpg.Connection,
                                wanted: Mapping[str, Iterable[str]],
                                as_of: Mapping[str, datetime] | None = None,
                                ) -> dict[str, dict[str, Decimal]]:
    """`managed_quantities` of several accounts in one query: account -> symbol -> the
    recorded managed quantity (absent: 0). `as_of`: per account, the time of the position
    snapshot the quantities go with (fills executed later are not in that snapshot, so
    they are left out: a sale just filled does not make the old snapshot's lot look
    external); accounts not in it: everything recorded."""
    pairs = sorted({(a, s) for a, symbols in wanted.items() for s in symbols})
    if not pairs:
        return {}
    accounts = sorted({a for a, _ in pairs})
    when = as_of or {}
    out: dict[str, dict[str, Decimal]] = {}
    for r in await pool.fetch(_MANAGED_MANY_SQL, [a for a, _ in pairs], [s for _, s in pairs],
                              accounts, [_prefix_pattern(a) for a in accounts],
                              [when.get(a) for a in accounts]):
        if r["q"] is not None:
            got = out.setdefault(r["account"], {})
            got[r["symbol"]] = got.get(r["symbol"], Decimal(0)) + Decimal(r["q"])
    return out


@dataclass(frozen=True, slots=True)
class Adjustment:
    account: str
    symbol: str
    managed_delta: Decimal
    kind: str
    source: str
    detail: str
    by: str
    at: datetime


async def record_adjustment(pool: asyncpg.Pool | asyncpg.Connection, adj: Adjustment) -> bool:
    """Apply one adjustment exactly once per (account, source); False if it already was."""
    row = await pool.fetchval(
        "INSERT INTO position_adjustments (account, symbol, managed_delta, kind, source,"
        " detail, by, at) VALUES ($1, $2, $3::text::numeric, $4, $5, $6, $7, $8)"
        " ON CONFLICT (account, source) DO NOTHING RETURNING id",
        adj.account, adj.symbol, str(adj.managed_delta), adj.kind, adj.source, adj.detail,
        adj.by, adj.at)
    return row is not None


async def adjustments(pool: asyncpg.Pool, account: str,
                      symbol: str | None = None) -> list[Adjustment]:
    rows = await pool.fetch(
        "SELECT * FROM position_adjustments WHERE account = $1"
        " AND ($2::text IS NULL OR symbol = $2) ORDER BY id", account, symbol)
    return [Adjustment(r["account"], r["symbol"], Decimal(r["managed_delta"]), r["kind"],
                       r["source"], r["detail"], r["by"], r["at"]) for r in rows]


__all__ = ["Adjustment", "adjustments", "managed_quantities", "managed_quantities_of",
           "pipeline_prefix", "record_adjustment"]
