"""Writers upserting the same new order at the same moment: one insert, the rest updates.

The stream, the dispatcher and the position manager all upsert orders; when two of them
see a brand-new order at once, neither may fail. Before migration 0007 a second UNIQUE
index on (account, client_order_id), which is not the upsert's arbiter, turned such a
race into a unique violation. The race window is narrow, so this drives many rounds of
simultaneous upserts over several connections.
"""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped]

from ops.store.ops import apply_ops
from ops.store.postgres import connect
from ops.store.store import order_op
from tests.store.factories import T0, order

ROUNDS = 300
WRITERS = 4


async def test_simultaneous_upserts_of_new_orders_never_fail(pg_url: str) -> None:
    conns: list[asyncpg.Connection] = [await connect(pg_url) for _ in range(WRITERS)]
    try:
        for r in range(ROUNDS):
            snapshot = order(f"ord-race-{r}", status="new", updated=T0)
            results = await asyncio.gather(
                *(apply_ops(c, [order_op("large", snapshot)]) for c in conns),
                return_exceptions=True,
            )
            errors = [e for e in results if isinstance(e, BaseException)]
            assert not errors, f"round {r}: {errors[0]!r}"
        count = await conns[0].fetchval("SELECT count(*) FROM orders WHERE id LIKE 'ord-race-%'")
        assert count == ROUNDS
    finally:
        for c in conns:
            await c.close()
