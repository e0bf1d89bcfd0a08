"""The position manager's drift guard: broker positions against what the stored fills say.

What lives here: `DriftGuard.check(positions, now)` (called by `PositionManager.tick` with
the snapshot's timing in `snapshot_cut` / `snapshot_answered`), the drift block control,
the `position-drift` incident, the operator's accepts, and the request to the stream role
for a fill completeness check before a mismatch is blamed on the broker. The decisions are
ops.core.drift; the SQL is ops.store.positions and ops.store.fills. The "fills" compared include
the non-trade activities applied (expiry, exercise, assignment, splits: ops/roles/
activities.py, placed where the position manager first saw them): drift explained by an
activity is not drift. See ops/roles/
position_manager.py's module docstring, step 2, for the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from ops.core import drift
from ops.core.models import Position
from ops.runtime.errors import underlying
from ops.store import StorageUnavailable, Store
from ops.store import fills as fq
from ops.store import positions as pq

log = logging.getLogger(__name__)


class DriftCounters(Protocol):
    """The counters a drift check updates (the position manager's PositionCounters)."""

    drift_checks: int
    drift_skipped: int
    drift_mismatches: int
    drift_blocked: int

DRIFT_KIND = "position-drift"
DRIFT_CONTROL = "drift_block"


def drift_dedupe_key(account: str) -> str:
    return f"{DRIFT_KIND}:{account}"


class DriftGuard:
    """One account's drift state across ticks (strikes, the block, the first mismatch)."""

    def __init__(self, *, account: str, store: Store, process: str,
                 counters: DriftCounters, drift_strikes: int = 2,
                 drift_strikes_max: int = 6) -> None:
        if drift_strikes < 1:
            raise ValueError(f"drift_strikes must be >= 1, got {drift_strikes}")
        self.account = account
        self.store = store
        self.process = process
        self.counters = counters
        self.drift_strikes = drift_strikes
        # Syncs a mismatch may last before blocking when no fill check has run since it
        # was first seen (the stream role is down or failing).
        self.drift_strikes_max = max(drift_strikes, drift_strikes_max)
        self._strikes: dict[str, int] = {}
        self._blocked: bool | None = None  # None: not read from controls yet
        self.snapshot_cut: drift.Cut | None = None  # of the positions read this tick
        self.snapshot_answered: datetime | None = None  # when the broker answered
        self._mismatch_seen: datetime | None = None  # the first mismatching snapshot's


    async def _blocked_now(self) -> bool:
        if self._blocked is None:
            snap = await self.store.controls(self.account)
            value = next((c.value for c in snap.rows if c.key == DRIFT_CONTROL), None)
            self._blocked = bool(isinstance(value, Mapping) and value.get("blocked"))
        return self._blocked

    async def check(self, positions: Sequence[Position], now: datetime) -> None:
        actual = drift.nonzero((p.symbol, p.qty) for p in positions)
        cut = self.snapshot_cut or drift.Cut.around(now, now)
        try:
            if await self.store.buffer.has_pending():
                self._skip_drift("the outage buffer still holds rows")
                return
            blocked = await self._blocked_now()
            baseline = await self.store.direct(pq.load_baseline, self.account)
            accepts = await self.store.direct(pq.pending_accepts, self.account)
            if accepts:
                await self._accept(accepts, actual, cut, baseline, now, blocked)
                return
            if baseline is None:
                await self.store.direct(pq.save_baseline, self.account, actual, cut, now,
                                        confirmed=False)
                log.info("account %s: drift baseline adopted from the broker (%d positions)",
                         self.account, len(actual))
                return
            deltas = await self.store.direct(pq.fill_deltas, self.account, baseline.cut.lo,
                                             cut.hi)
        except StorageUnavailable as exc:
            self._skip_drift(f"postgres unreachable ({type(underlying(exc)).__name__})")
            return
        self.counters.drift_checks += 1
        cmp = drift.compare(baseline.positions, baseline.cut, cut, deltas, actual)
        if cmp.unverifiable:
            log.warning("account %s: fills with unreadable side/qty for %s; not compared",
                        self.account, ", ".join(sorted(cmp.unverifiable)))
        self.counters.drift_mismatches = len(cmp.mismatches)
        if cmp.agree:
            self._strikes.clear()
            assert cmp.cut is not None
            await self.store.direct(pq.save_baseline, self.account, actual, cmp.cut, now,
                                    confirmed=True)
            if blocked:
                await self._unblock(now, f"positions agree again at {now.isoformat()}")
            return
        if not baseline.confirmed:
            await self.store.direct(pq.save_baseline, self.account, actual, cut, now,
                                    confirmed=False)
            log.info("account %s: unconfirmed drift baseline re-adopted (%s)", self.account,
                     "; ".join(m.describe() for m in cmp.mismatches))
            return
        seen = {m.symbol for m in cmp.mismatches}
        if not self._strikes:
            # First sighting: perhaps fills the stream missed. Ask the stream role for a
            # completeness check now, and blame nobody until one has run since.
            self._mismatch_seen = self.snapshot_answered or now
        self._strikes = {s: self._strikes.get(s, 0) + 1 for s in seen}
        firm = [m for m in cmp.mismatches if self._strikes[m.symbol] >= self.drift_strikes]
        checked = await self._checked_since_mismatch()
        if checked is None:
            await self._request_fill_check(now)
        if firm and not checked and max(self._strikes.values()) < self.drift_strikes_max:
            log.info("account %s: positions differ (%s); waiting for the stream role's fill "
                     "check before blocking", self.account,
                     "; ".join(m.describe() for m in cmp.mismatches))
            return
        if not firm:
            log.info("account %s: position mismatch seen once, re-checking next sync: %s",
                     self.account, "; ".join(m.describe() for m in cmp.mismatches))
            return
        await self._block(firm, blocked, now, checked)

    async def _accept(self, accepts: Sequence[pq.AcceptRecord], actual: dict[str, Decimal],
                      cut: drift.Cut, baseline: pq.Baseline | None, now: datetime,
                      blocked: bool) -> None:
        """The operator's `ops positions accept`: the broker's positions become the
        confirmed baseline; the request row records what the database expected before."""
        before: dict[str, Decimal] = {}
        if baseline is not None:
            deltas = await self.store.direct(pq.fill_deltas, self.account, baseline.cut.lo,
                                             cut.hi)
            before = drift.compare(baseline.positions, baseline.cut, cut, deltas,
                                   actual).expected
        who = ", ".join(sorted({a.requested_by for a in accepts}))
        changed = drift.position_mismatches(before, actual)
        detail = ("accepted the broker's positions"
                  + (": " + "; ".join(m.describe() for m in changed) if changed
                     else " (they already agreed)"))
        await self.store.direct(pq.apply_accepts, self.account, [a.id for a in accepts],
                                actual, cut, before=before, applied_by=self.process, at=now,
                                detail=detail)
        self._strikes.clear()
        self.counters.drift_mismatches = 0
        log.warning("account %s: %s, requested by %s", self.account, detail, who)
        if blocked:
            await self._unblock(now, f"broker positions accepted by {who} at {now.isoformat()}")

    async def _request_fill_check(self, now: datetime) -> None:
        try:
            await self.store.direct(fq.request_check, self.account, self.process, now)
        except StorageUnavailable:
            pass  # asked again at the next mismatch

    async def _checked_since_mismatch(self) -> fq.FillCheck | None:
        """The stream role's last completeness check, if it started after the broker
        answered the first mismatching snapshot (so every fill in it had its chance)."""
        try:
            check = await self.store.direct(fq.load_check, self.account)
        except StorageUnavailable:
            return None
        seen = self._mismatch_seen
        if check is None or seen is None or check.complete_through < seen:
            return None
        return check

    def _fills_note(self, check: fq.FillCheck | None) -> str:
        """Whose the mismatch is: the pipeline's (fills not known complete) or the
        broker's (every fill it reports is stored)."""
        if check is None:
            return (" No fill check of the stream role has completed since the mismatch "
                    f"was first seen (is {self.account}-stream running?): the database may "
                    "be missing fills; the block lifts by itself once they are stored.")
        if check.incomplete:
            return (f" {len(check.incomplete)} order(s) still have fills the database lacks "
                    "(the stream role keeps fetching them): the block lifts by itself once "
                    "they are stored.")
        return (" Every fill the broker reports is stored (fill check at "
                f"{check.checked_at.isoformat(timespec='seconds')}): the positions changed "
                "without a fill the database knows of, nor a non-trade activity (an order "
                "outside the pipeline? a corporate action or an assignment the broker has "
                "not published yet?).")

    def _skip_drift(self, why: str) -> None:
        self.counters.drift_skipped += 1
        log.info("account %s: drift check skipped: %s", self.account, why)

    async def _block(self, firm: Sequence[drift.Mismatch], already: bool,
                     now: datetime, check: fq.FillCheck | None) -> None:
        detail = (f"account {self.account}: broker positions differ from the database "
                  f"(on {self.drift_strikes} consecutive syncs): "
                  + "; ".join(m.describe() for m in firm)
                  + ". New entries are blocked until they agree again, or until an operator "
                  f"accepts the broker's positions (ops positions accept {self.account})."
                  + self._fills_note(check))
        value: dict[str, Any] = {
            "blocked": True,
            "reason": detail,
            "since": now.isoformat(),
            "symbols": {m.symbol: {"expected": str(m.expected), "actual": str(m.actual)}
                        for m in firm},
        }
        if not already:
            log.error("%s", detail)
            await self.store.open_incident(DRIFT_KIND, detail=detail, process=self.process,
                                           account=self.account,
                                           dedupe_key=drift_dedupe_key(self.account), at=now)
            await self.store.set_control(self.account, DRIFT_CONTROL, value, self.process, now)
            self._blocked = True
        self.counters.drift_blocked = 1

    async def _unblock(self, now: datetime, reason: str) -> None:
        log.warning("account %s: drift block lifted: %s", self.account, reason)
        await self.store.set_control(
            self.account, DRIFT_CONTROL, {"blocked": False, "reason": reason},
            self.process, now)
        await self.store.close_incident(dedupe_key=drift_dedupe_key(self.account), at=now)
        self._blocked = False
        self.counters.drift_blocked = 0
