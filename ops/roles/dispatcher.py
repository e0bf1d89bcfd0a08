"""The dispatcher role: claims an account's signals, gates them, submits their orders.

What lives here: `Dispatcher` (the role's core, testable without the role runtime: it
takes a Store, a bound Broker, the account name and getters for the risk limits and the
kill switch), `WakeLoop` (runs a pass whenever a NOTIFY arrives) and `build(ctx)` (wires
both, the LISTEN connection and the ticker into the role runtime). Decisions are
`ops.risk.evaluate`; queries are `ops.store.signals`.

One pass (`Dispatcher.run_pass`), serialised by a lock whichever way it was woken:
1. read the kill switch; flatten -> cancel open orders and close every position
   (idempotently: a position whose closing order is still working is left alone);
   reduce-only -> cancel open orders that would not reduce a position;
2. reconcile, once per process life, before anything is claimed (`reconcile`);
3. settle leftovers: signals still 'claimed' or 'unknown' are looked up at the broker by
   their deterministic client_order_id: found -> 'submitted'; definitively not found
   (HTTP 404) -> back to 'pending' and dispatched again below WITH THE SAME id (the broker
   refuses a duplicate id, so at most one order can ever exist per signal); lookup failed
   -> left as it is for the next pass (never re-sent blindly);
4. reject pending signals of accounts the config does not have (no dispatcher would
   ever claim them); claim pending signals (batch), refuse malformed rows
   (`parse_signal`), load the account state once (account, clock,
   positions, open orders, prices: in parallel), `evaluate` each signal, submit the
   allowed ones and record every outcome with its reason.

A pass is bounded in time (`pass_budget_s`): under a slow or erroring broker each submit
can cost seconds (rate limiter, settling lookups), and a pass that runs on would look
stalled to the watchdog. When the budget is spent, the claimed signals not yet sent are
put back to 'pending' untouched (no broker call was made for them) and the next pass,
woken at once, takes them with a fresh account state. Every pass sends at least one.

Choices:
- The ticker does not gate on market hours: the dispatcher must flatten, reconcile and
  settle while the market is closed, and a signal that arrives then is refused with the
  reason "market closed" rather than left to pile up silently.
- Under flatten, signals are gated as under reduce-only (ops.risk alone would refuse
  every order): entries are refused, an exit of what remains is allowed. It cannot race
  the closing orders: the gates see a position's `qty_available`, i.e. without the
  shares a working order (a closing one included) already sells, so a second sale of
  the same shares would open a short and is refused.
- A pass needs Postgres and an empty outage buffer before it claims: a decision still in
  the buffer would otherwise look like a leftover and be dispatched again. Until then
  dispatch is *paused*, and says so in the heartbeat counters (issue 13.5):
  `dispatch_paused` (1/0), `dispatch_paused_since` (epoch s), `dispatch_paused_for_s`,
  `dispatch_paused_reason` ("database unreachable" | "outage buffer not drained yet"),
  `signals_waiting` (this account's signals in the outage buffer, counted from the file
  every paused pass) and, once it resumed, `last_pause_s`. A paused pass is a completed
  run (nothing failed: the dispatcher did all it could), not an error; reconciliation
  waits for Postgres too.
- After an outage the waiting signals go through the same gates as any other, against a
  fresh broker snapshot: TTL (`signal_ttl_s`, `expires_at`) first, so a signal that waited
  too long is expired with a reason saying it was held back by the pause, never sent.
  No two signals size against one snapshot: within a pass each submitted order is
  folded into the state the next signal sees (`_after_submit`); across passes the
  snapshot is read open orders first, then positions, so an order filling between the two
  reads is counted twice at worst (the safe side) and never missed; and the orders this
  dispatcher submitted (`_inflight`) that the open-orders listing does not show are
  looked up by id, so one the listing has not caught up with still counts as open.
- Refusals: a flatten close the broker refuses opens incident `flatten-refused`
  (dedupe key `flatten-refused:<account>:<symbol>`, text from ops.refusals); it closes
  itself when a later close is accepted, when the position is gone, or when the kill
  switch leaves flatten. "Shares held by orders" just after this pass canceled orders in
  the symbol is a cancel still pending: an incident only if it lasts
  `FLATTEN_HELD_GRACE_S`. An exit *signal* (one that reduces a position) the broker
  refuses opens `exit-refused:<account>:<symbol>` (the position manager's kind; either
  role's accepted exit or the position being gone closes it). Entries the broker or a
  gate refuses stay signal rejections with their reason.

Test-only fault point: with the environment variable OPS_FAULT=dispatcher.after_submit
the process SIGKILLs itself right after the broker accepted an order and before the
decision is recorded (the crash window of invariant 2). Any other value, or none, is inert.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ops import refusals
from ops.broker import Broker, BrokerApiError, BrokerError
from ops.models import (
    OPTION_MULTIPLIER,
    KillSwitch,
    OptionSymbol,
    Order,
    OrderRequest,
    OrderType,
    Position,
    Side,
    TimeInForce,
)
from ops.risk import (
    AccountState,
    PositionSnapshot,
    RiskDecision,
    RiskLimits,
    SignalIntent,
    evaluate,
    order_qty,
    position_effect,
)
from ops.roles.refusal_incidents import RefusalIncidents
from ops.store import signals as sq
from ops.store.postgres import is_outage
from ops.store.signals import SignalListener, SignalRow

if TYPE_CHECKING:
    from ops.daemon import Service
    from ops.roles.runtime import RoleContext
    from ops.store.store import Store

log = logging.getLogger(__name__)

FAULT_ENV = "OPS_FAULT"
FAULT_AFTER_SUBMIT = "dispatcher.after_submit"
RECONCILE_KEY = "reconciliation"  # controls row: {"state": "reconciling"|"reconciled", ...}
DRIFT_KEY = "drift_block"  # controls row written by the position manager
#: How long "insufficient qty" on a flatten close may last while this dispatcher's own
#: cancels of that symbol's orders are pending, before it is an incident.
FLATTEN_HELD_GRACE_S = 10.0
#: How long an order this dispatcher submitted may be unknown to the broker's listings
#: (404 on lookup) and still count as in flight.
INFLIGHT_GRACE_S = 30.0
INFLIGHT_MAX = 1000
#: From this many in-flight orders missing from the open listing, one listing of recent
#: orders settles them instead of one lookup each.
INFLIGHT_BATCH = 3
PAUSE_DB = "database unreachable"
PAUSE_BUFFER = "outage buffer not drained yet"

KillSwitchGetter = Callable[[], Awaitable[KillSwitch]]
LimitsGetter = Callable[[], RiskLimits]
AccountsGetter = Callable[[], Sequence[str]]  # every configured account name


class NotReconciled(RuntimeError):
    """The account could not be reconciled yet; the dispatcher stays closed."""


class ReconcileWaitsForDatabase(NotReconciled):
    """Not reconciled because Postgres is away or the outage buffer is still draining:
    dispatch is paused, nothing failed."""


@dataclass(slots=True)
class DispatcherCounters:
    passes: int = 0
    claimed: int = 0
    submitted: int = 0
    rejected: int = 0
    expired: int = 0
    unknown: int = 0
    settled: int = 0
    requeued: int = 0
    canceled: int = 0
    closed: int = 0
    skipped_buffer: int = 0
    deferred: int = 0  # claimed signals given back unsent when a pass ran out of time
    inflight_lookups: int = 0  # in-flight orders looked up by id (not in the open listing)
    flatten_refused: int = 0  # flatten closes the broker refused
    exits_refused: int = 0  # exit signals the broker refused


@dataclass(frozen=True, slots=True)
class InFlight:
    """An order this dispatcher submitted, until the broker shows it finished."""

    order: Order
    submitted: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class Pause:
    """A span during which the dispatcher could not claim signals."""

    since: datetime
    until: datetime
    reason: str

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one signal became in one pass."""

    signal_id: int
    status: str  # submitted | rejected | expired | unknown
    reason: str | None
    broker_order_id: str | None = None


@dataclass(slots=True)
class PassReport:
    mode: KillSwitch
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: str | None = None  # why no signal was claimed, when that was deliberate


def _now() -> datetime:
    return datetime.now(UTC)


def drift_blocked(value: Any) -> bool:
    """Whether a 'drift_block' control value blocks entries.

    Accepted shapes: a bool, or an object whose "blocked" (default true) says so; a
    malformed value blocks (the safe side).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return bool(value.get("blocked", True))
    return value is not None


class Dispatcher:
    """The dispatcher of one account. Call `run_pass()` on every wake-up."""

    def __init__(
        self,
        *,
        store: Store,
        broker: Broker,
        account: str,
        limits: LimitsGetter,
        kill_switch: KillSwitchGetter,
        process: str = "dispatcher",
        batch: int = 50,
        fault: str | None = None,
        accounts: AccountsGetter | None = None,
        pass_budget_s: float = 5.0,
        secret_id: str | None = None,
    ) -> None:
        if pass_budget_s <= 0:
            raise ValueError(f"pass_budget_s must be > 0, got {pass_budget_s}")
        self.store = store
        self.broker = broker
        self.account = account
        self.process = process
        self._limits = limits
        self._kill_switch = kill_switch
        self._batch = batch
        self._fault = fault
        self._accounts = accounts
        self._pass_budget_s = pass_budget_s
        self._pass_deadline = 0.0  # monotonic; set at the start of each pass
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._flatten_orders: dict[str, str] = {}  # symbol -> our closing order id
        self._cid_re = re.compile(rf"^ops-{re.escape(account)}-sig-(\d+)$")
        self.reconciled_at: datetime | None = None
        self._mode = KillSwitch.OFF  # as read at the start of the current pass
        self._reconcile_since: datetime | None = None  # first attempt of this life
        self._price_errors: dict[str, str] = {}  # symbol -> why it has no latest trade
        self.stats = DispatcherCounters()
        self.secret_id = secret_id  # named (never read) when the broker rejects the key
        self.flatten_refusals = RefusalIncidents(store, kind=refusals.FLATTEN_REFUSED,
                                                 account=account, process=process)
        self.exit_refusals = RefusalIncidents(store, kind=refusals.EXIT_REFUSED,
                                              account=account, process=process)
        self._flatten_refusals_unknown = True  # may some be open (a previous life's)?
        self._held_since: dict[str, float] = {}  # symbol -> first "qty held" close refusal
        self._inflight: dict[str, InFlight] = {}  # broker order id -> what we submitted
        self._paused_since: datetime | None = None
        self._paused_reason = ""
        self._waiting = 0  # this account's signals in the outage buffer (while paused)
        self.last_pause: Pause | None = None

    # -- wiring ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a pass as soon as possible (a NOTIFY arrived)."""
        self._wake.set()

    async def woken(self) -> None:
        """Wait for the next `wake()` and consume it."""
        await self._wake.wait()
        self._wake.clear()

    @property
    def reconciled(self) -> bool:
        return self.reconciled_at is not None

    def counters(self) -> dict[str, int | float | str]:
        out: dict[str, int | float | str] = {
            k: getattr(self.stats, k) for k in DispatcherCounters.__slots__
        }
        out["reconciled"] = 1 if self.reconciled else 0
        out["reconciled_at"] = (self.reconciled_at.isoformat() if self.reconciled_at
                                else "reconciling")
        since = self._paused_since
        out["dispatch_paused"] = 0 if since is None else 1
        out["dispatch_paused_since"] = 0.0 if since is None else round(since.timestamp(), 3)
        out["dispatch_paused_for_s"] = (
            0.0 if since is None else round((_now() - since).total_seconds(), 1))
        out["dispatch_paused_reason"] = self._paused_reason
        out["signals_waiting"] = self._waiting
        out["last_pause_s"] = round(self.last_pause.seconds, 1) if self.last_pause else 0.0
        out["inflight"] = len(self._inflight)
        out["flatten_refused_open"] = len(self.flatten_refusals.open_symbols)
        return out

    # -- one pass -------------------------------------------------------------------------

    async def run_pass(self) -> PassReport:
        async with self._lock:
            self.stats.passes += 1
            self._pass_deadline = time.monotonic() + self._pass_budget_s
            mode = self._mode = await self._kill_switch()
            report = PassReport(mode)
            if mode is KillSwitch.FLATTEN:
                await self.flatten()
            else:
                self._flatten_orders.clear()
                await self._flatten_ended(mode)
                if mode is KillSwitch.REDUCE_ONLY:
                    await self.cancel_entry_orders()
            if await self.store.buffer.has_pending():
                # Decisions may still sit in the buffer: Postgres would show them as
                # leftovers. Claim (and reconcile) nothing until the buffer has drained.
                self.stats.skipped_buffer += 1
                report.skipped = PAUSE_BUFFER if self.store.database_reachable else PAUSE_DB
                await self._paused(report.skipped)
                return report
            try:
                if not self.reconciled:
                    await self.reconcile()
                await self.settle_leftovers()
                await self.reject_unknown_accounts()
                claimed = await sq.claim_pending(self.store.pool, self.account, self._batch)
            except ReconcileWaitsForDatabase as exc:
                report.skipped = PAUSE_BUFFER if str(exc) == PAUSE_BUFFER else PAUSE_DB
                await self._paused(report.skipped)
                return report
            except Exception as exc:
                if not is_outage(exc):
                    raise
                report.skipped = PAUSE_DB
                await self._paused(PAUSE_DB)
                return report
            self._resumed()
            if claimed:
                self.stats.claimed += len(claimed)
                report.outcomes = await self._dispatch(claimed, mode)
            if len(claimed) == self._batch:
                self.wake()  # a full batch: more may be waiting; the next pass takes them
            return report

    # -- outage pauses --------------------------------------------------------------------

    async def _paused(self, reason: str) -> None:
        """This pass could not claim: note since when and why, and count what waits."""
        if self._paused_since is None:
            self._paused_since = _now()
            log.warning("%s: dispatch paused: %s; signals wait until Postgres answers and "
                        "the outage buffer has drained", self.account, reason)
        elif reason != self._paused_reason:
            log.info("%s: dispatch still paused: %s", self.account, reason)
        self._paused_reason = reason
        counts = await sq.buffered_signal_counts(self.store.buffer.path)
        if counts is not None:
            self._waiting = counts.get(self.account, 0)

    def _resumed(self) -> None:
        if self._paused_since is None:
            return
        self.last_pause = Pause(self._paused_since, _now(), self._paused_reason)
        log.warning("%s: dispatch resumed after %.1fs paused (%s); %d signal(s) had waited "
                    "in the outage buffer: each is gated again against the broker's "
                    "current positions and open orders, and expired if past its TTL",
                    self.account, self.last_pause.seconds, self._paused_reason,
                    self._waiting)
        self._paused_since = None
        self._paused_reason = ""
        self._waiting = 0

    # -- reconciliation -------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Settle leftovers and sync open orders/positions with the broker; record it.

        Raises NotReconciled (after recording why) when it cannot finish; the dispatcher
        then stays closed and the next pass tries again.
        """
        if self._reconcile_since is None:
            self._reconcile_since = _now()
            await self._record_reconcile({"state": "reconciling",
                                          "since": self._reconcile_since.isoformat()})
        started = self._reconcile_since
        try:
            if await self.store.buffer.has_pending():
                raise ReconcileWaitsForDatabase(PAUSE_BUFFER)
            settled, requeued, unresolved = await self.settle_leftovers()
            if unresolved:
                raise NotReconciled(f"{unresolved} signal(s) could not be looked up at the "
                                    "broker yet")
            orders, positions = await asyncio.gather(
                self.broker.list_orders(status="open"), self.broker.list_positions())
            await self.store.upsert_orders(self.account, orders, self._links(orders))
            differences = await self._position_differences(positions)
        except (BrokerError, NotReconciled) as exc:
            await self._reconcile_failed(started, str(exc))
            if isinstance(exc, ReconcileWaitsForDatabase):
                raise
            raise NotReconciled(str(exc)) from None
        except Exception as exc:
            if not is_outage(exc):
                raise
            await self._reconcile_failed(started, f"database unreachable: {exc}")
            raise ReconcileWaitsForDatabase(f"{PAUSE_DB}: {exc}") from None
        now = _now()
        value = {
            "state": "reconciled", "at": now.isoformat(), "since": started.isoformat(),
            "open_orders": len(orders), "positions": len(positions),
            "settled_submitted": settled, "requeued": requeued,
            "position_differences": differences,
        }
        await self._record_reconcile(value)
        self.reconciled_at = now
        log.info("%s reconciled: %d open orders, %d positions, %d signals settled as "
                 "submitted, %d requeued%s", self.account, len(orders), len(positions),
                 settled, requeued,
                 f"; positions differ from the database: {differences}" if differences else "")

    async def _reconcile_failed(self, started: datetime, why: str) -> None:
        log.warning("%s: reconciliation not finished (%s); dispatcher stays closed",
                    self.account, why)
        await self._record_reconcile({"state": "reconciling", "since": started.isoformat(),
                                      "error": why})

    async def _record_reconcile(self, value: dict[str, Any]) -> None:
        await self.store.set_control(self.account, RECONCILE_KEY,
                                     {**value, "process": self.process}, by=self.process)

    async def _position_differences(self, broker_positions: Sequence[Position]) -> list[str]:
        """Broker vs database position quantities, reported (never overwritten here: the
        position manager owns positions and turns drift into a block and an incident)."""
        snap = await self.store.positions(self.account)
        stored = {p.position.symbol: p.position.qty for p in snap.rows}
        live = {p.symbol: p.qty for p in broker_positions}
        out = []
        for sym in sorted(set(stored) | set(live)):
            a, b = live.get(sym, Decimal(0)), stored.get(sym, Decimal(0))
            if a != b:
                out.append(f"{sym}: broker {a}, database {b}")
        return out

    def _links(self, orders: Sequence[Order]) -> dict[str, int]:
        links = {}
        for o in orders:
            m = self._cid_re.match(o.client_order_id)
            if m:
                links[o.client_order_id] = int(m.group(1))
        return links

    async def settle_leftovers(self) -> tuple[int, int, int]:
        """(settled as submitted, requeued, still unresolved) for 'claimed'/'unknown' rows."""
        settled = requeued = unresolved = 0
        for s in await sq.leftovers(self.store.pool, self.account):
            if self._budget_spent():
                break  # the rest stay as they are: the next pass settles them
            try:
                order = await self.broker.get_order_by_client_id(s.cid)
            except BrokerError as exc:
                unresolved += 1
                log.warning("signal %d (%s): lookup of %s failed, still %s: %s", s.id,
                            s.status, s.cid, s.status, exc)
                continue
            if order is not None:
                await self._record_submitted(s, order, "settled: the broker has the order")
                settled += 1
                self.stats.settled += 1
                continue
            why = (f"no broker order with client_order_id {s.cid} (was {s.status}); "
                   "dispatching again with the same id")
            if await sq.requeue(self.store.pool, self.account, s.id, why):
                requeued += 1
                self.stats.requeued += 1
                log.info("signal %d: %s", s.id, why)
        return settled, requeued, unresolved

    async def reject_unknown_accounts(self) -> None:
        """Signals for an account the config does not know would wait forever: refuse them
        with a reason (whichever dispatcher gets there first; see ops.store.signals)."""
        if self._accounts is None:
            return
        for sid, account in await sq.reject_unknown_accounts(
                self.store.pool, self._accounts(), self._batch):
            self.stats.rejected += 1
            log.warning("signal %d rejected: unknown account %r (not in the config)", sid,
                        account)

    # -- kill switch ----------------------------------------------------------------------

    async def flatten(self) -> None:
        """Cancel every open order and close every position; safe to repeat every pass.

        Our own closing orders are left working (a repeat pass must not cancel and
        re-close what is already closing); a position whose closing order ended without
        closing it is closed again.
        """
        orders = await self.broker.list_orders(status="open")
        positions = [p for p in await self.broker.list_positions() if p.qty != 0]
        ours = set(self._flatten_orders.values())
        open_ids = {o.id for o in orders}
        canceling: set[str] = set()  # symbols whose orders this pass is canceling
        for o in orders:
            if o.id not in ours:
                canceling.add(o.symbol)
                await self._cancel(o, "flatten")
        now = _now()
        held = {p.symbol for p in positions}
        self._flatten_refusals_unknown = False
        await self.flatten_refusals.sync()
        await self.flatten_refusals.close_all_but(
            held, lambda s: f"the position in {s} is gone at the broker", now)
        for gone in set(self._held_since) - held:
            del self._held_since[gone]
        for p in positions:
            working = self._flatten_orders.get(p.symbol)
            if working is not None and working in open_ids:
                continue
            try:
                order = await self.broker.close_position(p.symbol)
            except BrokerApiError as exc:
                await self._close_refused(p, exc, p.symbol in canceling)
                continue
            self._flatten_orders[p.symbol] = order.id
            self._held_since.pop(p.symbol, None)
            self.stats.closed += 1
            log.warning("flatten %s: closing %s %s (order %s)", self.account, p.qty,
                        p.symbol, order.id)
            await self.store.upsert_orders(self.account, [order])
            await self.flatten_refusals.accepted(
                p.symbol, f"the close of {p.qty} {p.symbol} was accepted (order {order.id})",
                now)

    async def _close_refused(self, p: Position, exc: BrokerApiError, canceling: bool) -> None:
        """A flatten close the broker refused: an incident, unless it is the expected
        echo of this pass's own cancels (shares still held by an order being canceled)."""
        refusal = refusals.Refusal(exc.http_status, exc.code, exc.reason)
        cause = refusals.classify(refusal)
        if cause is refusals.Cause.NO_POSITION:
            log.info("flatten %s: %s is closed already (%s)", self.account, p.symbol, exc)
            return
        if cause is refusals.Cause.QTY_HELD:
            first = self._held_since.setdefault(p.symbol, time.monotonic())
            if canceling and time.monotonic() - first < FLATTEN_HELD_GRACE_S:
                log.warning("flatten %s: close %s refused while its orders are being "
                            "canceled (%s); next pass", self.account, p.symbol, exc)
                return
        self.stats.flatten_refused += 1
        detail = refusals.describe(
            refusal, what="the flatten close", account=self.account, symbol=p.symbol,
            qty=p.qty, side="sell" if p.qty > 0 else "buy",
            order=f"close-position request DELETE /v2/positions/{p.symbol}",
            secret_id=self.secret_id)
        await self.flatten_refusals.refused(
            p.symbol, f"{detail} (kill switch flatten: the dispatcher retries every pass)")

    async def _flatten_ended(self, mode: KillSwitch) -> None:
        """Not flattening (any more): flatten-refused incidents have no cause left."""
        self._held_since.clear()
        if not self._flatten_refusals_unknown and not self.flatten_refusals.open_symbols:
            return
        self._flatten_refusals_unknown = False
        await self.flatten_refusals.sync()
        await self.flatten_refusals.close_all_but(
            (), lambda s: f"the kill switch is no longer flatten (now {mode.value}): no "
                          f"close of {s} is attempted any more")

    async def cancel_entry_orders(self) -> None:
        """Reduce-only: cancel open orders that would open, grow or flip a position."""
        orders = await self.broker.list_orders(status="open")
        if not orders:
            return
        held = {p.symbol: p.qty for p in await self.broker.list_positions()}
        for o in orders:
            remaining = (o.qty - o.filled_qty) if o.qty is not None else None
            effect = position_effect(held.get(o.symbol, Decimal(0)), Side(o.side), remaining)
            if not effect.is_exit:
                await self._cancel(o, "reduce-only")

    async def _cancel(self, order: Order, why: str) -> None:
        try:
            await self.broker.cancel_order(order.id)
        except BrokerApiError as exc:  # already filled or canceled: nothing to do
            log.info("%s %s: cancel %s: %s", why, self.account, order.id, exc)
            return
        self.stats.canceled += 1
        log.warning("%s %s: canceled order %s (%s %s %s)", why, self.account, order.id,
                    order.side, order.qty or order.notional, order.symbol)

    # -- dispatching ----------------------------------------------------------------------

    async def _dispatch(self, claimed: list[SignalRow], mode: KillSwitch) -> list[Outcome]:
        # Malformed rows (plain SQL bypasses `ops signal add`) are refused before anything
        # else, so they can neither reach the broker nor poison the batch's price lookup.
        outcomes: list[Outcome] = []
        parsed: list[tuple[SignalRow, ParsedSignal]] = []
        for s in claimed:
            p = parse_signal(s)
            if isinstance(p, str):
                outcomes.append(await self._decide(s, "rejected", f"bad signal: {p}"))
            else:
                parsed.append((s, p))
        if not parsed:
            return outcomes
        try:
            state, prices = await self._load_state([s for s, _ in parsed], mode)
        except BrokerError as exc:
            # No state, no decision: give the signals back untouched for the next pass.
            for s, _ in parsed:
                await sq.requeue(self.store.pool, self.account, s.id,
                                 f"broker unavailable while loading the account: {exc}")
            raise
        limits = self._limits()
        for i, (s, p) in enumerate(parsed):
            if i and self._budget_spent():  # at least one per pass: progress is certain
                await self._give_back([row for row, _ in parsed[i:]])
                break
            outcome = await self._one(s, p, state, prices, limits)
            outcomes.append(outcome)
            if outcome.status == "submitted":
                state = _after_submit(state, s, prices)
        return outcomes

    def _budget_spent(self) -> bool:
        return time.monotonic() >= self._pass_deadline

    async def _give_back(self, rows: Sequence[SignalRow]) -> None:
        """Return claimed, never-sent signals to 'pending' and ask for another pass."""
        why = (f"not reached within the pass's {self._pass_budget_s:g}s budget (slow "
               "broker); dispatched by the next pass")
        for row in rows:
            if await sq.requeue(self.store.pool, self.account, row.id, why):
                self.stats.deferred += 1
        log.info("%s: pass budget %gs spent; %d claimed signal(s) deferred to the next "
                 "pass", self.account, self._pass_budget_s, len(rows))
        self.wake()

    async def _load_state(
        self, claimed: list[SignalRow], mode: KillSwitch
    ) -> tuple[AccountState, dict[str, Decimal]]:
        symbols = sorted({s.symbol for s in claimed})

        async def book() -> tuple[list[Order], list[Position]]:
            # Open orders first, then positions: an order that fills between the two
            # reads is counted twice (the safe side), never missed by both.
            orders = await self._with_inflight(await self.broker.list_orders(status="open"))
            return orders, await self.broker.list_positions()

        (orders, positions), (account, clock, prices, controls) = await asyncio.gather(
            book(), asyncio.gather(self.broker.get_account(), self.broker.get_clock(),
                                   self._prices(symbols), self.store.controls(self.account)),
        )
        blocked = any(c.key == DRIFT_KEY and drift_blocked(c.value) for c in controls.rows)
        snaps = {p.symbol: _snapshot(p) for p in positions}
        open_notional: dict[str, Decimal] = {}
        for o in orders:
            value = _order_value(o, prices.get(o.symbol))
            open_notional[o.symbol] = open_notional.get(o.symbol, Decimal(0)) + value
        gate_mode = KillSwitch.REDUCE_ONLY if mode is KillSwitch.FLATTEN else mode
        state = AccountState(
            account=self.account, kill_switch=gate_mode, market_open=clock.is_open,
            buying_power=account.buying_power, equity=account.equity,
            last_equity=account.last_equity, positions=snaps,
            open_order_notional=open_notional, drift_blocked=blocked,
            reconciled=self.reconciled,
        )
        return state, prices

    async def _with_inflight(self, listed: list[Order]) -> list[Order]:
        """`listed` plus the orders this dispatcher submitted that the listing does not
        show but that are not finished either (a listing that lags behind a submit)."""
        shown = {o.id for o in listed}
        missing = {oid: f for oid, f in self._inflight.items() if oid not in shown}
        if not missing:
            return listed
        found: dict[str, Order] = {}
        if len(missing) >= INFLIGHT_BATCH:
            # After a burst: one listing of the recent orders instead of a lookup each.
            oldest = min(f.order.created_at for f in missing.values())
            try:
                recent = await self.broker.list_orders(
                    status="all", after=oldest - timedelta(seconds=1),
                    symbols=sorted({f.order.symbol for f in missing.values()}))
                found = {o.id: o for o in recent if o.id in missing}
            except BrokerError as exc:
                log.info("%s: recent orders not listed (%s); looking up one by one",
                         self.account, exc)
        extra: list[Order] = []
        for oid, f in missing.items():
            order = found.get(oid)
            if order is None:
                try:
                    order = await self.broker.get_order(oid)
                except BrokerError as exc:
                    log.info("%s: in-flight order %s not looked up (%s); counted as open",
                             self.account, oid, exc)
                    extra.append(f.order)
                    continue
                self.stats.inflight_lookups += 1
            if order is None:
                if time.monotonic() - f.submitted < INFLIGHT_GRACE_S:
                    extra.append(f.order)  # not visible at the broker yet: still ours
                else:
                    del self._inflight[oid]
            elif order.is_terminal:
                del self._inflight[oid]  # filled: the positions read after this show it
            else:
                extra.append(order)
        return [*listed, *extra]

    def _track(self, order: Order) -> None:
        if order.is_terminal:
            return
        self._inflight[order.id] = InFlight(order, time.monotonic())
        while len(self._inflight) > INFLIGHT_MAX:
            del self._inflight[next(iter(self._inflight))]

    async def _prices(self, symbols: list[str]) -> dict[str, Decimal]:
        self._price_errors = {}
        stocks = [s for s in symbols if OptionSymbol.parse(s) is None]
        if not stocks:
            return {}
        try:
            return await self.broker.latest_trades(stocks)
        except BrokerError as exc:
            status = exc.http_status if isinstance(exc, BrokerApiError) else None
            refused = status is not None and 400 <= status < 500 and status != 429
            if len(stocks) == 1 or not refused:
                # Limit orders are valued at their limit price; market orders without a
                # price are refused by the sanity gate with a reason naming the lookup.
                # (Broker down or rate limited: no per-symbol retries, they would only
                # multiply the wait.)
                log.warning("%s: latest trades for %s unavailable: %s", self.account,
                            stocks, exc)
                self._price_errors = dict.fromkeys(stocks, str(exc))
                return {}
        # One symbol the broker refuses (e.g. HTTP 400 "invalid symbol") fails the whole
        # batch request: ask per symbol so it cannot cost the other signals their price.
        prices: dict[str, Decimal] = {}
        for sym in stocks:
            try:
                prices.update(await self.broker.latest_trades([sym]))
            except BrokerError as exc:
                log.warning("%s: latest trade for %s unavailable: %s", self.account, sym, exc)
                self._price_errors[sym] = str(exc)
        return prices

    async def _one(
        self, s: SignalRow, p: ParsedSignal, state: AccountState,
        prices: Mapping[str, Decimal], limits: RiskLimits,
    ) -> Outcome:
        req, price = p.request, prices.get(s.symbol)
        intent = dataclasses.replace(p.intent, reference_price=price)
        decision: RiskDecision = evaluate(intent, state, limits, _now())
        if not decision.allowed:
            status = "expired" if decision.gate == "expiry" else "rejected"
            reason = decision.reason
            pause = self.last_pause
            if status == "expired" and pause is not None and s.created_at < pause.until:
                reason += (f"; it waited while dispatch was paused ({pause.reason}, "
                           f"{pause.seconds:,.0f}s from "
                           f"{pause.since.isoformat(timespec='seconds')})")
            if self._mode is KillSwitch.FLATTEN and decision.gate == "kill_switch":
                reason = "kill switch flatten (the account is being closed out): " + reason
            if decision.gate == "sanity" and price is None:
                why = ("none looked up for options: give them a limit price"
                       if OptionSymbol.parse(s.symbol) is not None else
                       self._price_errors.get(s.symbol, "none reported by the broker"))
                reason += f"; latest trade for {s.symbol!r}: {why}"
            return await self._decide(s, status, f"{decision.gate}: {reason}")
        result = await self.broker.submit_order(req)
        if result.outcome == "accepted":
            if self._fault == FAULT_AFTER_SUBMIT:
                log.critical("test fault %s: SIGKILL before recording signal %d",
                             FAULT_AFTER_SUBMIT, s.id)
                os.kill(os.getpid(), signal.SIGKILL)
            if result.order is None:
                # Accepted but unreadable: the id comes from the next settle.
                return await self._decide(s, "unknown", result.reason)
            outcome = await self._record_submitted(s, result.order, decision.reason)
            if decision.effect.is_exit:
                await self.exit_refusals.accepted(
                    s.symbol, f"exit signal {s.id} ({s.side} {p.request.qty or s.notional}) "
                              f"accepted by the broker (order {result.order.id})")
            return outcome
        if result.outcome == "rejected":
            outcome = await self._decide(s, "rejected", f"broker: {result.reason}")
            if decision.effect.is_exit and result.http_status is not None:
                await self._exit_refused(s, p, result.http_status, result.code,
                                         result.reason or "")
            return outcome
        return await self._decide(s, "unknown", result.reason)

    async def _exit_refused(self, s: SignalRow, p: ParsedSignal, status: int,
                            code: int | None, message: str) -> None:
        """An exit signal (it reduces a position) the broker refused: an incident, since
        the risk stays on; an entry the broker refuses stays a signal rejection."""
        self.stats.exits_refused += 1
        qty = p.request.qty
        detail = refusals.describe(
            refusals.Refusal(status, code, message), what=f"exit signal {s.id}",
            account=self.account, symbol=s.symbol, qty=qty, side=s.side, order=s.cid,
            secret_id=self.secret_id)
        if qty is None and s.notional is not None:
            detail += f" (notional {s.notional})"
        await self.exit_refusals.refused(s.symbol, detail)

    async def _record_submitted(self, s: SignalRow, order: Order, reason: str) -> Outcome:
        self._track(order)
        await self.store.upsert_orders(self.account, [order], {order.client_order_id: s.id})
        return await self._decide(s, "submitted", reason, order.id)

    async def _decide(
        self, s: SignalRow, status: str, reason: str | None, broker_order_id: str | None = None
    ) -> Outcome:
        await self.store.record_signal_decision(
            s.id, status, reason=reason, client_order_id=s.cid,
            broker_order_id=broker_order_id, attempts=s.attempts,
        )
        setattr(self.stats, status, getattr(self.stats, status) + 1)
        level = logging.INFO if status == "submitted" else logging.WARNING
        log.log(level, "signal %d %s %s %s %s: %s%s", s.id, s.side, s.qty or s.notional,
                s.symbol, status, reason, f" (order {broker_order_id})" if broker_order_id
                else "")
        return Outcome(s.id, status, reason, broker_order_id)


# -- pure helpers -----------------------------------------------------------------------

# Tickers ("BRK.B"), crypto pairs ("BTC/USD") and OCC option symbols; anything else (empty,
# whitespace, control or non-ASCII characters, absurd length) is refused before it is sent.
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9./-]{0,31}$")


@dataclass(frozen=True, slots=True)
class ParsedSignal:
    """A signal row that can become an order: the request, and the intent to gate (its
    reference_price is filled in from the latest trade just before gating)."""

    request: OrderRequest
    intent: SignalIntent


def parse_signal(s: SignalRow) -> ParsedSignal | str:
    """The order a signal row asks for, or why the row cannot be one (never raises).

    Only the row's shape is checked here (symbol, side, order type, time in force, exactly
    one of qty/notional, a limit price for limit orders); the numbers' sanity (positive,
    finite, within max_qty) and every other gate are `ops.risk.evaluate`'s.
    """
    try:
        if not isinstance(s.symbol, str) or not _SYMBOL_RE.match(s.symbol):
            return f"symbol {s.symbol!r} is not a ticker, crypto pair or option symbol"
        side, otype = Side(s.side), OrderType(s.order_type)
        tif = TimeInForce(s.time_in_force)
        if otype not in (OrderType.MARKET, OrderType.LIMIT):
            return f"order_type {s.order_type!r} not supported for signals (market or limit)"
        req = OrderRequest(symbol=s.symbol, side=side, client_order_id=s.cid, qty=s.qty,
                           notional=s.notional, order_type=otype, time_in_force=tif,
                           limit_price=s.limit_price)
        intent = SignalIntent(
            signal_id=s.id, account=s.account, symbol=s.symbol, side=side,
            created_at=s.created_at, qty=s.qty, notional=s.notional, order_type=otype,
            limit_price=s.limit_price, expires_at=s.expires_at,
        )
    except ValueError as exc:
        return str(exc)
    return ParsedSignal(req, intent)


def _snapshot(p: Position) -> PositionSnapshot:
    """The position as the gates see it: only the quantity not already held by open
    orders (`qty_available`), so an exit signal cannot sell what a working order is
    already selling (which would open a short)."""
    value = _market_value(p)
    qty = p.qty if p.qty_available is None else p.qty_available
    if p.qty != 0 and qty != p.qty:
        value = value * qty / p.qty
    return PositionSnapshot(qty, value)


def _market_value(p: Position) -> Decimal:
    if p.market_value is not None:
        return p.market_value
    mult = OPTION_MULTIPLIER if OptionSymbol.parse(p.symbol) else Decimal(1)
    return p.qty * (p.current_price or p.avg_entry_price) * mult


def _order_value(o: Order, price: Decimal | None) -> Decimal:
    """What an open order still commits: remaining qty x (limit or last price)."""
    if o.qty is None:
        return o.notional or Decimal(0)
    remaining = max(o.qty - o.filled_qty, Decimal(0))
    unit = o.limit_price or price or o.stop_price or Decimal(0)
    mult = OPTION_MULTIPLIER if OptionSymbol.parse(o.symbol) else Decimal(1)
    return remaining * unit * mult


def _after_submit(state: AccountState, s: SignalRow, prices: Mapping[str, Decimal]) -> AccountState:
    """The state the next signal of the same batch sees: this order is now open."""
    unit = s.limit_price or prices.get(s.symbol)
    value = s.notional if s.notional is not None else (
        (s.qty or Decimal(0)) * (unit or Decimal(0)))
    if OptionSymbol.parse(s.symbol):
        value *= OPTION_MULTIPLIER
    current = state.positions.get(s.symbol)
    qty = order_qty(SignalIntent(s.id, s.account, s.symbol, Side(s.side), s.created_at,
                                 qty=s.qty, notional=s.notional, reference_price=unit))
    positions = dict(state.positions)
    opened = dict(state.open_order_notional)
    power = state.buying_power
    held = current.qty if current is not None else Decimal(0)
    effect = position_effect(held, Side(s.side), qty)
    if effect.is_exit and current is not None and qty is not None:
        # Whatever this order sells is no longer available to the next exit signal.
        left = held - qty if held > 0 else held + qty
        positions[s.symbol] = PositionSnapshot(left, current.market_value * left / held)
    else:
        opened[s.symbol] = opened.get(s.symbol, Decimal(0)) + value
        if s.side == "buy":
            power -= value
    return AccountState(
        account=state.account, kill_switch=state.kill_switch, market_open=state.market_open,
        buying_power=power, equity=state.equity, last_equity=state.last_equity,
        positions=positions, open_order_notional=opened,
        drift_blocked=state.drift_blocked, reconciled=state.reconciled,
    )


# -- services ---------------------------------------------------------------------------


class WakeLoop:
    """Runs a dispatcher pass each time `Dispatcher.wake()` was called (NOTIFY path).

    Errors are logged and the loop goes on: the ticker's passes record failures in the
    run ledger, and the next signal or tick tries again.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.name = f"dispatcher-wake-{dispatcher.account}"
        self._d = dispatcher
        self._stop = False

    def request_stop(self) -> None:
        self._stop = True
        self._d.wake()

    async def run(self) -> None:
        while not self._stop:
            await self._d.woken()
            if self._stop:
                break
            try:
                await self._d.run_pass()
            except asyncio.CancelledError:
                raise
            except NotReconciled as exc:
                log.info("%s: woken, but not reconciled yet: %s", self._d.account, exc)
            except Exception:
                log.exception("%s: dispatcher pass (woken by NOTIFY) failed", self._d.account)


#: Broker calls a pass spends before its first submit (account, clock, positions, orders).
STATE_CALLS = 4


def batch_for_budget(rate_per_min: int, burst: int, pass_s: float = 5.0) -> int:
    """Signals one pass claims: what this process's REST budget serves within `pass_s`.

    A pass that claims more than its budget can serve waits on the rate limiter for tens
    of seconds, and the watchdog rightly sees no completed run. Claiming a budget's worth
    and waking again at once keeps the same throughput with passes that finish promptly.
    """
    calls = burst + rate_per_min / 60.0 * pass_s
    return max(1, int(calls) - STATE_CALLS)


async def build(ctx: RoleContext) -> Sequence[Service]:
    """The dispatcher's services: its ticker, the LISTEN connection and the wake loop."""
    account, broker, acfg = ctx.account, ctx.broker, ctx.account_cfg
    if account is None or broker is None or acfg is None:
        raise ValueError("the dispatcher runs for one account: give --account TIER")

    def limits() -> RiskLimits:
        cfg = ctx.account_cfg  # current config: hot reload applies to the next signal
        return RiskLimits.from_config((cfg or acfg).risk)

    from ops.roles.runtime import broker_settings  # runtime imports roles lazily

    budget = broker_settings(ctx.config, "dispatcher")
    d = Dispatcher(store=ctx.store, broker=broker, account=account, limits=limits,
                   kill_switch=ctx.kill_switch, process=ctx.process,
                   batch=batch_for_budget(budget.rate_limit_per_min, budget.rate_limit_burst),
                   fault=os.environ.get(FAULT_ENV),
                   accounts=lambda: list(ctx.config.accounts), secret_id=acfg.secret_id)

    async def job(slot: object) -> None:
        await d.run_pass()

    ticker = ctx.ticker("dispatcher", acfg.schedule.dispatcher_s, job, market_gate=False)
    listener = SignalListener(ctx.store.url, account, d.wake)
    ctx.add_counters("dispatcher", d.counters)
    ctx.add_counters("listen", lambda: {"notifications": listener.notifications,
                                        "connects": listener.connects})
    return [ticker, listener, WakeLoop(d)]
