"""Fill identity and completeness: pure decisions, no I/O.

A fill is identified by its order and the order's cumulative filled quantity after that
execution (`TradeUpdate.fill_cum`, `ops.core.models.fill_key`): fields Alpaca documents on every
source (a trade_updates event carries the order after the event, so `order.filled_qty`; a
FILL activity carries `order_id` and `cum_qty`). Never the shape of an id: Alpaca links
neither an activity id nor an execution id to anything else.

What lives here:
- `status(broker_filled, stored)`: whether an order's stored fills are complete against the
  broker's `filled_qty`, proven by quantities: the highest cumulative quantity stored equals
  the broker's, and the stored execution quantities add up to it (no gap in between). A
  fill stored without its execution quantity (a stream event that did not carry `qty`)
  leaves the order "unverified" until its activity supplies it.
- `reconcile(order, stored, activities)`: what the FILL activities of one order add to what
  is stored: the fills to store (never one already stored under the same identity), the
  execution quantities to fill in, and the disagreements between two sources of one fill
  (qty, price, time), which are reported, never stored twice.
- `second_copy(...)`: the other direction: a fill the stream delivers after one was stored
  under its identity (from the activities, or an earlier copy) is dropped as a duplicate;
  what it says is compared with what is stored, and the disagreements reported the same
  way.
What does not: fetching (ops.broker), storing (ops.store.fills), scheduling (ops.roles.stream).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from ops.core.models import Fill, Order

_ZERO = Decimal(0)
#: Two sources of one fill may stamp it differently (the event's time, the execution's
#: time); beyond this they are reported as disagreeing.
TIME_TOLERANCE = timedelta(seconds=60)
#: The stream's `price` is documented as the order's average fill price; averages are
#: rounded by the broker, so they are compared within this relative bound.
PRICE_REL_TOLERANCE = Decimal("0.000001")


class Completeness(StrEnum):
    COMPLETE = "complete"
    MISSING = "missing"  # fills the broker has that are not stored
    UNVERIFIED = "unverified"  # stored fills without an execution qty: a gap cannot be ruled out
    EXCESS = "excess"  # more stored than the broker filled: a phantom or a double


@dataclass(frozen=True, slots=True)
class StoredFill:
    """One stored fill of an order, by its identity (`cum_qty`)."""

    cum_qty: Decimal
    qty: Decimal | None  # the execution's quantity; None when its source did not say
    price: Decimal | None
    ts: datetime


def status(broker_filled: Decimal, stored: Sequence[StoredFill]) -> Completeness:
    """How the stored fills of one order compare with the broker's `filled_qty`."""
    top = max((f.cum_qty for f in stored), default=_ZERO)
    if top > broker_filled:
        return Completeness.EXCESS
    if top < broker_filled:
        return Completeness.MISSING
    if any(f.qty is None for f in stored):
        return Completeness.UNVERIFIED
    total = sum((f.qty for f in stored if f.qty is not None), _ZERO)
    if total > top:
        return Completeness.EXCESS
    return Completeness.COMPLETE if total == top else Completeness.MISSING


@dataclass(frozen=True, slots=True)
class QtyFillIn:
    """A stored fill whose execution quantity its activity supplies."""

    cum_qty: Decimal
    qty: Decimal


@dataclass(frozen=True, slots=True)
class Reconciliation:
    order_id: str
    new: tuple[Fill, ...]  # activities of fills not stored yet, oldest first
    qty_fill_ins: tuple[QtyFillIn, ...]
    disagreements: tuple[str, ...]  # one line per fill whose sources disagree
    after: Completeness  # the order's state once `new` and the fill-ins are stored


def _close(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) <= max(abs(a), abs(b)) * PRICE_REL_TOLERANCE


def _q(x: Decimal | None) -> str:
    return "?" if x is None else format(x.normalize(), "f")


def reconcile(order: Order, stored: Sequence[StoredFill],
              activities: Iterable[Fill]) -> Reconciliation:
    """What `activities` (FILL activities; those of other orders are ignored) add to the
    `stored` fills of `order` (the broker's current state of the order)."""
    acts: dict[Decimal, Fill] = {}
    for a in sorted((a for a in activities if a.order_id == order.id),
                    key=lambda a: (a.cum_qty, a.transaction_time)):
        acts.setdefault(a.cum_qty, a)  # an activity listed twice (paging overlap): once
    have = {f.cum_qty: f for f in stored}
    new: list[Fill] = []
    fill_ins: list[QtyFillIn] = []
    problems: list[str] = []
    notional = _ZERO  # running sum of price x qty over the activities, for averages
    for cum, a in sorted(acts.items()):
        notional += a.price * a.qty
        s = have.get(cum)
        if s is None:
            new.append(a)
            continue
        where = f"order {order.id} ({order.symbol}) fill at cumulative {_q(cum)}"
        if s.qty is None:
            fill_ins.append(QtyFillIn(cum, a.qty))
        elif s.qty != a.qty:
            problems.append(f"{where}: qty {_q(s.qty)} stored, {_q(a.qty)} in the activity")
        # The stream's price is documented as the order's average fill price; the
        # activity's is the execution's. Either one matches a faithful broker.
        average = notional / cum
        if s.price is not None and not (_close(s.price, a.price) or _close(s.price, average)):
            problems.append(f"{where}: price {_q(s.price)} stored, execution price "
                            f"{_q(a.price)} and average {_q(average.quantize(Decimal('1e-6')))}"
                            " in the activities")
        if abs(s.ts - a.transaction_time) > TIME_TOLERANCE:
            problems.append(f"{where}: time {s.ts.isoformat()} stored, "
                            f"{a.transaction_time.isoformat()} in the activity")
    merged = {c: StoredFill(c, s.qty, s.price, s.ts) for c, s in have.items()}
    for fi in fill_ins:
        s = merged[fi.cum_qty]
        merged[fi.cum_qty] = StoredFill(fi.cum_qty, fi.qty, s.price, s.ts)
    for a in new:
        merged[a.cum_qty] = StoredFill(a.cum_qty, a.qty, a.price, a.transaction_time)
    acts_total = sum((a.qty for a in acts.values()), _ZERO)
    if acts and acts_total == order.filled_qty:
        # The activities account for every share the broker filled: a stored fill they
        # do not list was never made.
        for cum in sorted(set(have) - set(acts)):
            problems.append(f"order {order.id} ({order.symbol}): a fill at cumulative "
                            f"{_q(cum)} is stored, but the broker's activities (which add "
                            f"up to its filled qty {_q(order.filled_qty)}) have none")
    new.sort(key=lambda a: (a.transaction_time, a.cum_qty))
    return Reconciliation(order.id, tuple(new), tuple(fill_ins), tuple(problems),
                          status(order.filled_qty, list(merged.values())))


def second_copy(order_id: str, symbol: str, copy: StoredFill,
                stored: Sequence[StoredFill]) -> tuple[str, ...]:
    """Where `copy` (a fill as the stream delivered it) disagrees with the fill stored under
    its identity among `stored` (all of its order's stored fills); () when none is stored.

    The same judgement as `reconcile`, from the other side: quantities must be equal when
    both are known, times within TIME_TOLERANCE, and the stream's price must match the
    stored execution's price or the order's average up to this fill. That average is only
    computed when the stored fills up to it are complete (their quantities add up to its
    cumulative quantity); otherwise a price that matches neither is not judged."""
    have = {f.cum_qty: f for f in stored}
    s = have.get(copy.cum_qty)
    if s is None:
        return ()
    where = f"order {order_id} ({symbol}) fill at cumulative {_q(copy.cum_qty)}"
    problems: list[str] = []
    if s.qty is not None and copy.qty is not None and s.qty != copy.qty:
        problems.append(f"{where}: qty {_q(s.qty)} stored, {_q(copy.qty)} in the stream's "
                        "copy")
    if s.price is not None and copy.price is not None and not _close(s.price, copy.price):
        upto = [f for c, f in sorted(have.items()) if c <= copy.cum_qty]
        if all(f.qty is not None and f.price is not None for f in upto) \
                and sum((f.qty for f in upto if f.qty is not None), _ZERO) == copy.cum_qty:
            average = sum((f.price * f.qty for f in upto
                           if f.price is not None and f.qty is not None), _ZERO) / copy.cum_qty
            if not _close(average, copy.price):
                problems.append(
                    f"{where}: price {_q(copy.price)} in the stream's copy, execution price "
                    f"{_q(s.price)} and average {_q(average.quantize(Decimal('1e-6')))} "
                    "stored")
    if abs(s.ts - copy.ts) > TIME_TOLERANCE:
        problems.append(f"{where}: time {s.ts.isoformat()} stored, {copy.ts.isoformat()} in "
                        "the stream's copy")
    return tuple(problems)


__all__ = ["PRICE_REL_TOLERANCE", "TIME_TOLERANCE", "Completeness", "QtyFillIn",
           "Reconciliation", "StoredFill", "reconcile", "second_copy", "status"]
