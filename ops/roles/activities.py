"""The position manager's non-trade activities: read from the broker, applied exactly once.

What lives here: `ActivityApplier.run()`, which `PositionManager.tick` calls first, before
it reads the broker's positions: it reads the account's position-changing activities
(option expiry, exercise, assignment and the paired OPTRD, splits, spin-offs, symbol
changes, reorganisations; ops.core.activities.FETCH_TYPES), plans the new ones (ops.core.activities:
quantities, ownership, exit state) and writes each with its effects in one transaction
(ops.store.activities), so each is applied once whatever restarts happen. What does not:
the decisions (ops.core.activities), the SQL (ops.store.activities), the drift comparison
(ops.core.drift; ops.store.positions.fill_deltas counts the applied activities like fills).

Timing: Alpaca files these under a date, not a time, and a published activity is already
in the positions read after it. So each activity is placed (`at`, for the drift check) at
the moment the position manager first saw it, and the tick reads positions only after
applying them: the snapshot holds every activity applied before it, and a split re-bases
the exit state before the exits (and the protective stops) see the new prices. A position
change the broker makes before publishing its activity shows as a mismatch for a sync or
two, then the activity explains it.

Which activities: those dated from the day the position manager first read activities
for the account (`position_activity_reads.since`: older ones are history its first
baseline already holds), looking back a week from the last read (Alpaca may file an
activity under an earlier date: an expiry processed over a weekend).

Never while Postgres is away or the outage buffer still holds rows (the last synced
positions, which a split ratio and the ownership of a closed contract are read against,
may be stale then): the activities wait for the next tick; the broker keeps them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, time, timedelta
from decimal import Decimal

from ops.broker import Broker, BrokerError
from ops.core import activities as act
from ops.core.exits import NEW_YORK
from ops.core.models import NonTradeActivity, OptionSymbol
from ops.runtime.errors import underlying
from ops.store import StorageUnavailable
from ops.store import activities as aq
from ops.store import positions as pq
from ops.store.ownership import managed_quantities
from ops.store.store import Store

log = logging.getLogger(__name__)

LOOKBACK = timedelta(days=7)


@dataclass(slots=True)
class ActivityCounters:
    activity_reads: int = 0
    activities_applied: int = 0
    activities_skipped: int = 0  # reads skipped: Postgres away or the buffer not replayed
    activities_read_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class ActivityRun:
    """What one run did: the activities applied, the symbols whose exit state a split
    re-based or reset (the position manager re-reads those), the failure if any."""

    applied: tuple[act.Applied, ...] = ()
    rebased: frozenset[str] = frozenset()
    failures: tuple[str, ...] = field(default=())


class ActivityApplier:
    """One account's non-trade activities; call `run()` at the start of every tick."""

    def __init__(self, *, account: str, store: Store, broker: Broker, process: str,
                 now: Callable[[], datetime]) -> None:
        self.account = account
        self.store = store
        self.broker = broker
        self.process = process
        self._now = now
        self.counters = ActivityCounters()

    async def run(self, held_before: Mapping[str, Decimal] | None = None) -> ActivityRun:
        """Read, plan and apply; never raises (a failure is returned, the tick goes on).
        `held_before`: positions known from before a split that the last sync already
        shows split (the position manager's split hold), read instead of the sync's."""
        try:
            return await self._run(held_before or {})
        except StorageUnavailable as exc:
            self.counters.activities_skipped += 1
            log.info("account %s: activities not applied: postgres unreachable (%s)",
                     self.account, type(underlying(exc)).__name__)
            return ActivityRun()
        except Exception as exc:
            if isinstance(exc, BrokerError):
                self.counters.activities_read_errors += 1
                log.warning("account %s: activities not read: %s", self.account, exc)
            else:
                log.exception("account %s: applying activities failed", self.account)
            return ActivityRun(failures=(f"activities: {type(exc).__name__}: {exc}",))

    async def _run(self, held_before: Mapping[str, Decimal]) -> ActivityRun:
        if await self.store.buffer.has_pending():
            self.counters.activities_skipped += 1
            log.info("account %s: activities wait: the outage buffer still holds rows",
                     self.account)
            return ActivityRun()
        seen_at = self._now()
        reads = await self.store.direct(aq.load_reads, self.account)
        today = seen_at.astimezone(NEW_YORK).date()
        if reads is None:
            reads = aq.Reads(today, seen_at)
        start = max(reads.since, reads.checked_at.astimezone(NEW_YORK).date() - LOOKBACK)
        # A day earlier than wanted, at midnight New York: how a date-only activity is
        # compared with `after` is not documented; what is read twice is applied once.
        after = datetime.combine(start - timedelta(days=1), time(0), tzinfo=NEW_YORK)
        batch = [a for a in await self.broker.list_activities(act.FETCH_TYPES, after=after)
                 if a.date is None or a.date >= reads.since]
        self.counters.activity_reads += 1
        done = await self.store.direct(aq.applied_ids, self.account, (a.id for a in batch))
        new = [a for a in batch if a.id not in done]
        if new:
            applied = await self._apply(new, seen_at, held_before)
        else:
            applied = []
        await self.store.direct(aq.save_reads, self.account, aq.Reads(reads.since, seen_at))
        rebased = frozenset(a.symbol for a in applied
                            if a.symbol is not None and (a.exit_state or a.exit_reset))
        return ActivityRun(tuple(applied), rebased)

    async def _apply(self, new: Sequence[NonTradeActivity], at: datetime,
                     held_before: Mapping[str, Decimal]) -> list[act.Applied]:
        symbols = {a.symbol for a in new if a.symbol}
        for a in new:  # the underlying of a contract: its OPTRD may pair later
            occ = OptionSymbol.parse(a.symbol or "")
            if occ is not None:
                symbols.add(occ.underlying)
        splits = {a.symbol for a in new
                  if a.symbol and a.activity_type.strip().upper() in act.SPLITS}
        held_now: dict[str, Decimal] = {}
        for symbol in sorted(splits):
            # Read after the split was seen: it holds the split (the ratio check).
            pos = await self.broker.get_position(symbol)
            held_now[symbol] = pos.qty if pos is not None else Decimal(0)
        days = {a.date for a in new if a.date is not None}
        exits = await self.store.direct(pq.load_exit_states, self.account)
        held = await self.store.direct(aq.held, self.account, symbols)
        held.update((s, q) for s, q in held_before.items() if s in symbols)
        book = act.Book(
            applied=frozenset(),
            held=held,
            managed=await self.store.direct(managed_quantities, self.account, symbols),
            exits={s: t.state for s, t in exits.items() if s in symbols},
            legs=tuple(await self.store.direct(aq.legs, self.account, days)),
        )
        plan = act.plan(book, new, at=at, held_now=held_now)
        written = await self.store.direct(aq.apply_all, self.account, plan.applied, at=at,
                                          by=self.process)
        for w in written:
            self.counters.activities_applied += 1
            log.warning("account %s: activity %s %s %s applied: %s", self.account,
                        w.activity_type, w.activity.id, w.symbol or "-", w.effect)
        if len(written) < len(plan.applied):
            log.info("account %s: %d activit(ies) were applied by another process; "
                     "planning again next tick", self.account,
                     len(plan.applied) - len(written))
        return written


__all__ = ["LOOKBACK", "ActivityApplier", "ActivityCounters", "ActivityRun"]
