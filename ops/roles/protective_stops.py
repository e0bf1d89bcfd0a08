"""Protective stops: a stop order resting at the broker for every managed position.

Why: exits are decided by polling (ops/core/exits.py, the position manager's tick). If the host,
the network or Postgres stalls, polling stops and a position has no protection at all.
A stop resting at the broker keeps protecting it whatever happens here (invariant 10).

What lives here: the pure part (`stop_level`, `round_stop`, `desired_stop`, the client
order ids `stop_client_order_id` / `parse_stop_id`), `cancel_stops()` (cancel a symbol's
resting stops and wait for the broker's word: for whoever sends an exit) and
`ProtectiveStops`, which the position manager owns: `reconcile()` after the exits step of
every tick (whatever the clock says), `before_exit()` from `_submit_exit` before any
market exit is sent.
What does not: deciding exits (ops.core.exits), who owns what (ops.core.ownership, the position
manager's `_ownership`), water marks (the position manager tracks and persists them).

The stop of one position (the managed part only: an external lot gets none):
- price: the tighter of the stop-loss level (entry x (1 - stop_loss_pct/100) for a long,
  entry x (1 + stop_loss_pct/100) for a short) and the trailing level (high-water mark x
  (1 - trailing_stop_pct/100), low-water mark x (1 + ...) for a short); neither rule
  configured: no stop. Rounded to the price grid (equities 0.01, 0.0001 under $1;
  options 0.01, 0.05 from $3) on the looser side, so the broker never fires before the
  configured level is reached;
- quantity: the managed quantity in whole shares (Alpaca takes no fractional stop), less
  what other open orders on the closing side already hold (a resting sell holds shares;
  a second one is refused "insufficient qty available");
- time in force: `gtc` for equities; `day` for single-leg options (Alpaca accepts stop
  and stop_limit for them, changelog 2026-08-27): the day stop expires at the close and
  the next tick places the next one, which the broker holds for the next session;
- client order id: `ops-<account>-stop-<symbol>-<position opened_at>-<seq>`. The pipeline
  prefix makes a stop fill a managed reduction (ops/store/ownership.py); the epoch is the
  position's persisted opened_at; `seq` counts placements and replacements within it. The
  next seq is derived from the broker (the highest seq of the epoch among the symbol's
  orders since it opened, +1), never from local memory alone, so a restart computes the
  same id for the same placement and the broker refuses a second one (duplicate id).

`reconcile()` takes the broker's open orders as the truth (no table: what the pipeline
knows of its stops is derived from the open orders by the client order id prefix):
- a managed position without a stop: placed (its quantity checked against a fresh read of
  the position first, so a stop that filled between two reads is never placed twice);
- a stop whose price is off by a meaningful step (`step_pct`, default 0.25 %, at least
  one price tick) or whose quantity differs: replaced (PATCH /v2/orders/{id}); a stop the
  broker will not replace (still `accepted` while the market is closed) is cancelled and
  placed again;
- a stop on the wrong side: cancelled and placed again;
- two or more stops for one symbol: the best kept, the extra cancelled;
- a stop without a managed position (closed, released, external only, rules off,
  `protective_stops = false`): cancelled;
- a stop in a pending state (pending_new/cancel/replace): left for the next tick;
- a missing stop that someone else cancelled less than `foreign_cancel_grace_s` (15 s)
  ago: placed after that grace, not at once (whoever cancelled it, e.g. the sender of an
  exit signal through `cancel_stops`, may need the shares for its sell).
Nothing is touched while ownership or the water marks are unknown (Postgres away and
nothing cached: the stops keep resting as they are), nor under the flatten kill switch
(the dispatcher cancels every order and closes the positions).

`before_exit()`: a local exit first cancels the symbol's resting stops and waits until
the broker confirms each is cancelled. If one filled (even partly) the exit is not sent:
the position is gone or smaller and the next tick decides again. So the stop and the
market exit never both fill, and a sell never over-sells into a short.

A stop the broker refuses is an incident (`protective-refused:<account>:<symbol>`, text
by ops.core.refusals), closed when a later stop for the symbol is accepted or the symbol no
longer needs one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from ops.broker import Broker, BrokerError
from ops.broker.errors import BrokerApiError
from ops.core import refusals
from ops.core.exits import ExitRules, PositionState
from ops.core.models import (
    AssetClass,
    OptionSymbol,
    Order,
    OrderRequest,
    OrderType,
    Position,
    Side,
    TimeInForce,
)
from ops.core.ownership import split
from ops.core.risk import check_account_name, qty_text
from ops.roles.refusal_incidents import RefusalIncidents
from ops.store.store import Store

log = logging.getLogger(__name__)

_HUNDRED = Decimal(100)
#: Order states in which the broker is still acting on the order: leave it for a tick.
BUSY_STATUSES = frozenset({"pending_new", "pending_cancel", "pending_replace",
                           "accepted_for_bidding"})
DEFAULT_STEP_PCT = Decimal("0.25")


# --- the pure part --------------------------------------------------------------------------


def stop_prefix(account: str) -> str:
    """The client_order_id prefix of the account's protective stops."""
    return f"ops-{account}-stop-"


def _epoch_text(opened_at: datetime) -> str:
    if opened_at.tzinfo is None:
        raise ValueError(f"position opened_at must be timezone-aware, got {opened_at!r}")
    return opened_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%f")


def stop_client_order_id(account: str, symbol: str, opened_at: datetime, seq: int) -> str:
    """`ops-<account>-stop-<symbol>-<opened_at>-<seq>` (<= 128 characters): the same
    position epoch and sequence number give the same id after any restart."""
    check_account_name(account)
    if not symbol:
        raise ValueError("stop client order id needs a symbol")
    if seq < 1:
        raise ValueError(f"stop sequence must be >= 1, got {seq}")
    epoch = _epoch_text(opened_at)
    cid = f"{stop_prefix(account)}{symbol}-{epoch}-{seq}"
    if len(cid) <= 128:
        return cid
    digest = hashlib.sha256(symbol.encode()).hexdigest()[:32]
    return f"{stop_prefix(account)}{digest}-{epoch}-{seq}"


@dataclass(frozen=True, slots=True)
class StopId:
    symbol: str  # as written in the id (a digest for an absurdly long symbol)
    epoch: str
    seq: int


def parse_stop_id(account: str, cid: str) -> StopId | None:
    """The parts of one of the account's stop ids, or None for any other id."""
    prefix = stop_prefix(account)
    if not cid.startswith(prefix):
        return None
    parts = cid[len(prefix):].rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not parts[2].isdigit():
        return None
    return StopId(parts[0], parts[1], int(parts[2]))


def is_option(symbol: str, asset_class: str | None = None) -> bool:
    return asset_class == AssetClass.US_OPTION.value or OptionSymbol.parse(symbol) is not None


def price_tick(price: Decimal, option: bool) -> Decimal:
    """The price grid a stop must sit on: equities 0.01 (0.0001 under $1); options 0.01
    under $3 and 0.05 from $3 (the penny-program grid; the coarser one of other classes
    would be refused and show up as a protective-refused incident)."""
    if option:
        return Decimal("0.05") if price >= 3 else Decimal("0.01")
    return Decimal("0.01") if price >= 1 else Decimal("0.0001")


def round_stop(level: Decimal, long: bool, option: bool) -> Decimal:
    """`level` on the price grid, rounded to the looser side (down for a long's sell stop,
    up for a short's buy stop): the broker never fires before the rule's level."""
    tick = price_tick(level, option)
    units = (level / tick).to_integral_value(ROUND_FLOOR if long else ROUND_CEILING)
    return (units * tick).normalize()


def stop_level(long: bool, entry: Decimal, state: PositionState, rules: ExitRules
               ) -> Decimal | None:
    """The tighter of the stop-loss and trailing levels (unrounded), None without either
    rule. Longs: the higher of entry x (1 - sl%) and high-water x (1 - trail%); shorts:
    the lower of entry x (1 + sl%) and low-water x (1 + trail%)."""
    levels: list[Decimal] = []
    sign = -1 if long else 1
    if rules.stop_loss_pct is not None and entry > 0:
        levels.append(entry * (_HUNDRED + sign * rules.stop_loss_pct) / _HUNDRED)
    if rules.trailing_stop_pct is not None:
        mark = state.high_water if long else state.low_water
        if mark > 0:
            levels.append(mark * (_HUNDRED + sign * rules.trailing_stop_pct) / _HUNDRED)
    levels = [v for v in levels if v > 0]
    if not levels:
        return None
    return max(levels) if long else min(levels)


@dataclass(frozen=True, slots=True)
class Target:
    """One managed position to protect: `position.qty` is the managed part (signed)."""

    position: Position
    state: PositionState


@dataclass(frozen=True, slots=True)
class StopSpec:
    """The stop a position should have resting at the broker."""

    symbol: str
    side: Side
    qty: Decimal
    stop_price: Decimal
    time_in_force: TimeInForce
    option: bool

    @property
    def position_intent(self) -> str | None:
        if not self.option:
            return None
        return "sell_to_close" if self.side is Side.SELL else "buy_to_close"


def whole_qty(managed: Decimal, held_by_others: Decimal) -> Decimal:
    """Whole units a stop may cover: the managed quantity (unsigned) less what other open
    closing orders hold, floored (a stop order takes no fraction)."""
    return max(Decimal(0), (abs(managed) - held_by_others).to_integral_value(ROUND_FLOOR))


def desired_stop(target: Target, rules: ExitRules, held_by_others: Decimal = Decimal(0)
                 ) -> StopSpec | None:
    """The stop `target` should have, or None (no stop rule, nothing whole to cover)."""
    p = target.position
    if p.qty == 0:
        return None
    long = p.qty > 0
    option = is_option(p.symbol, p.asset_class)
    level = stop_level(long, p.avg_entry_price, target.state, rules)
    if level is None:
        return None
    price = round_stop(level, long, option)
    qty = whole_qty(p.qty, held_by_others)
    if price <= 0 or qty <= 0:
        return None
    return StopSpec(p.symbol, Side.SELL if long else Side.BUY, qty, price,
                    TimeInForce.DAY if option else TimeInForce.GTC, option)


def remaining(o: Order) -> Decimal:
    return max(Decimal(0), (o.qty or Decimal(0)) - o.filled_qty)


def needs_replace(resting: Order, want: StopSpec, step_pct: Decimal) -> bool:
    """Quantity or time in force differs, or the price moved by a meaningful step (at
    least `step_pct` percent of the resting price and at least one price tick)."""
    if remaining(resting) != want.qty or resting.time_in_force != want.time_in_force.value:
        return True
    if resting.stop_price is None:
        return True
    step = max(price_tick(want.stop_price, want.option), resting.stop_price * step_pct / _HUNDRED)
    return abs(want.stop_price - resting.stop_price) >= step


def held_by_others(orders: Iterable[Order], symbol: str, side: Side, account: str
                   ) -> Decimal:
    """What open orders other than the account's stops hold on the closing side."""
    prefix = stop_prefix(account)
    return sum((remaining(o) for o in orders
                if o.symbol == symbol and o.side == side.value
                and not o.client_order_id.startswith(prefix)), Decimal(0))


# --- cancelling before an exit (also for other senders of exits) ----------------------------


@dataclass(frozen=True, slots=True)
class StopsCleared:
    """What cancelling a symbol's resting stops came to."""

    found: tuple[Order, ...] = ()
    filled: tuple[Order, ...] = ()  # (partly) filled before the cancel took: re-decide
    pending: tuple[Order, ...] = ()  # cancel not confirmed within the wait

    @property
    def clear(self) -> bool:
        """Nothing rests or fills any more: an exit may be sent."""
        return not self.filled and not self.pending

    def reason(self) -> str | None:
        """Why an exit must not be sent now, or None."""
        if self.filled:
            done = ", ".join(f"{o.client_order_id} filled {qty_text(o.filled_qty)}"
                             for o in self.filled)
            return (f"the protective stop filled before the exit ({done}): the position is "
                    "gone or smaller, the exit is decided again at the next tick")
        if self.pending:
            names = ", ".join(o.client_order_id for o in self.pending)
            return (f"the cancel of protective stop {names} is not confirmed yet: the exit "
                    "waits for the next tick (never both)")
        return None


async def cancel_stops(broker: Broker, account: str, symbol: str, *, wait_s: float = 5.0,
                       why: str = "an exit is about to be sent") -> StopsCleared:
    """Cancel `symbol`'s resting protective stops and wait until the broker confirms each
    is over. For any sender of an exit (the position manager here; an exit signal of the
    dispatcher would need it too: a resting stop holds the shares, and a sell beside it
    is refused "insufficient qty available" or, worse, both fill)."""
    prefix = stop_prefix(account)
    listed = await broker.list_orders(status="open", symbols=[symbol])
    stops = [o for o in listed if o.symbol == symbol and o.client_order_id.startswith(prefix)]
    if not stops:
        return StopsCleared()
    for o in stops:
        try:
            await broker.cancel_order(o.id)
            log.info("account %s: protective stop %s (%s %s) cancel requested: %s", account,
                     o.client_order_id, o.symbol, qty_text(remaining(o)), why)
        except BrokerApiError as exc:
            # 404/422: already gone, filled or not cancelable; the wait below says which.
            log.info("account %s: cancel of protective stop %s answered %s", account,
                     o.client_order_id, exc)
    outcomes = [await wait_terminal(broker, o, wait_s) for o in stops]
    return StopsCleared(
        found=tuple(stops),
        filled=tuple(o for o in outcomes if o is not None and o.filled_qty > 0),
        pending=tuple(o for o, seen in zip(stops, outcomes, strict=True)
                      if seen is not None and not seen.is_terminal))


async def wait_terminal(broker: Broker, o: Order, wait_s: float) -> Order | None:
    """The order once terminal, or its last state when the wait ran out (None if the
    broker does not know it at all)."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        last = await broker.get_order(o.id)
        if last is None or last.is_terminal or time.monotonic() >= deadline:
            return last
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


# --- the role's half ------------------------------------------------------------------------


@dataclass(slots=True)
class StopCounters:
    stops_resting: int = 0  # our stops open at the broker after the last reconcile
    stops_placed: int = 0
    stops_replaced: int = 0
    stops_cancelled: int = 0  # orphans, duplicates, wrong side, before a re-place
    stops_refused: int = 0
    stops_unknown: int = 0  # submissions without a definitive answer (settled by id later)
    stops_unprotected: int = 0  # managed positions with nothing whole to cover (fractional)
    stops_skipped: int = 0  # reconciles skipped: ownership/state unknown, or flatten
    stops_deferred: int = 0  # placements waiting: someone else cancelled the stop just now
    stops_crossed: int = 0  # placements not made: the level was already crossed (fresh read)
    exit_stop_cancels: int = 0  # stops cancelled (confirmed) before a local exit
    exit_stop_filled: int = 0  # local exits not sent: the stop filled first
    exit_stop_unconfirmed: int = 0  # local exits not sent (yet): cancel not confirmed

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ProtectiveStops:
    """One account's protective stops (see the module docstring)."""

    def __init__(
        self,
        *,
        account: str,
        broker: Broker,
        store: Store,
        process: str,
        enabled: Callable[[], bool],
        step_pct: Decimal = DEFAULT_STEP_PCT,
        cancel_wait_s: float = 5.0,
        foreign_cancel_grace_s: float = 15.0,
        secret_id: str | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.account = account
        self.broker = broker
        self.enabled = enabled
        self.step_pct = step_pct
        self.cancel_wait_s = cancel_wait_s
        self.foreign_cancel_grace_s = foreign_cancel_grace_s
        self.secret_id = secret_id
        self._now = now
        self.prefix = stop_prefix(account)
        self.counters = StopCounters()
        self.refusals = RefusalIncidents(store, kind=refusals.PROTECTIVE_REFUSED,
                                         account=account, process=process)
        self._synced = False
        self._cleaned = False  # a pass ran since protective stops were turned off
        self._seq_seen: dict[tuple[str, str], int] = {}  # (id symbol, epoch) -> highest seq
        self._exiting: dict[str, str] = {}  # symbol -> exit cid sent since the last reconcile
        self._seen: dict[str, Decimal] = {}  # symbol -> qty in the tick's position read
        self._cancelled: dict[str, float] = {}  # order id -> monotonic time we cancelled it

    # -- reading the broker -------------------------------------------------------------------

    def _ours(self, orders: Iterable[Order]) -> list[Order]:
        out = []
        for o in orders:
            sid = parse_stop_id(self.account, o.client_order_id)
            if sid is None:
                continue
            self._saw(sid)
            out.append(o)
        return out

    def _saw(self, sid: StopId) -> None:
        key = (sid.symbol, sid.epoch)
        self._seq_seen[key] = max(self._seq_seen.get(key, 0), sid.seq)

    async def _history(self, symbol: str, opened_at: datetime) -> list[Order]:
        """Our stops of `symbol` since its position epoch began (whatever their state): ids
        are unique per account for ever, so a cancelled or expired stop's number is used."""
        since = opened_at - timedelta(hours=1)  # slack for clock skew with the broker
        orders = await self.broker.list_orders(status="all", symbols=[symbol], after=since)
        return [o for o in self._ours(orders) if o.symbol == symbol]

    def _next_seq(self, symbol: str, opened_at: datetime) -> int:
        """The next sequence number of this position epoch, from every stop id seen."""
        probe = parse_stop_id(self.account, stop_client_order_id(self.account, symbol,
                                                                 opened_at, 1))
        assert probe is not None
        return self._seq_seen.get((probe.symbol, probe.epoch), 0) + 1

    def _mine(self, order_id: str) -> None:
        """Remember a cancel of ours (an hour is plenty: see `_foreign_cancel`)."""
        now = time.monotonic()
        self._cancelled = {k: t for k, t in self._cancelled.items() if now - t < 3600}
        self._cancelled[order_id] = now

    def _foreign_cancel(self, history: Sequence[Order]) -> Order | None:
        """The newest stop of the symbol if someone else cancelled it less than
        `foreign_cancel_grace_s` ago: an exit signal's sender (or the operator) is acting
        on the position, and a stop placed at once would hold the shares its sell needs."""
        if not history or self.foreign_cancel_grace_s <= 0:
            return None
        newest = max(history, key=lambda o: o.created_at)
        at = newest.canceled_at
        if newest.status != "canceled" or at is None or newest.id in self._cancelled:
            return None
        age = (datetime.now(UTC) - at).total_seconds()
        return newest if age < self.foreign_cancel_grace_s else None

    def observe(self, positions: Iterable[Position]) -> None:
        """The tick's read of the broker's positions, which its exit decisions are made on."""
        self._seen = {p.symbol: p.qty for p in positions}

    # -- the local exit's gate -------------------------------------------------------------------

    async def before_exit(self, symbol: str, exit_cid: str) -> str | None:
        """Cancel `symbol`'s resting stops and confirm it before a market exit is sent.

        None: no stop rests any more, send the exit. Otherwise the reason not to send it
        now: a stop filled (the position is gone or smaller: decide again next tick), the
        position changed since the tick read it (a stop may have filled just before the
        open orders were listed), or a cancel is not confirmed yet (try again next tick).
        Runs whatever `enabled` says: a stop left from before the feature was turned off
        holds the shares just the same.
        """
        self._exiting[symbol] = exit_cid
        cleared = await cancel_stops(self.broker, self.account, symbol,
                                     wait_s=self.cancel_wait_s,
                                     why="a local exit is about to be sent")
        for o in cleared.found:
            self._mine(o.id)
            sid = parse_stop_id(self.account, o.client_order_id)
            if sid is not None:
                self._saw(sid)
        if not cleared.found:
            return await self._unchanged(symbol) if self.enabled() else None
        if cleared.filled:
            self.counters.exit_stop_filled += 1
        elif cleared.pending:
            self.counters.exit_stop_unconfirmed += 1
        if not cleared.clear:
            return cleared.reason()
        self.counters.exit_stop_cancels += len(cleared.found)
        return await self._unchanged(symbol)

    async def _unchanged(self, symbol: str) -> str | None:
        """None if the broker's position is still what the tick's decision was made on."""
        fresh = await self.broker.get_position(symbol)
        now_qty = fresh.qty if fresh is not None else Decimal(0)
        seen = self._seen.get(symbol)
        if seen is not None and now_qty == seen:
            return None
        self.counters.exit_stop_filled += 1
        return (f"the position changed since the tick read it ({qty_text(seen or Decimal(0))}"
                f" -> {qty_text(now_qty)}; a protective stop may have filled): the exit is "
                "decided again at the next tick")

    # -- the tick's reconcile ------------------------------------------------------------------

    def active(self) -> bool:
        """Whether this tick needs a reconcile: always while enabled; once after they were
        turned off (or at start while off), to cancel the stops left resting."""
        if self.enabled():
            self._cleaned = False
            return True
        return not self._cleaned

    def skip(self, why: str) -> None:
        """This tick leaves every stop as it is (ownership or state unknown, flatten)."""
        self.counters.stops_skipped += 1
        self._exiting.clear()
        log.info("account %s: protective stops left as they are: %s", self.account, why)

    async def reconcile(self, targets: Mapping[str, Target], rules: ExitRules,
                        now: datetime | None = None, hold: frozenset[str] = frozenset()
                        ) -> None:
        """Make the broker's resting stops match `targets` (the managed positions, each
        with its managed quantity and tracked state): place, replace, cancel. The symbols
        in `hold` are left as they are (a split the exit state is not re-based for yet)."""
        now = now or self._now()
        exiting, self._exiting = self._exiting, {}
        if not self._synced:
            await self.refusals.sync()
            self._synced = True
        if not self.enabled():
            targets = {}
            self._cleaned = True
        open_orders = await self.broker.list_orders(status="open")
        ours = self._ours(open_orders)
        by_symbol: dict[str, list[Order]] = {}
        for o in ours:
            by_symbol.setdefault(o.symbol, []).append(o)
        failures: list[str] = []
        unprotected = resting = 0
        for symbol in sorted((set(targets) | set(by_symbol)) - hold):
            stops = by_symbol.get(symbol, [])
            target = targets.get(symbol)
            try:
                if symbol in exiting and await self._exit_open(exiting[symbol], open_orders):
                    continue  # the exit holds the shares; it closes the position
                if any(o.status in BUSY_STATUSES for o in stops):
                    resting += 1
                    continue  # the broker is acting on one: look again next tick
                want = None
                if target is not None:
                    p = target.position
                    side = Side.SELL if p.qty > 0 else Side.BUY
                    want = desired_stop(target, rules, held_by_others(
                        open_orders, symbol, side, self.account))
                    if want is None and stop_level(p.qty > 0, p.avg_entry_price,
                                                   target.state, rules) is not None:
                        # A stop rule applies, but there is nothing whole to cover (a
                        # fractional position, or other orders hold the shares).
                        unprotected += 1
                resting += await self._converge(symbol, stops, target, want, now)
            except Exception as exc:  # one symbol's trouble must not stop the others'
                log.exception("account %s: protective stop of %s failed", self.account, symbol)
                failures.append(f"{symbol}: {type(exc).__name__}: {exc}")
        self.counters.stops_unprotected = unprotected
        self.counters.stops_resting = resting
        await self.refusals.close_all_but(
            targets, lambda s: f"{s} no longer needs a protective stop (position closed, "
                               "released or no stop rule)", now)
        if failures:
            raise RuntimeError("protective stops: " + "; ".join(failures))

    async def _exit_open(self, exit_cid: str, open_orders: Sequence[Order]) -> bool:
        """Whether the exit sent this tick is open at the broker (the listing may lag a
        submission: then it is looked up by its id)."""
        if any(o.client_order_id == exit_cid for o in open_orders):
            return True
        order = await self.broker.get_order_by_client_id(exit_cid)
        return order is not None and not order.is_terminal

    async def _converge(self, symbol: str, stops: list[Order], target: Target | None,
                        want: StopSpec | None, now: datetime) -> int:
        """One symbol's stops brought to `want`; how many rest afterwards (0 or 1)."""
        if want is None or target is None:
            for o in stops:
                await self._cancel(o, "orphaned: no managed position needs it")
            return 0
        keep, extra = self._pick(stops, want, target.state.opened_at)
        for o in extra:
            await self._cancel(o, f"duplicate: {keep.client_order_id if keep else '?'} "
                                  f"protects {symbol}")
        if keep is not None and keep.side != want.side.value:
            await self._cancel(keep, f"wrong side ({keep.side}, the position needs "
                                     f"{want.side.value})")
            keep = None
        if keep is None:
            return await self._place(target, want, now)
        if needs_replace(keep, want, self.step_pct):
            return await self._replace(keep, target, want, now)
        return 1

    def _pick(self, stops: list[Order], want: StopSpec, opened_at: datetime
              ) -> tuple[Order | None, list[Order]]:
        """The stop to keep (right side, this epoch, closest to what is wanted, newest)
        and the extra ones."""
        if not stops:
            return None, []
        epoch = _epoch_text(opened_at)

        def rank(o: Order) -> tuple[bool, bool, bool, Decimal, int]:
            sid = parse_stop_id(self.account, o.client_order_id)
            return (o.side == want.side.value,
                    sid is not None and sid.epoch == epoch,
                    remaining(o) == want.qty,
                    -abs((o.stop_price or Decimal(0)) - want.stop_price),
                    sid.seq if sid is not None else 0)

        ordered = sorted(stops, key=rank, reverse=True)
        return ordered[0], ordered[1:]

    async def _cancel(self, o: Order, why: str) -> None:
        self._mine(o.id)
        try:
            await self.broker.cancel_order(o.id)
        except BrokerApiError as exc:
            log.info("account %s: cancel of protective stop %s (%s) answered %s",
                     self.account, o.client_order_id, why, exc)
            return
        self.counters.stops_cancelled += 1
        log.warning("account %s: protective stop %s (%s %s %s @ %s) cancelled: %s",
                    self.account, o.client_order_id, o.side, qty_text(remaining(o)),
                    o.symbol, o.stop_price, why)

    async def _place(self, target: Target, want: StopSpec, now: datetime) -> int:
        symbol = want.symbol
        # A fresh read of the position, after the open orders were listed: a stop that
        # filled between the tick's position read and that listing shows here, so the
        # missing stop is never a filled one placed again (an over-sell into a short).
        fresh = await self.broker.get_position(symbol)
        if fresh is None or fresh.qty == 0 or (fresh.qty > 0) != (target.position.qty > 0):
            log.info("account %s: %s is gone at the broker; no protective stop placed",
                     self.account, symbol)
            return 0
        managed = split(symbol, fresh.qty, target.position.qty).managed
        qty = min(want.qty, whole_qty(managed, Decimal(0)))
        if qty <= 0:
            return 0
        price = fresh.current_price
        if price is not None and price > 0 and (
                want.stop_price >= price if want.side is Side.SELL else want.stop_price <= price):
            # Already crossed: placed now it would fill at once, on a level computed from
            # the tick's older read (a split or a jump since). The exit rules decide on
            # the next tick's read instead.
            self.counters.stops_crossed += 1
            log.warning("account %s: protective stop for %s not placed: its level %s is "
                        "already crossed (price now %s); the exit rules decide next tick",
                        self.account, symbol, want.stop_price, price)
            return 0
        history = await self._history(symbol, target.state.opened_at)
        foreign = self._foreign_cancel(history)
        if foreign is not None:
            self.counters.stops_deferred += 1
            log.info("account %s: protective stop %s was cancelled by someone else at %s; "
                     "placing a new one waits %.0fs (an exit of theirs may need the shares)",
                     self.account, foreign.client_order_id, foreign.canceled_at,
                     self.foreign_cancel_grace_s)
            return 0
        seq = self._next_seq(symbol, target.state.opened_at)
        for _ in range(5):
            cid = stop_client_order_id(self.account, symbol, target.state.opened_at, seq)
            req = OrderRequest(symbol=symbol, side=want.side, client_order_id=cid, qty=qty,
                               order_type=OrderType.STOP, time_in_force=want.time_in_force,
                               stop_price=want.stop_price,
                               position_intent=want.position_intent)
            res = await self.broker.submit_order(req)
            if res.order is not None:
                sid = parse_stop_id(self.account, res.order.client_order_id)
                if sid is not None:
                    self._saw(sid)
            if (res.outcome == "accepted" and res.http_status == 422 and res.order is not None
                    and res.order.is_terminal):
                # The id was used by a stop that is over (cancelled, expired, filled): the
                # history listing did not show it yet. The next number.
                seq += 1
                continue
            break
        else:
            raise RuntimeError(f"no unused stop id found for {symbol} up to seq {seq}")
        what = (f"{want.side.value} stop {qty_text(qty)} {symbol} @ {want.stop_price} "
                f"{want.time_in_force.value}")
        if res.outcome == "accepted":
            self.counters.stops_placed += 1
            log.warning("account %s: protective stop %s placed: %s", self.account, cid, what)
            await self.refusals.accepted(symbol, f"protective stop {cid} ({what}) accepted",
                                         now)
            return 1
        if res.outcome == "rejected":
            await self._refused(symbol, cid, want, qty, res.http_status, res.code,
                                res.reason or "", now)
            return 0
        # Unknown: the same id comes back next tick (the seq is only advanced by what the
        # broker shows), and a duplicate is refused, so no second stop can result.
        self.counters.stops_unknown += 1
        log.error("account %s: protective stop %s outcome unknown (%s); the next tick "
                  "looks again", self.account, cid, res.reason)
        return 0

    async def _replace(self, old: Order, target: Target, want: StopSpec, now: datetime
                       ) -> int:
        symbol = want.symbol
        seq = self._next_seq(symbol, target.state.opened_at)
        cid = stop_client_order_id(self.account, symbol, target.state.opened_at, seq)
        what = (f"{qty_text(remaining(old))} @ {old.stop_price} -> {qty_text(want.qty)} @ "
                f"{want.stop_price} {want.time_in_force.value}")
        try:
            new = await self.broker.replace_order(
                old.id, qty=want.qty if want.qty != remaining(old) else None,
                stop_price=want.stop_price if want.stop_price != old.stop_price else None,
                time_in_force=(want.time_in_force.value
                               if want.time_in_force.value != old.time_in_force else None),
                client_order_id=cid)
        except BrokerApiError as exc:
            text = exc.reason.lower()
            if "replaceable" in text:
                # Not replaceable in its state (accepted while the market is closed): a
                # new stop instead. The old one is cancelled first, and confirmed: two
                # resting sells cannot hold the same shares.
                log.info("account %s: protective stop %s not replaced (%s); cancelled and "
                         "placed again", self.account, old.client_order_id, exc.reason)
                await self._cancel(old, "replaced by a new stop (not replaceable)")
                seen = await wait_terminal(self.broker, old, self.cancel_wait_s)
                if seen is not None and not seen.is_terminal:
                    return 1  # cancel not confirmed yet: the next tick looks again
                return await self._place(target, want, now)
            if exc.http_status == 422 and "client_order_id" in text:
                await self._history(symbol, target.state.opened_at)  # learn the numbers
                log.info("account %s: stop id %s used before; the next tick takes the next",
                         self.account, cid)
                return 1
            await self._refused(symbol, cid, want, want.qty, exc.http_status, exc.code,
                                exc.reason, now, replacing=old.client_order_id)
            return 1  # the old stop still rests
        except BrokerError as exc:
            # No answer: the next tick's listing shows whether it happened (same id then).
            self.counters.stops_unknown += 1
            log.error("account %s: replace of protective stop %s: %s", self.account,
                      old.client_order_id, exc)
            return 1
        sid = parse_stop_id(self.account, new.client_order_id)
        if sid is not None:
            self._saw(sid)
        self.counters.stops_replaced += 1
        log.warning("account %s: protective stop %s replaced by %s: %s", self.account,
                    old.client_order_id, new.client_order_id, what)
        await self.refusals.accepted(symbol, f"protective stop {cid} ({what}) accepted", now)
        return 1

    async def _refused(self, symbol: str, cid: str, want: StopSpec, qty: Decimal,
                       status: int | None, code: int | None, message: str, now: datetime,
                       replacing: str | None = None) -> None:
        self.counters.stops_refused += 1
        what = "the protective stop" + (f" replacing {replacing}" if replacing else "")
        detail = refusals.describe(
            refusals.Refusal(status, code, message), what=what, account=self.account,
            symbol=symbol, qty=qty, side=want.side.value, order=cid, secret_id=self.secret_id)
        await self.refusals.refused(
            symbol, f"{detail} (stop at {want.stop_price} {want.time_in_force.value}; the "
                    "position has no stop resting at the broker while this lasts)", now)


__all__ = ["DEFAULT_STEP_PCT", "ProtectiveStops", "StopCounters", "StopId", "StopSpec",
           "StopsCleared", "Target", "cancel_stops", "desired_stop", "held_by_others",
           "needs_replace", "parse_stop_id", "price_tick", "round_stop",
           "stop_client_order_id", "stop_level", "stop_prefix", "wait_terminal", "whole_qty"]
