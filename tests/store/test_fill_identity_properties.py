"""Fill identity and completeness, property-based, against real Postgres.

Any order history (orders filled in several executions), delivered over the stream in any
interleaving with duplicates, drops, reordering and events lacking `qty`, with
completeness checks at any points in between (the check's core: stored fills read back,
`ops.core.fills.reconcile` against the broker's activities so far, the new fills written with
the stream's own op, missing quantities filled in): every execution is stored exactly
once, nothing else is stored, and after a final check every order is complete with every
execution quantity known. The pure decisions get their own properties below.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops.broker.convert import trade_update_from_raw
from ops.core import fills
from ops.core.models import Fill, Order
from ops.roles.fill_check import update_from_fill
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store import fills as fq
from ops.store.ingest import trade_update_row_op

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
_serial = itertools.count()


@dataclass(frozen=True)
class Execution:
    order: int  # index of the order
    qty: Decimal
    price: Decimal
    cum: Decimal
    avg: Decimal
    at: datetime


def _history(orders: list[list[tuple[int, int]]]) -> list[Execution]:
    """Executions in the order the broker made them (orders interleaved round-robin)."""
    out: list[Execution] = []
    state = [(Decimal(0), Decimal(0)) for _ in orders]  # (cum, notional)
    t = T0
    for step in range(max(len(o) for o in orders)):
        for i, execs in enumerate(orders):
            if step < len(execs):
                qty, cents = Decimal(execs[step][0]), Decimal(execs[step][1]) / 100
                cum, notional = state[i][0] + qty, state[i][1] + qty * cents
                state[i] = (cum, notional)
                t += timedelta(milliseconds=7)
                out.append(Execution(i, qty, cents, cum, notional / cum, t))
    return out


histories = st.lists(st.lists(st.tuples(st.integers(1, 40), st.integers(10_000, 10_500)),
                              min_size=1, max_size=5), min_size=1, max_size=3)


@dataclass(frozen=True)
class Scenario:
    executions: list[Execution]
    # Each step: ("make",) the next execution happens; ("stream", k, with_qty) the stream
    # delivers execution k (again, if it did before); ("check",) a completeness check.
    steps: list[tuple[Any, ...]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    ex = _history(draw(histories))
    steps: list[tuple[Any, ...]] = []
    made = 0
    while made < len(ex) or draw(st.booleans()):
        choice = draw(st.sampled_from(["make", "make", "stream", "stream", "check"]))
        if choice == "make" and made < len(ex):
            made += 1
            steps.append(("make",))
        elif choice == "stream" and made:
            steps.append(("stream", draw(st.integers(0, made - 1)), draw(st.booleans())))
        elif choice == "check":
            steps.append(("check",))
        if len(steps) > 60:
            break
    while made < len(ex):
        made += 1
        steps.append(("make",))
    return Scenario(ex, steps)


def _order_id(account: str, i: int) -> str:
    return f"{account}-order-{i}"


def _order(account: str, i: int, done: list[Execution], total: Decimal) -> dict[str, Any]:
    """The broker's order i after the executions in `done` (wire shape)."""
    mine = [e for e in done if e.order == i]
    cum = mine[-1].cum if mine else Decimal(0)
    at = mine[-1].at if mine else T0
    return {"id": _order_id(account, i), "client_order_id": f"c-{account}-{i}",
            "symbol": "AAPL", "side": "buy", "type": "market", "order_type": "market",
            "time_in_force": "day", "qty": str(total), "filled_qty": str(cum),
            "filled_avg_price": str(mine[-1].avg) if mine else None,
            "status": "filled" if cum == total else "partially_filled" if mine else "new",
            "created_at": T0.isoformat(), "updated_at": at.isoformat(),
            "submitted_at": T0.isoformat()}


def _activity(account: str, k: int, e: Execution, total: Decimal) -> Fill:
    return Fill(id=f"{e.at:%Y%m%d%H%M%S%f}::activity-{k}", order_id=_order_id(account, e.order),
                symbol="AAPL", side="buy", price=e.price, qty=e.qty, cum_qty=e.cum,
                leaves_qty=total - e.cum, transaction_time=e.at,
                fill_type="fill" if e.cum == total else "partial_fill")


async def _check(store: Store, account: str, orders: list[Order],
                 activities: list[Fill]) -> int:
    stored = await fq.stored_fills(store.pool, account, [o.id for o in orders])
    added = 0
    for o in orders:
        if fills.status(o.filled_qty, stored.get(o.id, ())) is fills.Completeness.COMPLETE:
            continue
        rec = fills.reconcile(o, stored.get(o.id, ()), activities)
        assert not rec.disagreements, rec.disagreements
        if rec.new:
            added += await store.write_many(
                [trade_update_row_op(account, update_from_fill(a, o)) for a in rec.new])
        await fq.fill_in_qty(store.pool, account, o.id,
                             [(f.cum_qty, f.qty) for f in rec.qty_fill_ins])
    return added


async def _play(env: RuntimeEnv, sc: Scenario) -> None:
    account = f"p{next(_serial)}"
    ex = sc.executions
    totals = {i: sum((e.qty for e in ex if e.order == i), Decimal(0))
              for i in {e.order for e in ex}}
    store = await Store.open(env, process="property")
    try:
        made = 0
        for step in sc.steps:
            done = ex[:made]
            if step[0] == "make":
                made += 1
            elif step[0] == "stream":
                k, with_qty = step[1], step[2]
                e = ex[k]
                data: dict[str, Any] = {
                    "event": "fill" if e.cum == totals[e.order] else "partial_fill",
                    "timestamp": e.at.isoformat(), "price": str(e.avg),  # documented: average
                    "position_qty": "0", "execution_id": f"stream-exec-{k}",
                    "order": _order(account, e.order, ex[:k + 1], totals[e.order])}
                if with_qty:
                    data["qty"] = str(e.qty)
                text = json.dumps({"stream": "trade_updates", "data": data})
                u = trade_update_from_raw(json.loads(text), text)
                await store.write_many([trade_update_row_op(account, u)])
            else:
                orders = [trade_update_from_raw({"stream": "trade_updates", "data": {
                    "event": "x", "order": _order(account, i, done, t)}}).order
                    for i, t in totals.items()]
                await _check(store, account, orders,
                             [_activity(account, k, e, totals[e.order])
                              for k, e in enumerate(done)])
        orders = [trade_update_from_raw({"stream": "trade_updates", "data": {
            "event": "x", "order": _order(account, i, ex, t)}}).order for i, t in totals.items()]
        await _check(store, account, orders,
                     [_activity(account, k, e, totals[e.order]) for k, e in enumerate(ex)])
        rows = await store.pool.fetch(
            "SELECT order_id, cum_qty, qty FROM order_events WHERE account = $1", account)
        got = sorted((r["order_id"], r["cum_qty"], r["qty"]) for r in rows)
        want = sorted((_order_id(account, e.order), e.cum, e.qty) for e in ex)
        assert got == want  # each execution exactly once, nothing else, every qty known
        stored = await fq.stored_fills(store.pool, account, [o.id for o in orders])
        assert all(fills.status(o.filled_qty, stored[o.id]) is fills.Completeness.COMPLETE
                   for o in orders)
    finally:
        await store.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenarios())
def test_any_interleaving_stores_each_execution_exactly_once(
    ops_env: RuntimeEnv, sc: Scenario
) -> None:
    asyncio.run(_play(ops_env, sc))


# --- the pure decisions ----------------------------------------------------------------------


def _stored(e: Execution, *, qty: bool, price: Decimal | None = None) -> fills.StoredFill:
    return fills.StoredFill(e.cum, e.qty if qty else None, price or e.price, e.at)


@settings(max_examples=300, deadline=None)
@given(histories, st.data())
def test_reconcile_adds_exactly_what_is_missing_and_is_idempotent(
    orders: list[list[tuple[int, int]]], data: st.DataObject
) -> None:
    ex = [e for e in _history(orders) if e.order == 0]
    total = sum((e.qty for e in ex), Decimal(0))
    order = trade_update_from_raw({"stream": "trade_updates", "data": {
        "event": "x", "order": _order("a", 0, ex, total)}}).order
    acts = [_activity("a", k, e, total) for k, e in enumerate(ex)]
    keep = data.draw(st.lists(st.booleans(), min_size=len(ex), max_size=len(ex)))
    with_qty = data.draw(st.lists(st.booleans(), min_size=len(ex), max_size=len(ex)))
    use_avg = data.draw(st.lists(st.booleans(), min_size=len(ex), max_size=len(ex)))
    stored = [_stored(e, qty=q, price=e.avg if a else e.price)
              for e, k, q, a in zip(ex, keep, with_qty, use_avg, strict=True) if k]
    before = fills.status(order.filled_qty, stored)
    assert (before is fills.Completeness.COMPLETE) == (all(keep) and all(with_qty))
    rec = fills.reconcile(order, stored, acts + acts[:1])  # a paging overlap repeats one
    assert not rec.disagreements
    assert sorted(a.cum_qty for a in rec.new) == sorted(
        e.cum for e, k in zip(ex, keep, strict=True) if not k)
    assert {f.cum_qty for f in rec.qty_fill_ins} == {
        e.cum for e, k, q in zip(ex, keep, with_qty, strict=True) if k and not q}
    assert rec.after is fills.Completeness.COMPLETE
    merged = [s if s.qty is not None else fills.StoredFill(s.cum_qty, next(
        f.qty for f in rec.qty_fill_ins if f.cum_qty == s.cum_qty), s.price, s.ts)
        for s in stored] + [fills.StoredFill(a.cum_qty, a.qty, a.price, a.transaction_time)
                            for a in rec.new]
    again = fills.reconcile(order, merged, acts)
    assert again.new == () and again.qty_fill_ins == () and not again.disagreements


@settings(max_examples=200, deadline=None)
@given(histories, st.integers(0, 4), st.sampled_from(["qty", "price", "time", "phantom"]))
def test_a_contradicting_source_is_reported_never_stored(
    orders: list[list[tuple[int, int]]], pick: int, what: str
) -> None:
    ex = [e for e in _history(orders) if e.order == 0]
    total = sum((e.qty for e in ex), Decimal(0))
    order = trade_update_from_raw({"stream": "trade_updates", "data": {
        "event": "x", "order": _order("a", 0, ex, total)}}).order
    acts = [_activity("a", k, e, total) for k, e in enumerate(ex)]
    stored = [_stored(e, qty=True) for e in ex]
    k = pick % len(ex)
    s = stored[k]
    if what == "qty":
        stored[k] = fills.StoredFill(s.cum_qty, s.qty + 1 if s.qty else None, s.price, s.ts)
    elif what == "price":
        stored[k] = fills.StoredFill(s.cum_qty, s.qty, Decimal("1.23"), s.ts)
    elif what == "time":
        stored[k] = fills.StoredFill(s.cum_qty, s.qty, s.price, s.ts - timedelta(hours=1))
    else:
        stored.append(fills.StoredFill(total + 5, Decimal(5), s.price, s.ts))
    rec = fills.reconcile(order, stored, acts)
    assert rec.new == () and len(rec.disagreements) == 1
    expected = "is stored, but the broker's activities" if what == "phantom" else f": {what} "
    assert expected in rec.disagreements[0]


@settings(max_examples=300, deadline=None)
@given(histories, st.data())
def test_a_faithful_second_copy_agrees_with_the_stored_fill(
    orders: list[list[tuple[int, int]]], data: st.DataObject
) -> None:
    """The activities stored (some perhaps not yet), then the stream's copy of one fill:
    with the execution's or the order's average price, with or without its qty, it never
    disagrees, whatever else is stored."""
    ex = [e for e in _history(orders) if e.order == 0]
    keep = data.draw(st.lists(st.booleans(), min_size=len(ex), max_size=len(ex)))
    k = data.draw(st.integers(0, len(ex) - 1))
    keep[k] = True
    stored = [_stored(e, qty=True) for e, kept in zip(ex, keep, strict=True) if kept]
    e = ex[k]
    copy = fills.StoredFill(e.cum, e.qty if data.draw(st.booleans()) else None,
                            e.avg if data.draw(st.booleans()) else e.price,
                            e.at + timedelta(seconds=data.draw(st.integers(-60, 60))))
    assert fills.second_copy("a", "AAPL", copy, stored) == ()
    # A copy of a fill not stored is no second copy.
    if not all(keep):
        missing = next(e for e, kept in zip(ex, keep, strict=True) if not kept)
        assert fills.second_copy("a", "AAPL", _stored(missing, qty=True), stored) == ()


@settings(max_examples=200, deadline=None)
@given(histories, st.integers(0, 4), st.sampled_from(["qty", "price", "time"]))
def test_a_contradicting_second_copy_is_reported(
    orders: list[list[tuple[int, int]]], pick: int, what: str
) -> None:
    ex = [e for e in _history(orders) if e.order == 0]
    stored = [_stored(e, qty=True) for e in ex]
    e = ex[pick % len(ex)]
    copy = {"qty": fills.StoredFill(e.cum, e.qty + 1, e.price, e.at),
            "price": fills.StoredFill(e.cum, e.qty, Decimal("1.23"), e.at),
            "time": fills.StoredFill(e.cum, e.qty, e.price, e.at - timedelta(hours=1))}[what]
    problems = fills.second_copy("a", "AAPL", copy, stored)
    assert len(problems) == 1 and f": {what} " in problems[0], problems
    assert problems[0].startswith(f"order a (AAPL) fill at cumulative {e.cum.normalize():f}")
