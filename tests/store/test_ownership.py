"""The managed quantity in real Postgres: the pipeline's own fills plus adjustments, each
adjustment applied once per source."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from ops.env import RuntimeEnv
from ops.store import Store
from ops.store.ingest import trade_update_row_op
from ops.store.ownership import Adjustment, adjustments, managed_quantities, record_adjustment
from tests.store.factories import trade_update

T = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


async def test_managed_is_pipeline_fills_plus_adjustments(ops_env: RuntimeEnv) -> None:
    from dataclasses import replace

    async with await Store.open(ops_env, process="t") as store:
        mine = trade_update("o1", 4)  # a fill of 5 (cum 5), buy, symbol AAPL
        mine = replace(mine, order=replace(mine.order, client_order_id="ops-large-sig-1"))
        hand = trade_update("o2", 2)  # cum 3, placed by hand
        hand = replace(hand, order=replace(hand.order, client_order_id="web-123"))
        other = trade_update("o3", 1)  # another account's prefix must not count
        other = replace(other, order=replace(other.order, client_order_id="ops-large2-sig-9"))
        await store.write_many([trade_update_row_op("large", u) for u in (mine, hand, other)])
        assert await managed_quantities(store.pool, "large", ["AAPL", "MSFT"]) == {
            "AAPL": Decimal(5)}
        adopt = Adjustment("large", "AAPL", Decimal(3), "adopt", "adopt:x", "adopted 3",
                           "cli:tester", T)
        assert await record_adjustment(store.pool, adopt)
        assert not await record_adjustment(store.pool, adopt)  # once per source
        assert await managed_quantities(store.pool, "large", ["AAPL"]) == {"AAPL": Decimal(8)}
        [row] = await adjustments(store.pool, "large")
        assert (row.kind, row.by, row.managed_delta) == ("adopt", "cli:tester", Decimal(3))
