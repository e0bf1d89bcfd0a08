"""The position-manager role: position sync, drift guard and exit rules for one account.

What lives here: `PositionManager` (the per-tick work, testable without the role
runtime: it takes a Store, a bound Broker and getters for the exit rules and the kill
switch) and `build(ctx)`, which wires it to a ticker (`schedule.position_manager_s`).
What does not: the exit decisions (ops.core.exits), the SQL (ops.store.positions), flattening
(the dispatcher does it under the `flatten` kill switch).

Every tick:
0. Non-trade activities (ops/roles/activities.py): expiry, exercise, assignment, splits,
   ... read from the broker and applied exactly once (ownership adjusted, a split's exit
   state re-based, each counted by the drift check like a fill), before the positions
   are read.
1. Sync: broker positions -> `store.sync_positions` (current set + history rows), account
   summary -> `store.record_account`. These go through the store, so they are buffered
   during a Postgres outage like every other write.
2. Drift: broker positions vs what the stored fills say (ops/core/drift.py: baseline + fills
   placed by execution time; ops.store.positions). A mismatch is never overwritten
   silently, and never blamed on the broker before the pipeline's own fills are known
   complete: at the first sighting the position manager asks the stream role for a fill
   completeness check (`fill_check_requests`); a symbol still mismatched after
   `drift_strikes` consecutive syncs (default 2) AND a completeness check that started
   after the first sighting (or after `drift_strikes_max` syncs, 6, when no check runs:
   the stream role is down) opens a "position-drift" incident naming symbol / expected /
   actual and whose the gap is (fills missing, or a change no fill explains), and sets
   the account's control `drift_block` = {"blocked": true, "reason": ...}, which the
   dispatcher reads to refuse new entries. One agreeing sync lifts the block and closes
   the incident; so does the operator accepting the broker's positions (`ops positions
   accept TIER`, or the dashboard; a `position_accepts` row records who, when, before and
   after). The check is skipped (and says so in the counters) while Postgres is away or
   the outage buffer still holds rows: comparing against half-replayed events would
   raise false alarms. The first baseline of an account is adopted from the broker
   unconfirmed; until a sync agrees with it, a mismatch re-adopts instead of alarming
   (at first sight the database has no expectation of its own).
3. Exits (only while the market is open, when the account keeps market hours; sync and
   drift run whatever the clock says: positions can change while closed, through
   assignments or corporate actions, and a drift block must be able to lift): per
   position, water marks updated and persisted (table position_exit_state: opened_at,
   high/low water) so restarts keep them; `ops.core.exits.evaluate_exits` with the account's
   configured rules; a decision becomes a market order with
   `exit_client_order_id(account, symbol, opened_at, rule)`. Never two exits at once:
   a position with an open order whose client id starts with `ops-<account>-exit-` is
   skipped, and an exit whose submission ended "unknown" is settled by its id before
   anything else is sent for that symbol. A restart recomputes the same id (opened_at is
   persisted before any exit is sent), and the broker refuses a duplicate id, which
   `Broker.submit_order` turns into "accepted, the existing order". If that existing
   order is already over (filled/canceled) while a position is still there, the position
   is a new one (reopened between two syncs, or a partial exit's rest): it gets a new
   opened_at, so the next decision uses a fresh id. Exits run under the
   halt and reduce-only kill switches (they reduce risk) and not under flatten (the
   dispatcher is closing everything then).

How an exit is recorded: the order goes to `orders` through `store.upsert_orders` at
once (the stream will also store it and its events), and the decision with its rule,
reason and submit outcome goes to `exit_decisions`. Not as a signal row: the dispatcher
claims pending signals and would send it a second time under another client id.

A refused exit is an incident, not only a log line (issue 13.3): the broker's refusal
(pattern-day-trading protection, a rejected key, shares held by other orders, ...) becomes
incident `exit-refused` with dedupe key `exit-refused:<account>:<symbol>`, opened in the
tick that was refused and worded by ops.core.refusals (account, symbol, order, quantity, side,
the broker's message and what to do). The same refusal again keeps that one incident
(seen again: its text is refreshed). It closes itself, recording why (close_reason), when
a later exit of the symbol is accepted or when the position is gone at the broker
(checked at every sync, whatever the clock says; open ones are read back from the store,
so a restart's or another process's incident of the same kind is closed too). An exit
refused for pattern-day-trading is not sent again before the next session open (the
broker's clock; `ops.core.refusals.retry_after`), when closing it is no longer a day trade; the
incident says when. That time is kept in memory: a restarted process tries once more.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from ops.broker import Broker, BrokerError
from ops.core import activities as act
from ops.core import drift, refusals
from ops.core.exits import (
    ExitDecision,
    ExitRules,
    PositionState,
    evaluate_exits,
    exit_client_order_id,
    update_water_marks,
)
from ops.core.models import (
    KillSwitch,
    OptionSymbol,
    Order,
    OrderRequest,
    OrderType,
    Position,
    TimeInForce,
    kill_switch_in,
)
from ops.core.ownership import Holding, split
from ops.core.risk import position_intent, qty_text
from ops.roles.activities import ActivityApplier
from ops.roles.drift_guard import DRIFT_CONTROL, DRIFT_KIND, DriftGuard, drift_dedupe_key
from ops.roles.protective_stops import ProtectiveStops, Target
from ops.roles.refusal_incidents import RefusalIncidents
from ops.runtime.daemon import Service
from ops.store import StorageUnavailable
from ops.store import positions as pq
from ops.store.ownership import managed_quantities
from ops.store.store import Store

if TYPE_CHECKING:
    from ops.roles.runtime import RoleContext
    from ops.runtime.ticker import Slot

log = logging.getLogger(__name__)

ROLE = "position-manager"
__all__ = ["DRIFT_CONTROL", "DRIFT_KIND", "ROLE", "PositionCounters", "PositionManager",
           "build", "drift_dedupe_key", "exit_prefix", "read_kill_switch"]


def exit_prefix(account: str) -> str:
    return f"ops-{account}-exit-"


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def read_kill_switch(store: Store, account: str) -> KillSwitch:
    """The account's kill switch from `controls` (decoded by
    `ops.core.models.kill_switch_from_value`: an unreadable value is HALT, never off)."""
    return kill_switch_in((await store.controls(account)).rows)


@dataclass(slots=True)
class PositionCounters:
    syncs: int = 0
    positions: int = 0
    drift_checks: int = 0
    drift_skipped: int = 0
    drift_mismatches: int = 0  # symbols mismatched at the last check
    drift_blocked: int = 0  # 1 while the account is blocked
    exits_submitted: int = 0
    exits_rejected: int = 0
    exits_unknown: int = 0
    exits_waiting: int = 0  # decisions not sent because an exit is already open
    exits_stale: int = 0  # exit ids found used by a finished order: position re-tracked
    exits_idle: int = 0  # ticks that skipped exits: market closed
    exits_refused_open: int = 0  # symbols with an open exit-refused incident
    exits_deferred: int = 0  # decisions held back: a PDT-refused exit waits for the next open
    split_held: int = 0  # symbols whose exits and stop wait: changed like a split, not re-based
    positions_external: int = 0  # held symbols with an external part (never sold here)
    exits_ownership_unknown: int = 0  # ticks without exits: ownership not readable
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class PositionManager:
    """One account's position sync, drift guard and exits; call `tick()` per slot."""

    def __init__(
        self,
        *,
        account: str,
        store: Store,
        broker: Broker,
        process: str,
        exit_rules: Callable[[], ExitRules],
        kill_switch: Callable[[], Awaitable[KillSwitch]] | None = None,
        drift_strikes: int = 2,
        drift_strikes_max: int = 6,
        now: Callable[[], datetime] = _utcnow,
        market_open: Callable[[], Awaitable[bool]] | None = None,
        secret_id: str | None = None,
        manage_external: Callable[[], bool] | None = None,
        protective_stops: Callable[[], bool] | None = None,
    ) -> None:
        self.account = account
        self.store = store
        self.broker = broker
        self.process = process
        self._rules = exit_rules
        self._kill_switch = kill_switch or (lambda: read_kill_switch(store, account))
        self._now = now
        self._market_open = market_open
        self.counters = PositionCounters()
        self.drift = DriftGuard(account=account, store=store, process=process,
                                counters=self.counters, drift_strikes=drift_strikes,
                                drift_strikes_max=drift_strikes_max)
        self._tracked: dict[str, pq.TrackedPosition] = {}
        self._tracked_loaded = False
        self._unsaved: set[str] = set()  # symbols whose state could not be persisted yet
        self._unsettled: dict[str, str] = {}  # symbol -> exit cid whose submit was "unknown"
        # symbol -> when a refused exit is worth sending again (PDT: the next session open).
        self._retry_at: dict[str, datetime] = {}
        # The previous read of each position (qty, average entry; None: not read yet) and
        # the symbols that changed like a split the applied activities do not explain yet.
        self._last_seen: dict[str, tuple[Decimal, Decimal, Decimal | None]] | None = None
        # symbol -> (the quantity before, what was seen)
        self._split_held: dict[str, tuple[Decimal, str]] = {}
        self.secret_id = secret_id  # named (never read) when the broker rejects the key
        self._manage_external = manage_external or (lambda: False)
        self._managed_cache: dict[str, Decimal] = {}  # symbol -> last read managed qty
        self._managed_known = False
        self.refusals = RefusalIncidents(store, kind=refusals.EXIT_REFUSED, account=account,
                                         process=process)
        # Expiry, exercise, assignment, splits: applied once each (ops/roles/activities.py).
        self.activities = ActivityApplier(account=account, store=store, broker=broker,
                                          process=process, now=now)
        # Stops resting at the broker (ops/roles/protective_stops.py). None: off (the role
        # passes the account's `protective_stops`, default on).
        self.stops = ProtectiveStops(account=account, broker=broker, store=store,
                                     process=process, secret_id=secret_id,
                                     enabled=protective_stops or (lambda: False))

    # -- the tick ----------------------------------------------------------------------------

    async def tick(self, slot: Slot | None = None) -> None:
        """Sync, check drift, apply exits. Raises at the end if a step failed (the run
        ledger then shows the error), but a failed step never skips the later ones."""
        # Non-trade activities first: the positions read next hold every one applied, and
        # the exit state a split re-based is read back before any exit sees new prices.
        activity = await self.activities.run(
            {s: before for s, (before, _) in self._split_held.items()})
        if activity.rebased:  # re-read from the store (re-based), or tracked afresh (reset)
            for symbol in activity.rebased:
                self._tracked.pop(symbol, None)
            self._tracked_loaded = False
        now = self._now()
        positions = await self.broker.list_positions()
        await self._hold_splits(positions, activity.rebased)
        self.stops.observe(positions)
        answered = self._now()
        self.drift.snapshot_answered = answered
        self.drift.snapshot_cut = drift.Cut.around(now, answered)
        info = await self.broker.get_account()
        await self.store.sync_positions(self.account, positions, now)
        await self.store.record_account(self.account, info, now)
        self.counters.syncs += 1
        self.counters.positions = len(positions)
        failures: list[str] = [*activity.failures]
        steps = [self._check_drift, self._clear_refusals]
        if self._market_open is None or await self._market_open():
            steps.append(self._apply_exits)
        else:
            self.counters.exits_idle += 1
        steps.append(self._protect)
        for step in steps:
            try:
                await step(positions, now)
            except Exception as exc:
                self.counters.errors += 1
                log.exception("account %s: %s failed", self.account, step.__name__)
                failures.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
        if failures:
            raise RuntimeError("; ".join(failures))

    # -- splits not re-based yet ------------------------------------------------------------

    async def _hold_splits(self, positions: Sequence[Position], rebased: frozenset[str]
                           ) -> None:
        """Hold the exits and the protective stop of a position that changed like a split
        since the previous read (ops.core.activities.looks_like_split) while no applied split
        activity re-based its exit state: the broker can show the split before its
        activity is published (or between this tick's activity read and its position
        read), and an exit state that is not re-based reads a 2:1 split as a 50 % loss.
        Held until the activity is applied or the position is gone; the first read after
        a start compares with the last stored sync."""
        for symbol in rebased:
            if self._split_held.pop(symbol, None) is not None:
                log.warning("account %s: %s re-based by its split activity; exits and the "
                            "protective stop resume", self.account, symbol)
        if self._last_seen is None:
            self._last_seen = await self._stored_positions()
        seen = {p.symbol: (p.qty, p.avg_entry_price, p.current_price)
                for p in positions if p.qty != 0}
        for symbol, (qty, avg, price) in seen.items():
            before = self._last_seen.get(symbol)
            if (before is None or symbol in rebased or symbol in self._split_held
                    or not act.looks_like_split(before, (qty, avg, price))):
                continue
            what = (f"{qty_text(before[0])} @ {before[1]} -> {qty_text(qty)} @ {avg}, the "
                    "cost basis unchanged")
            self._split_held[symbol] = (before[0], what)
            log.warning("account %s: %s changed like a split (%s) and no split activity is "
                        "applied yet: its exits and protective stop wait for it",
                        self.account, symbol, what)
        for gone in set(self._split_held) - set(seen):
            del self._split_held[gone]
        self._last_seen = seen
        self.counters.split_held = len(self._split_held)

    async def _stored_positions(self) -> dict[str, tuple[Decimal, Decimal, Decimal | None]]:
        try:
            snap = await self.store.positions(self.account)
        except StorageUnavailable:
            return {}
        return {r.position.symbol: (r.position.qty, r.position.avg_entry_price,
                                    r.position.current_price)
                for r in snap.rows if r.position.qty != 0}

    # -- refused exits -----------------------------------------------------------------------

    async def _clear_refusals(self, positions: Sequence[Position], now: datetime) -> None:
        """Close the exit-refused incidents of positions the broker no longer has."""
        held = {p.symbol for p in positions if p.qty != 0}
        await self.refusals.sync()
        await self.refusals.close_all_but(
            held, lambda s: f"the position in {s} is gone at the broker (nothing left to "
                            "exit)", now)
        self.counters.exits_refused_open = len(self.refusals.open_symbols)

    async def _check_drift(self, positions: Sequence[Position], now: datetime) -> None:
        await self.drift.check(positions, now)

    # -- exits -------------------------------------------------------------------------------

    async def _load_tracked(self) -> None:
        if self._tracked_loaded:
            return
        try:
            stored = await self.store.direct(pq.load_exit_states, self.account)
        except StorageUnavailable:
            log.warning("account %s: exit state not loadable (postgres away); tracking "
                        "from now and retrying next tick", self.account)
            return
        # What was stored before a restart is the older truth (it wins); positions first
        # seen while Postgres was away keep their in-memory state and get saved.
        self._unsaved |= set(self._tracked) - set(stored)
        self._tracked = {**self._tracked, **stored}
        self._tracked_loaded = True

    async def _persist(self, symbol: str, tracked: pq.TrackedPosition, now: datetime) -> None:
        try:
            await self.store.direct(pq.save_exit_state, self.account, symbol, tracked, now)
            self._unsaved.discard(symbol)
        except StorageUnavailable:
            self._unsaved.add(symbol)

    async def _apply_exits(self, positions: Sequence[Position], now: datetime) -> None:
        await self._load_tracked()
        held = [p for p in positions if p.qty != 0]
        symbols = {p.symbol for p in held}
        for gone in set(self._tracked) - symbols:
            del self._tracked[gone]
            self._unsettled.pop(gone, None)
            self._retry_at.pop(gone, None)
        if self._tracked_loaded:
            try:
                await self.store.direct(pq.delete_exit_states, self.account, symbols)
            except StorageUnavailable:
                pass
        mode = await self._kill_switch()
        rules = self._rules()
        owned = await self._ownership(held)
        if owned is None:
            return
        self.counters.positions_external = sum(1 for h in owned.values() if h.external)
        prices = await self._prices(held)
        failures: list[str] = []
        open_exits: set[str] | None = None
        for whole in held:
            # Exit rules act on the managed lot only; external lots are never sold here.
            holding = owned[whole.symbol]
            if holding.managed == 0 or whole.symbol in self._split_held:
                continue
            p = replace(whole, qty=holding.managed)
            price = prices.get(p.symbol)
            if price is None or price <= 0:
                log.warning("account %s: no price for %s; exit rules not evaluated",
                            self.account, p.symbol)
                continue
            try:
                tracked = self._track(p, price, now)
                if self._tracked.get(p.symbol) != tracked or p.symbol in self._unsaved:
                    self._tracked[p.symbol] = tracked
                    # Before any exit is sent: its client order id is built from opened_at.
                    await self._persist(p.symbol, tracked, now)
                decision = evaluate_exits(p, tracked.state, price, rules, now)
                if decision is None:
                    continue
                if mode is KillSwitch.FLATTEN:
                    log.info("account %s: %s (not sent: kill switch flatten, the dispatcher "
                             "is closing positions)", self.account, decision.reason)
                    continue
                if open_exits is None:
                    open_exits = await self._open_exit_symbols()
                if p.symbol in open_exits or not await self._settled(p.symbol):
                    self.counters.exits_waiting += 1
                    continue
                retry_at = self._retry_at.get(p.symbol)
                if retry_at is not None and now < retry_at:
                    self.counters.exits_deferred += 1
                    continue
                await self._submit_exit(decision, tracked, price, now)
            except Exception as exc:  # one position's trouble must not stop the others' exits
                self.counters.errors += 1
                log.exception("account %s: exit handling of %s failed", self.account, p.symbol)
                failures.append(f"{p.symbol}: {type(exc).__name__}: {exc}")
        if failures:
            raise RuntimeError("exits: " + "; ".join(failures))

    async def _ownership(self, held: Sequence[Position]) -> dict[str, Holding] | None:
        """Each held position split into managed and external (ops/core/ownership.py), or None
        when ownership cannot be known (Postgres away and nothing cached): then no exit is
        sent, since a sale could hit a lot the pipeline does not own."""
        if self._manage_external():
            return {p.symbol: split(p.symbol, p.qty, p.qty, manage_external=True)
                    for p in held}
        try:
            raw = await self.store.direct(managed_quantities, self.account,
                                          [p.symbol for p in held])
            self._managed_cache.update(raw)
            for p in held:
                if p.symbol not in raw:
                    self._managed_cache[p.symbol] = Decimal(0)
            self._managed_known = True
        except StorageUnavailable:
            if not self._managed_known:
                log.warning("account %s: ownership unknown (Postgres unreachable, nothing "
                            "cached): no exit sent this tick", self.account)
                self.counters.exits_ownership_unknown += 1
                return None
        return {p.symbol: split(p.symbol, p.qty, self._managed_cache.get(p.symbol, Decimal(0)))
                for p in held}

    async def _prices(self, held: Sequence[Position]) -> dict[str, Decimal]:
        """The broker's current price per position; latest trades fill any gap."""
        prices = {p.symbol: p.current_price for p in held if p.current_price}
        missing = [p.symbol for p in held if p.symbol not in prices]
        if missing:
            try:
                prices.update(await self.broker.latest_trades(missing))
            except BrokerError as exc:
                log.warning("account %s: latest trades for %s failed: %s", self.account,
                            ", ".join(missing), exc)
        return {s: Decimal(v) for s, v in prices.items() if v is not None}

    def _track(self, p: Position, price: Decimal, now: datetime) -> pq.TrackedPosition:
        long = p.qty > 0
        have = self._tracked.get(p.symbol)
        if have is None or have.long != long:
            # First sight, or the position flipped through zero between two syncs: a new
            # position (new opened_at, hence new exit ids), marks starting at its entry.
            entry = p.avg_entry_price if p.avg_entry_price > 0 else price
            have = pq.TrackedPosition(PositionState.opened(now, entry), long)
        return pq.TrackedPosition(update_water_marks(have.state, price), long)

    async def _open_exit_symbols(self) -> set[str]:
        prefix = exit_prefix(self.account)
        orders = await self.broker.list_orders(status="open")
        return {o.symbol for o in orders if o.client_order_id.startswith(prefix)}

    async def _settled(self, symbol: str) -> bool:
        """False while an earlier exit of `symbol` is still of unknown fate."""
        cid = self._unsettled.get(symbol)
        if cid is None:
            return True
        res = await self.broker.settle(cid)
        if res.outcome == "unknown":
            log.warning("account %s: exit %s still unknown at the broker; not sending another",
                        self.account, cid)
            return False
        del self._unsettled[symbol]
        if res.order is not None:
            await self._store_order(res.order)
            return res.order.is_terminal  # open: wait for it; terminal: may exit again
        return True

    async def _store_order(self, order: Order) -> None:
        # Racing the stream's insert of the same new order is safe since migration 0007.
        await self.store.upsert_orders(self.account, [order])

    async def _submit_exit(self, d: ExitDecision, tracked: pq.TrackedPosition, price: Decimal,
                           now: datetime) -> None:
        cid = exit_client_order_id(self.account, d.symbol, tracked.state.opened_at, d.rule)
        # The resting protective stop is cancelled (and that confirmed) first: never both.
        wait = await self.stops.before_exit(d.symbol, cid)
        if wait is not None:
            self.counters.exits_waiting += 1
            log.warning("account %s: exit of %s not sent: %s", self.account, d.symbol, wait)
            return
        # An option exit says it closes (Alpaca's position_intent; the held side decides).
        intent = (position_intent(d.side, Decimal(1) if tracked.long else Decimal(-1)).value
                  if OptionSymbol.parse(d.symbol) is not None else None)
        req = OrderRequest(symbol=d.symbol, side=d.side, client_order_id=cid, qty=d.qty,
                           order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY,
                           position_intent=intent)
        res = await self.broker.submit_order(req)
        if (res.outcome == "accepted" and res.http_status == 422 and res.order is not None
                and res.order.is_terminal):
            # The broker already had this id, from an exit that is over (filled, canceled)
            # while a position is still here: a new position in the same direction opened
            # between two syncs, or the rest after a partial exit. Start a new position
            # epoch (fresh opened_at, hence fresh ids); the next tick decides again.
            self.counters.exits_stale += 1
            fresh = pq.TrackedPosition(PositionState.opened(now, price), tracked.long)
            self._tracked[d.symbol] = fresh
            await self._persist(d.symbol, fresh, now)
            log.warning("account %s: exit id %s belongs to a finished order (%s); %s is "
                        "tracked as a new position from now", self.account, cid,
                        res.order.status, d.symbol)
            return
        if res.outcome == "accepted":
            self.counters.exits_submitted += 1
            log.warning("account %s: exit order %s sent: %s", self.account, cid, d.reason)
        elif res.outcome == "rejected":
            self.counters.exits_rejected += 1  # logged (once per cause) by self.refusals
        else:
            self.counters.exits_unknown += 1
            self._unsettled[d.symbol] = cid
            log.error("account %s: exit order %s outcome unknown (%s); settling by id before "
                      "anything else: %s", self.account, cid, res.reason, d.reason)
        if res.order is not None:
            await self._store_order(res.order)
        record = pq.ExitRecord(
            client_order_id=cid, account=self.account, symbol=d.symbol, rule=d.rule.value,
            side=d.side.value, qty=d.qty, reason=d.reason, outcome=res.outcome,
            outcome_reason=res.reason, broker_order_id=res.order.id if res.order else None,
            decided_at=now,
        )
        try:
            await self.store.direct(pq.record_exit_decision, record)
        except StorageUnavailable:
            log.warning("account %s: exit decision %s not recorded (postgres away): %s",
                        self.account, cid, d.reason)
        if res.outcome == "accepted":
            self._retry_at.pop(d.symbol, None)
            await self.refusals.accepted(
                d.symbol, f"exit order {cid} ({d.side.value} {d.qty}) accepted by the broker",
                now)
        elif res.outcome == "rejected":
            refusal = refusals.Refusal(res.http_status, res.code, res.reason or "")
            detail = refusals.describe(
                refusal, what=f"the {d.rule.value} exit", account=self.account,
                symbol=d.symbol, qty=d.qty, side=d.side.value, order=cid,
                secret_id=self.secret_id)
            detail += f" (exit rule: {d.reason})"
            retry = await self._retry_after(refusal)
            if retry is not None:
                self._retry_at[d.symbol] = retry
                detail += (f"; sent again at the next session open, "
                           f"{retry.astimezone(UTC):%Y-%m-%d %H:%M} UTC")
                log.warning("account %s: exit of %s refused (pattern-day-trading); next try "
                            "at the session open %s", self.account, d.symbol, retry)
            await self.refusals.refused(d.symbol, detail, now)
        self.counters.exits_refused_open = len(self.refusals.open_symbols)

    async def _retry_after(self, refusal: refusals.Refusal) -> datetime | None:
        """When a refused exit is worth sending again (ops.core.refusals.retry_after on the
        broker's clock); None when the clock cannot be read (the next tick decides again)."""
        if refusals.classify(refusal) is not refusals.Cause.PDT:
            return None
        try:
            clock = await self.broker.get_clock()
        except BrokerError as exc:
            log.warning("account %s: clock not read after a PDT refusal: %s", self.account, exc)
            return None
        return refusals.retry_after(refusal, clock)

    # -- protective stops --------------------------------------------------------------------

    async def _protect(self, positions: Sequence[Position], now: datetime) -> None:
        """Stops resting at the broker for the managed positions, whatever the clock says;
        left as they are while ownership or water marks are unknown, and under flatten."""
        if not self.stops.active():
            return
        if await self._kill_switch() is KillSwitch.FLATTEN:
            return self.stops.skip("kill switch flatten: the dispatcher closes everything")
        await self._load_tracked()
        held = [p for p in positions if p.qty != 0]
        owned = await self._ownership(held)
        if owned is None or not self._tracked_loaded:
            return self.stops.skip("ownership or water marks unknown (Postgres unreachable)")
        targets: dict[str, Target] = {}
        for whole in held:
            if whole.symbol in self._split_held:
                continue  # left as it is (ops.roles.protective_stops: `hold`)
            p = replace(whole, qty=owned[whole.symbol].managed)
            tracked = self._tracked.get(p.symbol)
            price = p.current_price or p.avg_entry_price
            if p.qty == 0 or (tracked is None and price <= 0):
                continue
            if tracked is None or tracked.long != (p.qty > 0):
                # First seen while the exits wait for the open: tracked as they would.
                tracked = self._track(p, price, now)
                self._tracked[p.symbol] = tracked
                await self._persist(p.symbol, tracked, now)
            targets[p.symbol] = Target(p, tracked.state)
        await self.stops.reconcile(targets, self._rules(), now,
                                   hold=frozenset(self._split_held))

# --- the role -----------------------------------------------------------------------------


async def build(ctx: RoleContext) -> Sequence[Service]:
    """The position manager's services: one ticker at schedule.position_manager_s."""
    account, broker, acct = ctx.account, ctx.broker, ctx.account_cfg
    if account is None or broker is None or acct is None:
        raise ValueError("position-manager runs per account: `ops run position-manager "
                         "--account NAME` (with a bound broker)")

    initial = ExitRules.from_config(acct.exits)

    def rules() -> ExitRules:
        # Read at every run: a hot reload of [accounts.NAME.exits] applies at the next tick.
        cfg = ctx.account_cfg
        return initial if cfg is None else ExitRules.from_config(cfg.exits)

    def manage_external() -> bool:
        # `[accounts.NAME] manage_external = true`: every position is the pipeline's to
        # manage. Read at every tick (hot reload).
        cfg = ctx.account_cfg
        return bool(getattr(cfg, "manage_external", False))

    def protective_stops() -> bool:
        # `[accounts.NAME] protective_stops` (default on), read at every tick (hot reload).
        return bool(getattr(ctx.account_cfg, "protective_stops", True))

    pm = PositionManager(account=account, store=ctx.store, broker=broker, process=ctx.process,
                         exit_rules=rules, kill_switch=ctx.kill_switch,
                         market_open=ctx.market_open, secret_id=acct.secret_id,
                         manage_external=manage_external, protective_stops=protective_stops)
    # The interval equals the configured one, so the runtime follows its hot reloads. Not
    # gated on market hours: only the exits are (see the module docstring).
    ticker = ctx.ticker(ROLE, acct.schedule.position_manager_s, pm.tick, market_gate=False)
    ctx.add_counters(ROLE, pm.counters.as_dict)
    ctx.add_counters("activities", pm.activities.counters.as_dict)
    ctx.add_counters("protective-stops", pm.stops.counters.as_dict)
    return [ticker]
