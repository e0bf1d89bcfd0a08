"""What Postgres holds, read back for store tests' assertions."""

from __future__ import annotations

from ops.store.postgres import connect


async def stored_qtys(url: str, order_id: str = "o1") -> list[int]:
    """The qty of each event Postgres holds for `order_id`, in insertion order (the
    factories number events by qty, so a duplicate or a reordering shows)."""
    conn = await connect(url)
    try:
        rows = await conn.fetch(
            "SELECT qty FROM order_events WHERE order_id = $1 ORDER BY id", order_id)
    finally:
        await conn.close()
    return [int(r["qty"]) for r in rows]
