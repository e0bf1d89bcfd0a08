"""The dispatcher role: claims an account's signals, gates them, submits their orders.

What lives here: `Dispatcher` (the role's core, testable without the role runtime: it
takes a Store, a bound Broker, the account name and getters for the risk limits and the
kill switch), `WakeLoop` (runs a pass whenever a NOTIFY arrives) and `build(ctx)` (wires
both, the LISTEN connection and the ticker into the role runtime). Decisions are
`ops.core.risk.evaluate`; queries are `ops.store.signals`.

One pass (`Dispatcher.run_pass`), serialised by a lock whichever way it was woken:
1. read the kill switch; flatten (managed only) -> cancel the pipeline's own open orders
   and close the MANAGED part of each position (ops.core.ownership) with our own market
   order, `ops-<account>-flat-<symbol>-<engagement>-<attempt>` (so its fills count as
   managed reductions; the same id after a restart, so a repeat never sends twice);
   external lots and orders are untouched, and without ownership (Postgres away)
   nothing is sold; flatten-all -> cancel every open order, close the managed part as
   above and the external part with the broker's close-position (see `flatten`);
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
- Under either flatten, signals are gated as under reduce-only (ops.core.risk alone would
  refuse every order): entries are refused, an exit of what remains is allowed. It cannot race
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
- Options and day trading: every option order carries the position_intent the gates
  derived (buy/sell to open/close, ops.core.risk); the account's options_trading_level,
  options_buying_power, pattern_day_trader and daytrade_count go into the state, and for
  an account the pdt gate applies to (under $25k, day trades reported) the symbols that
  would make a day trade if exited today (`_opened_today`: today's fills, working entry
  orders) cost one more read of today's FILL activities.
- Refusals: a flatten close the broker refuses opens incident `flatten-refused`
  (dedupe key `flatten-refused:<account>:<symbol>`, text from ops.core.refusals); it closes
  itself when a later close is accepted, when the position is gone, or when the kill
  switch leaves flatten. "Shares held by orders" just after this pass canceled orders in
  the symbol is a cancel still pending: an incident only if it lasts
  `FLATTEN_HELD_GRACE_S`. An exit *signal* (one that reduces a position) the broker
  refuses opens `exit-refused:<account>:<symbol>` (the position manager's kind; either
  role's accepted exit or the position being gone closes it). Entries the broker or a
  gate refuses stay signal rejections with their reason.
- Protective stops (the position manager's, ops.roles.protective_stops) hold the shares
  they cover, so the gates count those shares as available to an exit signal, and the
  signal first cancels the symbol's stops and waits for the broker's confirmation
  (`_clear_stops`): a stop that filled meanwhile rejects the signal (the position changed
  under it), a cancel not yet confirmed sends the signal back to the next pass.

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
from datetime import time as dtime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ops.broker import Broker, BrokerApiError, BrokerError
from ops.core import refusals
from ops.core.exits import flatten_client_order_id, flatten_prefix
from ops.core.models import (
    KILL_SWITCH_KEY,
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
from ops.core.ownership import Holding, split
from ops.core.risk import (
    NEW_YORK,
    PDT_EQUITY,
    AccountState,
    PdtGuard,
    PositionSnapshot,
    RiskDecision,
    RiskLimits,
    SignalIntent,
    evaluate,
    order_qty,
    position_effect,
    position_intent,
)
from ops.roles.protective_stops import cancel_stops, remaining, stop_prefix
from ops.roles.refusal_incidents import RefusalIncidents
from ops.store import StorageUnavailable
from ops.store import signals as sq
from ops.store.ownership import managed_quantities, pipeline_prefix
from ops.store.signals import SignalListener, SignalRow

if TYPE_CHECKING:
    from ops.roles.runtime import RoleContext
    from ops.runtime.daemon import Service
    from ops.store.store import Store

log = logging.getLogger(__name__)

FAULT_ENV = "OPS_FAULT"
FAULT_AFTER_SUBMIT = "dispatcher.after_submit"
RECONCILE_KEY = "reconciliation"  # controls row: {"state": "reconciling"|"reconciled", ...}
DRIFT_KEY = "drift_block"  # controls row written by the position manager
#: How long "insufficient qty" on a flatten close may last while this dispatcher's own
#: cancels of that symbol's orders are pending, before it is an incident.
FLATTEN_HELD_GRACE_S = 10.0
#: A managed close that filled must be this old before a further close of the same
#: symbol is sent: its fills must reach the store first, or the managed quantity read
#: would still include them and the next close would sell external lots.
FLATTEN_SETTLE_S = 10.0
#: Finished attempts of one symbol's managed close skipped in one pass (each one a
#: duplicate-id answer from the broker) before the pass gives up on it.
FLATTEN_ATTEMPTS_PER_PASS = 5
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
    stops_cleared: int = 0  # protective stops cancelled (confirmed) before an exit signal


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
        manage_external: Callable[[], bool] | None = None,
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
        self._flatten_orders: dict[str, str] = {}  # symbol -> our close-position order id
        self._flat_attempts: dict[str, int] = {}  # symbol -> attempt of its managed close
        self._flatten_since: datetime | None = None  # this flatten's engagement (epoch)
        self._flatten_mode = KillSwitch.FLATTEN
        self._ownership_unknown = False  # managed-only flatten blocked: no ownership
        self._external_left = 0  # positions with lots a managed-only flatten leaves
        self._manage_external = manage_external or (lambda: False)
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
        self._stopped: set[str] = set()  # symbols with a protective stop resting (this pass)
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
        flattening = self._mode.flattens
        out["flatten_ownership_unknown"] = 1 if flattening and self._ownership_unknown else 0
        out["flatten_external_left"] = self._external_left if flattening else 0
        out["flatten_blocked_reason"] = (
            "ownership unknown (Postgres unreachable): no managed lot closed, external lots "
            "never sold" if flattening and self._ownership_unknown
            and self._mode is KillSwitch.FLATTEN else "")
        return out

    # -- one pass -------------------------------------------------------------------------

    async def run_pass(self) -> PassReport:
        async with self._lock:
            self.stats.passes += 1
            self._pass_deadline = time.monotonic() + self._pass_budget_s
            mode = self._mode = await self._kill_switch()
            report = PassReport(mode)
            if mode.flattens:
                await self.flatten(mode)
            else:
                self._flatten_orders.clear()
                self._flat_attempts.clear()
                self._flatten_since = None
                self._ownership_unknown = False
                self._external_left = 0
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
                claimed = await self.store.direct(sq.claim_pending, self.account, self._batch)
            except ReconcileWaitsForDatabase as exc:
                report.skipped = PAUSE_BUFFER if str(exc) == PAUSE_BUFFER else PAUSE_DB
                await self._paused(report.skipped)
                return report
            except StorageUnavailable:
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
        except StorageUnavailable as exc:
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
        for s in await self.store.direct(sq.leftovers, self.account):
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
            if await self.store.direct(sq.requeue, self.account, s.id, why):
                requeued += 1
                self.stats.requeued += 1
                log.info("signal %d: %s", s.id, why)
        return settled, requeued, unresolved

    async def reject_unknown_accounts(self) -> None:
        """Signals for an account the config does not know would wait forever: refuse them
        with a reason (whichever dispatcher gets there first; see ops.store.signals)."""
        if self._accounts is None:
            return
        for sid, account in await self.store.direct(
                sq.reject_unknown_accounts, self._accounts(), self._batch):
            self.stats.rejected += 1
            log.warning("signal %d rejected: unknown account %r (not in the config)", sid,
                        account)

    # -- kill switch ----------------------------------------------------------------------

    async def flatten(self, mode: KillSwitch = KillSwitch.FLATTEN) -> None:
        """One flatten pass; safe to repeat every pass (see `_close_managed`).

        flatten (managed only): cancel the pipeline's own open orders (client_order_id
        `ops-<account>-`) and close the MANAGED part of each position with our own market
        order (`ops-<account>-flat-...`, ops.core.exits.flatten_client_order_id, so its fills
        count as managed reductions); external lots and orders are left alone. Without
        ownership (Postgres unreachable and manage_external false) nothing is closed: it
        must not sell what it does not know it owns (log line, heartbeat counter
        `flatten_ownership_unknown`).

        flatten-all (everything): cancel every open order but our closes, then close the
        managed part as above and the external part with the broker's close-position
        (DELETE /v2/positions/{symbol}?qty=N): each sale lands on its owner's side of the
        ownership ledger (a close-position fill of a managed lot would count as an
        external sale and leave the ledger claiming shares the pipeline no longer has).
        Without ownership every lot is closed by our own order, the safe side: the
        ledger may then under-count managed shares, never claim external ones.
        """
        everything = mode is KillSwitch.FLATTEN_ALL
        orders = await self.broker.list_orders(status="open")
        positions = [p for p in await self.broker.list_positions() if p.qty != 0]
        now = _now()
        flat_prefix = flatten_prefix(self.account)
        pipeline = pipeline_prefix(self.account)
        closing_all = set(self._flatten_orders.values())  # close-position orders (ours)
        working: dict[str, Order] = {}  # symbol -> our open managed close
        working_all: set[str] = set()  # symbols with an open close-position of ours
        canceling: set[str] = set()  # symbols whose orders this pass is canceling
        for o in orders:
            if o.client_order_id.startswith(flat_prefix):
                working.setdefault(o.symbol, o)
                continue
            if o.id in closing_all and everything:
                working_all.add(o.symbol)
                continue
            # Managed only: the pipeline's orders (the close-positions of an earlier
            # flatten-all included: the operator now wants external lots kept).
            if everything or o.client_order_id.startswith(pipeline) or o.id in closing_all:
                canceling.add(o.symbol)
                await self._cancel(o, f"flatten ({mode.value})")
        holdings = await self._holdings(positions, everything)
        self._flatten_mode = mode
        closing: dict[str, tuple[Position, Decimal, Decimal]] = {}  # symbol -> (p, ours, ext)
        for p in positions:
            h = holdings.get(p.symbol) if holdings is not None else None
            if h is None:  # ownership unknown
                managed = p.qty if (everything or self._manage_external()) else Decimal(0)
                external = Decimal(0)
            else:
                managed, external = h.managed, h.external if everything else Decimal(0)
            if managed or external:
                closing[p.symbol] = (p, managed, external)
        self._external_left = 0 if everything else sum(
            1 for p in positions if holdings is None or holdings[p.symbol].external)
        self._flatten_refusals_unknown = False
        await self.flatten_refusals.sync()
        await self.flatten_refusals.close_all_but(
            closing, lambda s: f"the position in {s} is gone at the broker (or has nothing "
                               f"left to close under {mode.value})", now)
        for gone in set(self._held_since) - set(closing):
            del self._held_since[gone]
        if not closing:
            return
        epoch = await self._flatten_epoch(now)
        for sym, (p, managed, external) in closing.items():
            if managed:
                await self._close_managed(p, managed, epoch, working.get(sym),
                                          sym in canceling, now)
            if external and sym not in working_all:
                await self._close_external(p, external, sym in canceling, now)

    async def _holdings(self, positions: Sequence[Position],
                        everything: bool) -> dict[str, Holding] | None:
        """Each position split into managed and external (ops.core.ownership), or None when the
        ownership cannot be read (Postgres unreachable)."""
        if self._manage_external():
            self._ownership_unknown = False
            return {p.symbol: split(p.symbol, p.qty, p.qty, manage_external=True)
                    for p in positions}
        try:
            raw = await self.store.direct(managed_quantities, self.account,
                                          [p.symbol for p in positions])
        except StorageUnavailable as exc:
            if not self._ownership_unknown:
                log.error("flatten %s: ownership unknown (Postgres unreachable: %s): %s",
                          self.account, exc,
                          "every lot is closed by the pipeline's own orders (flatten-all)"
                          if everything else "NOTHING is closed, since a sale could hit a "
                          "lot the pipeline does not own; the pipeline's own orders are "
                          "canceled; closing resumes when Postgres answers")
            self._ownership_unknown = True
            return None
        if self._ownership_unknown:
            log.warning("flatten %s: ownership readable again; closing resumes", self.account)
        self._ownership_unknown = False
        return {p.symbol: split(p.symbol, p.qty, raw.get(p.symbol, Decimal(0)))
                for p in positions}

    async def _flatten_epoch(self, now: datetime) -> datetime:
        """When this flatten was engaged (the kill switch row's time): the epoch of every
        managed close id, the same after a restart. Read once per engagement."""
        if self._flatten_since is None:
            try:
                snap = await self.store.controls(self.account)
                row = next((c for c in snap.rows if c.key == KILL_SWITCH_KEY), None)
                self._flatten_since = row.updated_at if row is not None else now
            except StorageUnavailable:
                self._flatten_since = now
        return self._flatten_since

    async def _close_managed(self, p: Position, managed: Decimal, epoch: datetime,
                             working: Order | None, canceling: bool, now: datetime) -> None:
        """Close `managed` (signed) of `p` with our own market order, idempotently.

        Its id is `flatten_client_order_id(account, symbol, epoch, attempt)`: a repeat pass
        (or a restart) that sends it again gets the broker's "duplicate id" and the order
        back, so at most one order exists per (epoch, attempt). An attempt that ended
        without closing (canceled, expired, rejected) moves to the next attempt; one that
        filled moves too, once its fills had time to reach the store (the managed quantity
        read this pass must already be net of them)."""
        sym = p.symbol
        if working is not None:
            return  # our close is at the broker, working
        side = Side.SELL if managed > 0 else Side.BUY
        qty = abs(managed)
        intent = (position_intent(side, p.qty).value if OptionSymbol.parse(sym) is not None
                  else None)
        attempt = self._flat_attempts.get(sym, 0)
        for _ in range(FLATTEN_ATTEMPTS_PER_PASS):
            cid = flatten_client_order_id(self.account, sym, epoch, attempt)
            req = OrderRequest(symbol=sym, side=side, client_order_id=cid, qty=qty,
                               order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY,
                               position_intent=intent)
            res = await self.broker.submit_order(req)
            order = res.order
            if res.outcome == "accepted" and order is not None and res.http_status == 422:
                # This attempt's id was used before (an earlier pass or process life).
                if not order.is_terminal:
                    return  # working, just not in this pass's listing yet
                ended = order.filled_at or order.updated_at
                if order.filled_qty > 0 and (now - ended).total_seconds() < FLATTEN_SETTLE_S:
                    log.info("flatten %s: close %s of %s filled %s at %s; waiting for its "
                             "fills to be recorded before closing the rest", self.account,
                             cid, sym, order.filled_qty, ended.isoformat())
                    return
                attempt += 1
                self._flat_attempts[sym] = attempt
                continue
            if res.outcome == "accepted":
                self.stats.closed += 1
                self._held_since.pop(sym, None)
                log.warning("flatten %s: closing the managed %s of %s %s (order %s)",
                            self.account, managed, p.qty, sym, cid)
                if order is not None:
                    await self.store.upsert_orders(self.account, [order])
                await self.flatten_refusals.accepted(
                    sym, f"the close of {qty} {sym} was accepted (order {cid})", now)
            elif res.outcome == "rejected":
                await self._close_refused(
                    p, refusals.Refusal(res.http_status, res.code, res.reason or ""),
                    canceling, qty=managed, order=cid)
            else:
                log.warning("flatten %s: close %s of %s: outcome unknown (%s); the next pass "
                            "sends the same id again", self.account, cid, sym, res.reason)
            return
        log.error("flatten %s: %d closes of %s in a row ended without closing it; next pass",
                  self.account, FLATTEN_ATTEMPTS_PER_PASS, sym)

    async def _close_external(self, p: Position, external: Decimal, canceling: bool,
                              now: datetime) -> None:
        """flatten-all: close the external part with the broker's close-position."""
        sym = p.symbol
        try:
            order = await self.broker.close_position(sym, abs(external))
        except BrokerApiError as exc:
            await self._close_refused(
                p, refusals.Refusal(exc.http_status, exc.code, exc.reason), canceling,
                qty=external,
                order=f"close-position request DELETE /v2/positions/{sym}?qty={abs(external)}")
            return
        self._flatten_orders[sym] = order.id
        self._held_since.pop(sym, None)
        self.stats.closed += 1
        log.warning("flatten-all %s: closing the external %s of %s %s (order %s)",
                    self.account, external, p.qty, sym, order.id)
        await self.store.upsert_orders(self.account, [order])
        await self.flatten_refusals.accepted(
            sym, f"the close of {abs(external)} {sym} was accepted (order {order.id})", now)

    async def _close_refused(self, p: Position, refusal: refusals.Refusal, canceling: bool,
                             *, qty: Decimal, order: str) -> None:
        """A flatten close the broker refused: an incident, unless it is the expected
        echo of this pass's own cancels (shares still held by an order being canceled)."""
        cause = refusals.classify(refusal)
        if cause is refusals.Cause.NO_POSITION:
            log.info("flatten %s: %s is closed already (%s)", self.account, p.symbol,
                     refusal.message)
            return
        if cause is refusals.Cause.QTY_HELD:
            first = self._held_since.setdefault(p.symbol, time.monotonic())
            if canceling and time.monotonic() - first < FLATTEN_HELD_GRACE_S:
                log.warning("flatten %s: close %s refused while its orders are being "
                            "canceled (%s); next pass", self.account, p.symbol,
                            refusal.message)
                return
        self.stats.flatten_refused += 1
        detail = refusals.describe(
            refusal, what="the flatten close", account=self.account, symbol=p.symbol,
            qty=qty, side="sell" if qty > 0 else "buy", order=order,
            secret_id=self.secret_id)
        await self.flatten_refusals.refused(
            p.symbol, f"{detail} (kill switch {self._flatten_mode.value}: the dispatcher "
                      "retries every pass)")

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
                await self.store.direct(sq.requeue, self.account, s.id,
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
            if await self.store.direct(sq.requeue, self.account, row.id, why):
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
        # Shares held by the position manager's protective stops are the exit signal's to
        # sell: `_one` cancels those stops (confirmed) before sending it.
        prefix = stop_prefix(self.account)
        by_stops: dict[str, Decimal] = {}
        for o in orders:
            if o.client_order_id.startswith(prefix):
                by_stops[o.symbol] = by_stops.get(o.symbol, Decimal(0)) + remaining(o)
        self._stopped = set(by_stops)
        snaps = {p.symbol: _snapshot(p, by_stops.get(p.symbol, Decimal(0)))
                 for p in positions}
        open_notional: dict[str, Decimal] = {}
        for o in orders:
            value = _order_value(o, prices.get(o.symbol))
            open_notional[o.symbol] = open_notional.get(o.symbol, Decimal(0)) + value
        gate_mode = KillSwitch.REDUCE_ONLY if mode.flattens else mode
        state = AccountState(
            account=self.account, kill_switch=gate_mode, market_open=clock.is_open,
            buying_power=account.buying_power, equity=account.equity,
            last_equity=account.last_equity, positions=snaps,
            open_order_notional=open_notional, drift_blocked=blocked,
            reconciled=self.reconciled,
            options_buying_power=account.options_buying_power,
            options_trading_level=account.options_trading_level,
            pattern_day_trader=account.pattern_day_trader,
            daytrade_count=account.daytrade_count,
            session_close=clock.next_close if clock.is_open else None,
        )
        if _pdt_relevant(state, self._limits()):
            state = dataclasses.replace(
                state, opened_today=await self._opened_today(positions, orders, clock.timestamp))
        return state, prices

    async def _opened_today(self, positions: Sequence[Position], open_orders: Sequence[Order],
                            now: datetime) -> frozenset[str]:
        """Symbols whose exit today would be a day trade, or which will be once an open
        order fills: held symbols bought (longs) or sold short (shorts) today, New York
        date (today's FILL activities, and open orders' partial fills), and symbols with
        an open order that opens or adds to a position. Read only for accounts the pdt
        gate applies to (`_pdt_relevant`)."""
        sign = {p.symbol: (1 if p.qty > 0 else -1) for p in positions if p.qty != 0}
        today = now.astimezone(NEW_YORK).date()
        midnight = datetime.combine(today, dtime(0), tzinfo=NEW_YORK)
        opened: set[str] = set()
        for o in open_orders:
            held = sign.get(o.symbol, 0)
            adds = (o.side == "buy" and held >= 0) or (o.side == "sell" and held <= 0)
            if adds:  # an entry still working: a position opened (or added to) today
                opened.add(o.symbol)
        if not sign:
            return frozenset(opened)
        try:
            fills = await self.broker.list_fills(after=midnight)
        except BrokerError as exc:
            # The day-trade count alone still guards; the log says what is missing.
            log.warning("%s: today's fills unavailable for the pattern-day-trading guard "
                        "(%s); counting day trades and open entries only", self.account, exc)
            return frozenset(opened)
        for f in fills:
            if f.symbol in sign and (f.side == "buy") == (sign[f.symbol] > 0):
                opened.add(f.symbol)
        return frozenset(opened)

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
        if decision.position_intent is not None:  # every option order says open or close
            req = dataclasses.replace(req, position_intent=decision.position_intent.value)
        if not decision.allowed:
            status = "expired" if decision.gate == "expiry" else "rejected"
            reason = decision.reason
            pause = self.last_pause
            if status == "expired" and pause is not None and s.created_at < pause.until:
                reason += (f"; it waited while dispatch was paused ({pause.reason}, "
                           f"{pause.seconds:,.0f}s from "
                           f"{pause.since.isoformat(timespec='seconds')})")
            if self._mode.flattens and decision.gate == "kill_switch":
                reason = (f"kill switch {self._mode.value} (the account is being closed out): "
                          + reason)
            if decision.gate == "sanity" and price is None:
                why = ("none looked up for options: give them a limit price"
                       if OptionSymbol.parse(s.symbol) is not None else
                       self._price_errors.get(s.symbol, "none reported by the broker"))
                reason += f"; latest trade for {s.symbol!r}: {why}"
            return await self._decide(s, status, f"{decision.gate}: {reason}")
        if decision.effect.is_exit and s.symbol in self._stopped:
            held = await self._clear_stops(s)
            if held is not None:
                return held
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

    async def _clear_stops(self, s: SignalRow) -> Outcome | None:
        """Cancel the protective stops resting for an exit signal's symbol and wait for
        the broker's word (a resting stop holds the shares: the sell would be refused, or
        both would fill). None: clear, send the exit. A stop that filled meanwhile changed
        the position under the signal: rejected (never a sell into a short). A cancel not
        confirmed in time: the signal waits for the next pass. The position manager places
        a stop again for what is left once its grace has passed."""
        cleared = await cancel_stops(self.broker, self.account, s.symbol,
                                     why=f"exit signal {s.id} is about to be sent")
        self.stats.stops_cleared += len(cleared.found) - len(cleared.pending)
        if cleared.filled:
            ids = ", ".join(o.client_order_id for o in cleared.filled)
            return await self._decide(
                s, "rejected", f"protective stop {ids} filled first: the position changed "
                               "under this exit signal (not sent, never a sell into a short)")
        if cleared.pending:
            why = "protective stop cancel not confirmed yet; dispatched by the next pass"
            if await self.store.direct(sq.requeue, self.account, s.id, why):
                self.stats.deferred += 1
            self.wake()
            log.info("signal %d: %s", s.id, why)
            return Outcome(s.id, "deferred", why)
        self._stopped.discard(s.symbol)
        return None

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


def _pdt_relevant(state: AccountState, limits: RiskLimits) -> bool:
    """Whether the pdt gate can refuse anything for this account now (then the positions
    opened today are worth a read): guard on, under $25k, day trades reported."""
    return (limits.pdt_guard is not PdtGuard.OFF
            and min(state.equity, state.last_equity) < PDT_EQUITY
            and (state.daytrade_count is not None or state.pattern_day_trader is True))


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
    finite, within max_qty) and every other gate are `ops.core.risk.evaluate`'s.
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
            limit_price=s.limit_price, expires_at=s.expires_at, reduce_only=s.reduce_only,
        )
    except ValueError as exc:
        return str(exc)
    return ParsedSignal(req, intent)


def _snapshot(p: Position, by_stops: Decimal = Decimal(0)) -> PositionSnapshot:
    """The position as the gates see it: only the quantity not already held by open
    orders (`qty_available`), so an exit signal cannot sell what a working order is
    already selling (which would open a short) — except what the pipeline's own
    protective stops hold (`by_stops`, unsigned), which are cancelled before an exit."""
    value = _market_value(p)
    if p.qty_available is None:
        qty = p.qty
    else:
        back = min(by_stops, abs(p.qty) - abs(p.qty_available))
        qty = p.qty_available + (back if p.qty > 0 else -back)
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
    option_power = state.options_buying_power
    today = state.opened_today
    held = current.qty if current is not None else Decimal(0)
    effect = position_effect(held, Side(s.side), qty)
    if effect.is_exit and current is not None and qty is not None:
        # Whatever this order sells is no longer available to the next exit signal.
        left = held - qty if held > 0 else held + qty
        positions[s.symbol] = PositionSnapshot(left, current.market_value * left / held)
    else:
        opened[s.symbol] = opened.get(s.symbol, Decimal(0)) + value
        today = today | {s.symbol}  # an entry today: its exit today is a day trade
        if s.side == "buy":
            if OptionSymbol.parse(s.symbol) is None:
                power -= value
            elif option_power is not None:
                option_power -= value
            else:
                power -= value
    return dataclasses.replace(
        state, buying_power=power, options_buying_power=option_power,
        positions=positions, open_order_notional=opened, opened_today=today)


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
        cfg = ctx.account_cfg or acfg  # current config: hot reload applies to the next signal
        return RiskLimits.from_config(cfg.risk, cfg.exits)

    def manage_external() -> bool:
        return (ctx.account_cfg or acfg).manage_external  # hot reload, like the limits

    from ops.roles.runtime import broker_settings  # runtime imports roles lazily

    budget = broker_settings(ctx.config, "dispatcher")
    d = Dispatcher(store=ctx.store, broker=broker, account=account, limits=limits,
                   kill_switch=ctx.kill_switch, process=ctx.process,
                   batch=batch_for_budget(budget.rate_limit_per_min, budget.rate_limit_burst),
                   fault=os.environ.get(FAULT_ENV),
                   accounts=lambda: list(ctx.config.accounts), secret_id=acfg.secret_id,
                   manage_external=manage_external)

    async def job(slot: object) -> None:
        await d.run_pass()

    ticker = ctx.ticker("dispatcher", acfg.schedule.dispatcher_s, job, market_gate=False)
    listener = SignalListener(ctx.store.url, account, d.wake)
    ctx.add_counters("dispatcher", d.counters)
    ctx.add_counters("listen", lambda: {"notifications": listener.notifications,
                                        "connects": listener.connects})
    return [ticker, listener, WakeLoop(d)]
