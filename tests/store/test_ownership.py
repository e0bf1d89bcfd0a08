"""The managed quantity in real Postgres: the pipeline's own fills plus adjustments, each
adjustment applied once per source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ops.core.models import TradeUpdate
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.ingest import trade_update_row_op
from ops.store.ownership import (
    Adjustment,
    adjustments,
    managed_quantities,
    managed_quantities_of,
    record_adjustment,
)
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


async def test_several_accounts_in_one_query_agree_with_each_alone(ops_env: RuntimeEnv) -> None:
    """`managed_quantities_of` (the dashboard's one query) sums exactly what
    `managed_quantities` sums for each account: its own prefix only, partial fills by
    their cumulative quantities, adjustments of the symbols asked for."""
    from dataclasses import replace

    def mine(oid: str, seq: int, cid: str) -> TradeUpdate:
        u = trade_update(oid, seq)
        return replace(u, order=replace(u.order, client_order_id=cid))

    async with await Store.open(ops_env, process="t") as store:
        large = [mine("o1", 1, "ops-large-sig-1"), mine("o1", 4, "ops-large-sig-1"),  # 2 + 3
                 mine("o2", 2, "web-123")]  # by hand
        large2 = [mine("o3", 6, "ops-large2-sig-1"),  # 7
                  mine("o4", 0, "ops-large-sig-9")]  # large's prefix, large2's account
        await store.write_many([trade_update_row_op("large", u) for u in large]
                               + [trade_update_row_op("large2", u) for u in large2])
        for acct, symbol, delta, source in (("large2", "MSFT", 4, "adopt:a"),
                                            ("large", "MSFT", 2, "adopt:b"),
                                            ("large", "SPY", 9, "adopt:c")):  # not asked
            await record_adjustment(store.pool, Adjustment(
                acct, symbol, Decimal(delta), "adopt", source, "", "cli:tester", T))
        wanted = {"large": ["AAPL", "MSFT", "QQQ"], "large2": ["AAPL", "MSFT"]}
        got = await managed_quantities_of(store.pool, wanted)
        assert got == {"large": {"AAPL": Decimal(5), "MSFT": Decimal(2)},
                       "large2": {"AAPL": Decimal(7), "MSFT": Decimal(4)}}
        for acct, symbols in wanted.items():
            assert got[acct] == await managed_quantities(store.pool, acct, symbols)
        assert await managed_quantities_of(store.pool, {}) == {}


async def test_as_of_a_position_snapshot_later_fills_and_adjustments_are_left_out(
        ops_env: RuntimeEnv) -> None:
    """The dashboard shows the position manager's last snapshot: the managed quantity that
    goes with it counts what was recorded up to the snapshot's time. A pipeline sale
    filled after it is not in the snapshot, so it must not make the snapshot's lot look
    external (it did, for up to one sync: 'SPY 6 external' right after the pipeline sold
    its 6)."""
    from dataclasses import replace

    def mine(oid: str, seq: int, side: str) -> TradeUpdate:
        u = trade_update(oid, seq)
        return replace(u, order=replace(u.order, client_order_id=f"ops-large-sig-{oid}",
                                        side=side))

    async with await Store.open(ops_env, process="t") as store:
        buy, sell = mine("b", 5, "buy"), mine("s", 5, "sell")  # 6 bought, then 6 sold
        sell = replace(sell, timestamp=buy.timestamp + timedelta(seconds=10))
        await store.write_many([trade_update_row_op("large", u) for u in (buy, sell)])
        snapshot = buy.timestamp + timedelta(seconds=5)  # between the two fills
        await record_adjustment(store.pool, Adjustment(
            "large", "AAPL", Decimal(1), "adopt", "adopt:late", "", "cli:tester",
            snapshot + timedelta(seconds=1)))
        wanted = {"large": ["AAPL"]}
        assert await managed_quantities_of(store.pool, wanted, {"large": snapshot}) == {
            "large": {"AAPL": Decimal(6)}}
        now = await managed_quantities_of(store.pool, wanted)
        assert now == {"large": {"AAPL": Decimal(1)}}  # 6 - 6 + the adoption
