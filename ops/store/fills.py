"""Fill-completeness queries: what the database holds of each order's fills, which orders
to look at, and the per-account record of the last completeness check.

What lives here: the SQL behind `ops.roles.stream`'s completeness check (`stored_fills`,
`orders_to_check`, `fill_in_qty`) and its mute detection (`stored_open_orders`), the
`fill_checks` table (migration 0014): `load_check` / `save_check`, and the position
manager's `request_check`. What does not:
the decisions (ops.core.fills), storing fills (they go through the store's `trade_update` op
like the stream's own events).

These read and write Postgres directly, never the outage buffer: a completeness check is
only meaningful against the truth, so it does not run while Postgres is away or the
buffer still holds rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.core.fills import StoredFill
from ops.core.models import TERMINAL_ORDER_STATUSES

_TERMINAL = sorted(TERMINAL_ORDER_STATUSES)

_STORED_SQL = """
SELECT order_id, cum_qty, qty, price, ts FROM order_events
WHERE account = $1 AND order_id = ANY($2::text[]) AND cum_qty IS NOT NULL
ORDER BY order_id, cum_qty
"""
# Orders the database believes open, and recent ones whose recorded filled_qty is not
# what their stored fills add up to (an order refresh or a submit answer saw fills the
# stream did not deliver).
_TO_CHECK_SQL = """
SELECT id FROM orders WHERE account = $1 AND status <> ALL($3::text[])
UNION
SELECT o.id FROM orders o
LEFT JOIN LATERAL (
    SELECT max(e.cum_qty) AS top FROM order_events e
    WHERE e.order_id = o.id AND e.account = o.account AND e.cum_qty IS NOT NULL
) f ON true
WHERE o.account = $1 AND o.created_at >= $2 AND o.filled_qty <> coalesce(f.top, 0)
"""
_FILL_IN_SQL = """
UPDATE order_events SET qty = $4::text::numeric
WHERE account = $1 AND order_id = $2 AND cum_qty = $3::text::numeric AND qty IS NULL
"""


async def stored_fills(pool: asyncpg.Pool, account: str,
                       order_ids: Iterable[str]) -> dict[str, list[StoredFill]]:
    """The identified fills stored for each of `order_ids` (absent: none), by cum_qty."""
    out: dict[str, list[StoredFill]] = {}
    for r in await pool.fetch(_STORED_SQL, account, sorted(set(order_ids))):
        out.setdefault(r["order_id"], []).append(
            StoredFill(Decimal(r["cum_qty"]), None if r["qty"] is None else Decimal(r["qty"]),
                       None if r["price"] is None else Decimal(r["price"]), r["ts"]))
    return out


async def orders_to_check(pool: asyncpg.Pool, account: str, since: datetime) -> set[str]:
    """Order ids to check whatever the broker's listings say: believed open, or created
    since `since` with a filled_qty their stored fills do not reach."""
    return {r["id"] for r in await pool.fetch(_TO_CHECK_SQL, account, since, _TERMINAL)}


_OPEN_SQL = f"""
SELECT id, updated_at FROM orders
WHERE account = $1 AND status NOT IN ({", ".join(f"'{s}'" for s in TERMINAL_ORDER_STATUSES)})
"""


async def stored_open_orders(pool: asyncpg.Pool, account: str) -> dict[str, datetime]:
    """The orders the database believes open: id -> their last update."""
    return {r["id"]: r["updated_at"] for r in await pool.fetch(_OPEN_SQL, account)}


async def fill_in_qty(pool: asyncpg.Pool, account: str, order_id: str,
                      items: Sequence[tuple[Decimal, Decimal]]) -> int:
    """Set the execution qty of stored fills that lack one ((cum_qty, qty) pairs): the
    activity supplies what the stream event did not carry. The event's raw text is kept."""
    if not items:
        return 0
    await pool.executemany(_FILL_IN_SQL, [(account, order_id, str(c), str(q))
                                          for c, q in items])
    return len(items)


@dataclass(frozen=True, slots=True)
class FillCheck:
    """The last completeness check of an account."""

    account: str
    complete_through: datetime  # every fill made before this is stored, but `incomplete`'s
    checked_at: datetime
    orders_checked: int
    fills_added: int
    incomplete: tuple[str, ...]  # order ids whose fills were still not all stored
    failed_checks: int  # consecutive checks that ended with some order incomplete


async def load_check(pool: asyncpg.Pool, account: str) -> FillCheck | None:
    r = await pool.fetchrow("SELECT * FROM fill_checks WHERE account = $1", account)
    if r is None:
        return None
    raw = r["incomplete"]
    ids = json.loads(raw) if isinstance(raw, str) else raw
    return FillCheck(r["account"], r["complete_through"], r["checked_at"],
                     int(r["orders_checked"]), int(r["fills_added"]),
                     tuple(str(i) for i in ids), int(r["failed_checks"]))


async def save_check(pool: asyncpg.Pool, check: FillCheck) -> None:
    await pool.execute(
        """
        INSERT INTO fill_checks (account, complete_through, checked_at, orders_checked,
                                 fills_added, incomplete, failed_checks)
        VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7)
        ON CONFLICT (account) DO UPDATE SET complete_through = excluded.complete_through,
            checked_at = excluded.checked_at, orders_checked = excluded.orders_checked,
            fills_added = excluded.fills_added, incomplete = excluded.incomplete,
            failed_checks = excluded.failed_checks
        """,
        check.account, check.complete_through, check.checked_at, check.orders_checked,
        check.fills_added, json.dumps(list(check.incomplete)), check.failed_checks)


async def request_check(pool: asyncpg.Pool, account: str, by: str, at: datetime) -> None:
    """Ask the account's stream role for a completeness check now (it looks every
    `schedule.stream_check_s`)."""
    await pool.execute(
        "INSERT INTO fill_check_requests (account, requested_at, requested_by)"
        " VALUES ($1, $2, $3) ON CONFLICT (account) DO UPDATE SET"
        " requested_at = excluded.requested_at, requested_by = excluded.requested_by",
        account, at, by)


async def check_requested_at(pool: asyncpg.Pool, account: str) -> datetime | None:
    value = await pool.fetchval(
        "SELECT requested_at FROM fill_check_requests WHERE account = $1", account)
    return value if isinstance(value, datetime) else None


__all__ = ["FillCheck", "check_requested_at", "fill_in_qty", "load_check", "orders_to_check",
           "request_check", "save_check", "stored_fills"]
