"""Applied non-trade activities in real Postgres (migration 0018): each written once with
its effects in one transaction (ownership adjustment, exit state re-based, a late-paired
OPTRD), counted by the drift check like fills, and shown in the dashboard's feed query."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from ops.core import activities as act
from ops.core.drift import FillDelta
from ops.core.exits import PositionState
from ops.core.models import NonTradeActivity
from ops.store import Store
from ops.store import activities as aq
from ops.store import positions as pq
from ops.store.ownership import adjustments, managed_quantities
from ops.store.status import recent_feed

T = datetime(2026, 12, 5, 15, 0, tzinfo=UTC)
DAY = date(2026, 12, 5)
CALL = "AAPL261218C00150000"


def nta(aid: str, kind: str, symbol: str, qty: str | None,
        price: str | None = None) -> NonTradeActivity:
    raw = {"id": aid, "activity_type": kind, "symbol": symbol, "qty": qty, "date": "2026-12-05"}
    return NonTradeActivity(aid, kind, symbol, None if qty is None else Decimal(qty),
                            None if price is None else Decimal(price), DAY, raw=raw)


async def test_a_split_is_written_once_with_its_effects(ops_store: Store) -> None:
    pool = ops_store.pool
    state = PositionState(T - timedelta(hours=1), Decimal("101.5"), Decimal("99"))
    await pq.save_exit_state(pool, "large", "AAPL", pq.TrackedPosition(state, True), T)
    book = act.Book(held={"AAPL": Decimal(10)}, managed={"AAPL": Decimal(4)},
                    exits={"AAPL": state})
    plan = act.plan(book, [nta("1::a", "SPLIT", "AAPL", "10")], at=T,
                    held_now={"AAPL": Decimal(20)})
    (a,) = plan.applied
    assert await aq.apply(pool, "large", a, at=T, by="large-position-manager")
    assert not await aq.apply(pool, "large", a, at=T, by="large-position-manager")
    (rec,) = await aq.records(pool, "large")
    assert (rec.type, rec.qty_delta, rec.managed_delta, rec.at) == (
        "SPLIT", Decimal(10), Decimal(4), T)
    (adj,) = await adjustments(pool, "large")
    assert (adj.source, adj.kind, adj.managed_delta) == ("activity:1::a", "split", Decimal(4))
    stored = (await pq.load_exit_states(pool, "large"))["AAPL"].state
    assert stored == PositionState(state.opened_at, Decimal("50.75"), Decimal("49.5"))
    # The drift check counts it where it was first seen.
    deltas = await pq.fill_deltas(pool, "large", T - timedelta(seconds=1), T)
    assert deltas == [FillDelta("AAPL", T, Decimal(10))]
    assert await pq.fill_deltas(pool, "large", T + timedelta(microseconds=1),
                                T + timedelta(hours=1)) == []
    assert await aq.applied_ids(pool, "large", ["1::a", "2::b"]) == {"1::a"}


async def test_an_unreadable_quantity_is_unverifiable_not_zero(ops_store: Store) -> None:
    plan = act.plan(act.Book(), [nta("3::c", "OPEXP", CALL, None)], at=T)
    await aq.apply_all(ops_store.pool, "large", plan.applied, at=T, by="t")
    assert await pq.fill_deltas(ops_store.pool, "large", T, T) == [FillDelta(CALL, T, None)]


async def test_an_optrd_seen_before_its_exercise_is_paired_later(ops_store: Store) -> None:
    pool = ops_store.pool
    trade = nta("5::e", "OPTRD", "AAPL", "200", "150")
    first = act.plan(act.Book(held={CALL: Decimal(2)}, managed={CALL: Decimal(2)}), [trade],
                     at=T)
    await aq.apply_all(pool, "large", first.applied, at=T, by="t")
    assert await managed_quantities(pool, "large", ["AAPL"]) == {}  # external until paired
    later = T + timedelta(minutes=1)
    book = act.Book(held={CALL: Decimal(2), "AAPL": Decimal(200)},
                    managed={CALL: Decimal(2)}, legs=tuple(await aq.legs(pool, "large", [DAY])))
    second = act.plan(book, [nta("4::d", "OPEXC", CALL, "-2")], at=later)
    await aq.apply_all(pool, "large", second.applied, at=later, by="t")
    got = await managed_quantities(pool, "large", ["AAPL", CALL])
    # (The 2 managed contracts are the book's here, no stored fills: only the -2.)
    assert got == {"AAPL": Decimal(200), CALL: Decimal(-2)}
    recs = {r.activity_id: r for r in await aq.records(pool, "large")}
    assert recs["5::e"].paired_with == "4::d" and recs["5::e"].managed_delta == 200
    # Replanning the same activities changes nothing (already applied; already paired).
    again = act.plan(book, [trade, nta("4::d", "OPEXC", CALL, "-2")], at=later)
    assert len(await aq.apply_all(pool, "large", again.applied, at=later, by="t")) == 0
    assert await managed_quantities(pool, "large", ["AAPL"]) == {"AAPL": Decimal(200)}


async def test_applied_activities_are_in_the_dashboard_feed(ops_store: Store) -> None:
    plan = act.plan(act.Book(held={CALL: Decimal(2)}), [nta("6::f", "OPEXP", CALL, "2")],
                    at=T)
    await aq.apply_all(ops_store.pool, "large", plan.applied, at=T, by="t")
    rows = await ops_store.direct(recent_feed, 50)
    (row,) = [r for r in rows if r["kind"] == "activity"]
    assert (row["key"], row["ts"], row["account"], row["symbol"], row["qty"], row["status"]) == (
        "activity:large:6::f", T, "large", CALL, Decimal(-2), "OPEXP")
