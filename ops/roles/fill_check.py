"""The stream role's fill completeness check: completeness, not recency.

The trade stream loses events by design (docs/broker-protocol.md 4.4, 6.2): a drop, a mute, a
restart of the role. So after every (re)connect and every `schedule.fill_check_s` the
stream role checks, for every order the account touched, that the fills the database
holds add up to the broker's `filled_qty`, and fetches what is missing from the FILL
activities, whatever its age. The orders looked at:
- every order submitted since the last check's `complete_through` (minus a margin), and
  every open order, as the broker lists them;
- every order the database believes open, and recent ones whose recorded `filled_qty` is
  more than their stored fills (a submit answer or a refresh saw fills first);
- the orders the previous check left incomplete.
Each order's stored fills are judged by `ops.core.fills.status`; the activities of those not
complete are fetched (per order with Alpaca's `order_id` filter when they are few, else
one time window) and reconciled (`ops.core.fills.reconcile`): new fills are stored with the
stream's own `trade_update` op (identity: order + cumulative quantity, so a fill that
arrives both ways is stored once), missing execution quantities filled in, and two sources
of one fill that disagree reported as a `fill-mismatch` incident, never stored twice.
Every looked-at order is written back (order refresh, forward-only by `updated_at`), and
returned with the check's start time: the stream role compares them with what the stream
delivered (mute detection, ops/roles/stream.py) without REST calls of its own.
An order still incomplete for `INCOMPLETE_ALERT_CHECKS` checks in a row opens
`fills-incomplete`; it closes when none is left. An order with more stored than the broker
filled at two checks in a row opens `fill-excess` (once is the race of a stream fill
arriving after the broker's listing was taken); it closes when the order is complete.
The result is kept in `fill_checks`.

The check reads Postgres directly: it is skipped (and retried) while Postgres is away or
the outage buffer still holds rows, when stored fills are not the whole truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ops.broker import Broker
from ops.core import fills
from ops.core.models import Fill, Order, TradeUpdate
from ops.store import fills as fq
from ops.store.ingest import trade_update_row_op
from ops.store.store import Store

log = logging.getLogger(__name__)

MARGIN = timedelta(seconds=60)  # clock skew and in-flight submissions around the checkpoint
INITIAL_LOOKBACK = timedelta(days=1)  # an account checked for the first time
PER_ORDER_MAX = 3  # up to this many orders: one activities query each, else a time window
OLD_ORDER = timedelta(days=1)  # older orders are always fetched per order (no wide window)
INCOMPLETE_ALERT_CHECKS = 3

IncidentFn = Callable[[str, str, str], Awaitable[None]]  # (kind, detail, dedupe key)
ResolveFn = Callable[[str], Awaitable[None]]  # (dedupe key)


def update_from_fill(fill: Fill, order: Order) -> TradeUpdate:
    """A fill event rebuilt from its FILL activity: identity (order, cum_qty) as the
    stream's. `order` is the order's current state (it may be past this execution); no
    execution id is invented (Alpaca links none to an activity)."""
    raw = {"source": "rest-backfill", "activity": {
        "id": fill.id, "type": fill.fill_type,
        "transaction_time": fill.transaction_time.isoformat(), "price": str(fill.price),
        "qty": str(fill.qty), "cum_qty": str(fill.cum_qty), "leaves_qty": str(fill.leaves_qty),
        "order_id": fill.order_id, "symbol": fill.symbol, "side": fill.side,
        "order_status": fill.order_status,
    }}
    return TradeUpdate(event=fill.fill_type, order=order, timestamp=fill.transaction_time,
                       execution_id=None, price=fill.price, qty=fill.qty, position_qty=None,
                       raw=raw, cum_qty=fill.cum_qty)


@dataclass(slots=True)
class FillCheckResult:
    """What one check did; `skipped` says why it did not run."""

    reason: str
    skipped: str | None = None
    orders: dict[str, Order] = field(default_factory=dict)  # every order looked at
    fills_added: int = 0
    incomplete: tuple[str, ...] = ()
    disagreements: int = 0
    # When the check began: the broker's orders are as of (about) this time.
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class FillCheckStats:
    checks: int = 0
    skipped: int = 0
    errors: int = 0
    fills_recovered: int = 0  # fills stored by checks (the stream had not delivered them)
    qty_filled_in: int = 0
    activity_queries: int = 0  # FILL-activity fetches (one per order, or one window)
    disagreements: int = 0
    incomplete_orders: int = 0  # at the last check


class FillChecker:
    """One account's completeness check; `run` is serialised."""

    def __init__(self, *, account: str, process: str, store: Store, broker: Broker,
                 incident: IncidentFn, resolve: ResolveFn) -> None:
        self.account = account
        self.process = process
        self.store = store
        self.broker = broker
        self._incident = incident
        self._resolve = resolve
        self.stats = FillCheckStats()
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def run(self, reason: str) -> FillCheckResult:
        async with self._lock:
            store = self.store
            if not store.database_reachable:
                return self._skip(reason, "postgres unreachable")
            if await store.buffer.has_pending():
                return self._skip(reason, "the outage buffer still holds rows")
            try:
                return await self._run(reason)
            except Exception:
                self.stats.errors += 1
                raise

    def _skip(self, reason: str, why: str) -> FillCheckResult:
        self.stats.skipped += 1
        log.info("fill check (%s) skipped: %s", reason, why)
        return FillCheckResult(reason, skipped=why)

    async def _run(self, reason: str) -> FillCheckResult:
        b = self.broker
        started = datetime.now(UTC)
        prev = await self.store.direct(fq.load_check, self.account)
        since = (prev.complete_through if prev else started - INITIAL_LOOKBACK) - MARGIN
        orders = {o.id: o for o in await b.list_orders(status="all", after=since,
                                                        direction="asc", nested=False)}
        orders.update((o.id, o) for o in await b.list_orders(status="open", nested=False))
        wanted = await self.store.direct(fq.orders_to_check, self.account, since)
        wanted |= set(prev.incomplete if prev else ())
        for oid in sorted(wanted - set(orders)):
            try:
                order = await b.get_order(oid)
            except ValueError:  # not an order id the broker could have issued
                order = None
            if order is None:
                log.warning("fill check: order %s is in the database but the broker does "
                            "not know it; not checked", oid)
                continue
            orders[oid] = order
        stored = await self.store.direct(fq.stored_fills, self.account, orders)
        need = [o for o in orders.values()
                if fills.status(o.filled_qty, stored.get(o.id, ()))
                is not fills.Completeness.COMPLETE]
        activities = await self._activities(need, started)
        recs = [fills.reconcile(o, stored.get(o.id, ()), activities.get(o.id, ()))
                for o in need]
        updates = [update_from_fill(a, orders[r.order_id]) for r in recs for a in r.new]
        added = 0
        if updates:
            added = await self.store.write_many(
                [trade_update_row_op(self.account, u) for u in updates])
        if orders:
            await self.store.upsert_orders(self.account, orders.values())
        for r in recs:
            n = await self.store.direct(fq.fill_in_qty, self.account, r.order_id,
                                        [(f.cum_qty, f.qty) for f in r.qty_fill_ins])
            self.stats.qty_filled_in += n
        incomplete = tuple(sorted(r.order_id for r in recs
                                  if r.after is not fills.Completeness.COMPLETE))
        await self._report(recs, orders, incomplete, prev)
        failed = (prev.failed_checks + 1 if prev else 1) if incomplete else 0
        await self.store.direct(fq.save_check, fq.FillCheck(
            self.account, started, datetime.now(UTC), len(orders), added, incomplete, failed))
        self.stats.checks += 1
        self.stats.fills_recovered += added
        self.stats.incomplete_orders = len(incomplete)
        disagreements = sum(len(r.disagreements) for r in recs)  # counted by _report
        level = logging.WARNING if added or incomplete or disagreements else logging.INFO
        log.log(level, "fill check (%s) since %s: %d order(s) looked at, %d to verify, "
                "%d fill(s) recovered, %d incomplete, %d disagreement(s)", reason,
                since.isoformat(), len(orders), len(need), added, len(incomplete),
                disagreements)
        return FillCheckResult(reason, None, orders, added, incomplete, disagreements,
                               started)

    async def _activities(self, need: Sequence[Order], now: datetime
                          ) -> dict[str, list[Fill]]:
        """The FILL activities of each order in `need`: per order when they are few or
        old, else one time window from the oldest submission."""
        out: dict[str, list[Fill]] = {o.id: [] for o in need}
        def submitted(o: Order) -> datetime:
            return o.submitted_at or o.created_at
        per_order = [o for o in need if len(need) <= PER_ORDER_MAX
                     or submitted(o) < now - OLD_ORDER]
        windowed = [o for o in need if o not in per_order]
        for o in per_order:
            self.stats.activity_queries += 1
            out[o.id] = await self.broker.list_fills(order_id=o.id)
        if windowed:
            self.stats.activity_queries += 1
            start = min(submitted(o) for o in windowed) - MARGIN
            for f in await self.broker.list_fills(after=start):
                if f.order_id in out:
                    out[f.order_id].append(f)
        return out

    async def report_disagreements(self, order_id: str, lines: Sequence[str]) -> None:
        """Two sources of fills of `order_id` disagree (one line each, ops.core.fills):
        counted, and one `fill-mismatch` incident for the order. Also the stream's, for a
        copy that arrived second (ops/roles/stream.py)."""
        self.stats.disagreements += len(lines)
        await self._incident("fill-mismatch", "two sources of one fill disagree (nothing "
                             "stored twice): " + "; ".join(lines),
                             f"{self.process}:fill-mismatch:{order_id}")

    async def _report(self, recs: Iterable[fills.Reconciliation], orders: dict[str, Order],
                      incomplete: tuple[str, ...], prev: fq.FillCheck | None) -> None:
        for r in recs:
            if r.disagreements:
                await self.report_disagreements(r.order_id, r.disagreements)
            # More stored than the broker's filled_qty: the stream can deliver a fill
            # before the broker's order listing (taken first) shows it, so excess seen
            # once is a race; seen again at the next check, it is a phantom or a double.
            if r.after is fills.Completeness.EXCESS and prev is not None \
                    and r.order_id in prev.incomplete:
                o = orders[r.order_id]
                await self._incident(
                    "fill-excess",
                    f"order {o.id} ({o.symbol}): more is stored as filled than the broker's "
                    f"filled qty {o.filled_qty}: a phantom or doubled fill",
                    f"{self.process}:fill-excess:{r.order_id}")
        for oid in set(prev.incomplete if prev else ()) - set(incomplete):
            await self._resolve(f"{self.process}:fill-excess:{oid}")  # complete now
        key = f"{self.process}:fills-incomplete"
        failed = (prev.failed_checks + 1 if prev else 1) if incomplete else 0
        if failed >= INCOMPLETE_ALERT_CHECKS:
            names = ", ".join(f"{oid} ({orders[oid].symbol}: broker filled "
                              f"{orders[oid].filled_qty})" for oid in incomplete[:5])
            await self._incident(
                "fills-incomplete",
                f"{len(incomplete)} order(s) of {self.account} have fills at the broker that "
                f"the activities API has not supplied for {failed} checks in a row: {names}",
                key)
        elif not incomplete and prev is not None and prev.failed_checks:
            await self._resolve(key)


__all__ = ["FillCheckResult", "FillChecker", "update_from_fill"]
