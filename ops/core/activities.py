"""Non-trade activities: what each one does to positions, ownership and exit state. Pure.

The broker changes positions without a fill (docs/broker-protocol.md 3.7a): an option expires
(OPEXP), is exercised (OPEXC) or assigned (OPASN) with the paired trade of the underlying
shares at the strike (OPTRD), a stock splits (SPLIT, formerly SSP), spins off a new stock
(SPIN, formerly SSO), changes its symbol or name (SC/NC: a negative row on the old symbol,
a positive one on the new), is reorganised (REO...). `plan(book, batch, ...)` decides, for
each activity not applied yet (by id: applying a batch twice changes nothing), what it does:

- `qty_delta`, the signed change of the symbol's position, which the drift check counts
  like a fill (ops/core/drift.py: "drift explained by an activity is not drift"). Alpaca signs
  `qty` as the change of the position (OPEXC "-2", OPASN "2", OPTRD "200"), but gives no
  example for OPEXP, whose qty may be the unsigned count of contracts removed; so OPEXC
  always reduces a long, OPASN a short, and OPEXP moves the position toward zero. An
  unreadable qty gives None (the drift check then does not compare that symbol: never a
  false block, never a false agreement); an unknown type is kept and does nothing.
- ownership (ops/core/ownership.py: managed = the pipeline's fills + adjustments): contracts
  closed by expiry, exercise or assignment take the managed part with them, the external
  lots going first (a hand-placed lot is never turned into the pipeline's); the shares of
  the paired OPTRD are managed in the same proportion (an external contract delivers
  external shares); a split multiplies the managed quantity (managed x (ratio - 1)); a
  symbol change or reorganisation carries the managed fraction from the old symbol to the
  new; spun-off shares are external (the pipeline never opened them).
- exit state: a split re-bases the water marks (and anything priced) by the ratio, opening
  time unchanged, so a 2:1 split never reads as a 50 % drop; only a state that existed
  when the split was first seen (opened before `at`) is re-based.

The split ratio is not in the activity (qty is the change of the share count only): it is
derived from the position before (`held`, the last synced one) and the broker's position
now, which must agree on a plausible ratio (`nice_ratio`); when they disagree the
ratio is unknown and the exit state is reset (tracking starts again: no false stop) rather
than guessed.

What does not live here: reading activities (ops.broker), storing them and their effects in
one transaction (ops.store.activities), the role's timing (ops/roles/activities.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction

from ops.core.exits import PositionState
from ops.core.models import OPTION_MULTIPLIER, NonTradeActivity, OptionSymbol
from ops.core.ownership import split as split_holding

_ZERO = Decimal(0)

#: What the position manager asks the broker for (the documented position-changing types).
FETCH_TYPES = ("OPEXP", "OPEXC", "OPASN", "OPTRD", "SPLIT", "SSP", "SPIN", "SSO", "SC",
               "NC", "REO")
CLOSING = frozenset({"OPEXP", "OPEXC", "OPASN"})
SPLITS = frozenset({"SPLIT", "SSP"})
SPINS = frozenset({"SPIN", "SSO"})
TRANSFERS = frozenset({"SC", "NC", "REO", "REOS", "REOC", "REOSC"})
POSITION_TYPES = CLOSING | SPLITS | SPINS | TRANSFERS | {"OPTRD"}
KINDS = {"OPEXP": "expiry", "OPEXC": "exercise", "OPASN": "assignment", "OPTRD": "option-trade",
         "SPLIT": "split", "SSP": "split", "SC": "symbol-change", "NC": "name-change"}
MAX_RATIO_TERM = 100  # a split ratio's terms are small (2:1, 3:2, 1:10, 1:100)
MIN_RATIO_TERM = 4  # ...and the smaller one tiny (1, 2, 3 or 4: 5:4, 4:3, 3:2, 1:n, n:1)


def kind_of(activity_type: str) -> str:
    t = activity_type.upper()
    return KINDS.get(t, "reorganisation" if t in TRANSFERS else t.lower() or "unknown")


def _q(x: Decimal) -> str:
    return format(x.normalize(), "f") if x else "0"


# --- quantities -------------------------------------------------------------------------------


def qty_delta(activity_type: str, qty: Decimal | None, held: Decimal) -> Decimal | None:
    """The signed change of the position (see the module docstring); None: unreadable."""
    t = activity_type.upper()
    if t not in POSITION_TYPES:
        return _ZERO
    if qty is None:
        return None
    if t == "OPEXC":
        return -abs(qty)  # only a long option is exercised
    if t == "OPASN":
        return abs(qty)  # only a short option is assigned
    if t == "OPEXP" and held:
        return -abs(qty) if held > 0 else abs(qty)  # toward zero, whatever qty's sign
    return qty


def closed_managed(delta: Decimal, held: Decimal, managed_raw: Decimal) -> Decimal:
    """The managed part (unsigned) of `|delta|` units leaving a position of `held` (signed,
    before; 0 when not known: then as if the position were exactly what left), whose
    recorded managed quantity is `managed_raw`. External lots go first."""
    removed = abs(delta)
    if removed == 0:
        return _ZERO
    h = held if held != 0 and (held > 0) == (delta < 0) else -delta
    managed = abs(split_holding("", h, managed_raw).managed)
    external = abs(h) - managed
    return min(managed, max(_ZERO, removed - external))


def nice_ratio(r: Fraction) -> bool:
    """A ratio a split can have: terms up to 100, the smaller one up to 4 (2:1, 3:2,
    5:4, 1:10, 1:100; not 21:10 or 23:12, which a fill between two reads makes)."""
    return (r > 0 and r != 1 and r.numerator <= MAX_RATIO_TERM
            and r.denominator <= MAX_RATIO_TERM
            and min(r.numerator, r.denominator) <= MIN_RATIO_TERM)


def split_ratio(delta: Decimal, held_before: Decimal, held_now: Decimal | None) -> Fraction | None:
    """New shares per old share of a split that changed the share count by `delta`, from
    the position before it (`held_before`, the last synced) and the broker's now
    (`held_now`, read after the split was seen): what both say, or the one plausible
    reading when only one is (a fill between a read and the split spoils one of them);
    None when neither, or two different ones, are plausible."""
    found: list[Fraction] = []
    if held_before != 0:
        found.append(Fraction(held_before + delta) / Fraction(held_before))
    if held_now is not None and held_now - delta != 0:
        found.append(Fraction(held_now) / Fraction(held_now - delta))
    plausible = {r for r in found if nice_ratio(r)}
    return plausible.pop() if len(plausible) == 1 else None


#: How close the cost basis (qty x average entry) must stay for a change to read as a
#: split: Alpaca keeps the basis through a split, a trade moves it with the quantity.
SPLIT_BASIS_TOLERANCE = Decimal("0.005")
#: How far the market may have moved besides the split's re-basing between two reads.
SPLIT_PRICE_TOLERANCE = Decimal("0.1")


def looks_like_split(before: tuple[Decimal, Decimal, Decimal | None],
                     now: tuple[Decimal, Decimal, Decimal | None]) -> bool:
    """Whether a position's change between two reads, each (qty, average entry, market
    price or None), looks like a split or a reverse split: the share count changed by a
    plausible split ratio r (`nice_ratio`), the cost basis stayed within
    `SPLIT_BASIS_TOLERANCE` (a fill moves it with the quantity: a buy adds its cost, a
    sell takes its shares out at the average) and, when both reads carry a price, the
    price moved by about 1/r (within `SPLIT_PRICE_TOLERANCE`: a buy at a tiny price can
    keep the basis, it cannot re-base the market). Used to hold a position's exits until
    the broker's split activity re-bases its exit state (the position can change before
    the activity is published)."""
    (before_qty, before_avg, before_price), (qty, avg, price) = before, now
    if before_qty == 0 or qty == 0 or (before_qty > 0) != (qty > 0) or before_avg <= 0:
        return False
    ratio = Fraction(qty) / Fraction(before_qty)
    if not nice_ratio(ratio):
        return False
    before_basis = abs(before_qty * before_avg)
    if abs(abs(qty * avg) - before_basis) > before_basis * SPLIT_BASIS_TOLERANCE:
        return False
    if before_price is None or price is None or before_price <= 0 or price <= 0:
        return True
    moved = price * ratio.numerator / ratio.denominator / before_price  # 1 for a split
    return abs(moved - 1) <= SPLIT_PRICE_TOLERANCE


def scale(x: Decimal, r: Fraction) -> Decimal:
    """x x r, in Decimal (exact when r's denominator has only the factors 2 and 5)."""
    return x * r.numerator / r.denominator


def rebase_state(state: PositionState, ratio: Fraction) -> PositionState:
    """The exit state of a position after a split of `ratio` (new shares per old one):
    every price level / ratio, the opening time unchanged."""
    inverse = 1 / ratio
    return replace(state, high_water=scale(state.high_water, inverse),
                   low_water=scale(state.low_water, inverse))


# --- pairing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leg:
    """An applied activity that can be paired: a source gives up units (OPEXC/OPASN
    contracts, the negative leg of a transfer) with its managed part; a sink receives them
    (OPTRD shares, a positive leg) and inherits the managed fraction."""

    activity_id: str
    activity_type: str
    day: date | None
    symbol: str
    qty_delta: Decimal
    managed_delta: Decimal
    price: Decimal | None = None
    paired_with: str | None = None

    @property
    def is_sink(self) -> bool:
        return is_sink(self.activity_type, self.qty_delta)


def is_sink(activity_type: str, delta: Decimal | None) -> bool:
    t = activity_type.upper()
    return t == "OPTRD" or (t in TRANSFERS and delta is not None and delta > 0)


def is_source(activity_type: str, delta: Decimal | None) -> bool:
    t = activity_type.upper()
    return t in ("OPEXC", "OPASN") or (t in TRANSFERS and delta is not None and delta < 0)


def _family(activity_type: str) -> str:
    t = activity_type.upper()
    return "REO" if t.startswith("REO") else "OPTION" if t in ("OPEXC", "OPASN", "OPTRD") else t


def pairs(source: Leg, sink: Leg) -> bool:
    """Whether `sink` receives what `source` gave up: the same event (family, date), and
    for options the underlying at the strike, 100 shares per contract."""
    if _family(source.activity_type) != _family(sink.activity_type) or source.day != sink.day:
        return False
    if _family(source.activity_type) != "OPTION":
        return True
    occ = OptionSymbol.parse(source.symbol)
    return (occ is not None and occ.underlying == sink.symbol
            and (sink.price is None or sink.price == occ.strike)
            and abs(sink.qty_delta) == abs(source.qty_delta) * OPTION_MULTIPLIER)


def inherited(source: Leg, sink_delta: Decimal) -> Decimal:
    """The sink's managed part: its quantity x the source's managed fraction."""
    if source.qty_delta == 0:
        return _ZERO
    return sink_delta * abs(source.managed_delta) / abs(source.qty_delta)


# --- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Book:
    """What is known before a batch: the activities applied (by id), the positions as last
    synced, the recorded managed quantities, the exit states, the pairable legs."""

    applied: frozenset[str] = frozenset()
    held: Mapping[str, Decimal] = field(default_factory=dict)
    managed: Mapping[str, Decimal] = field(default_factory=dict)
    exits: Mapping[str, PositionState] = field(default_factory=dict)
    legs: tuple[Leg, ...] = ()


@dataclass(frozen=True, slots=True)
class LatePair:
    """A sink applied earlier (unpaired, external) whose source arrived now: its managed
    part is recorded now (under the sink's own activity id)."""

    sink_id: str
    symbol: str
    managed_delta: Decimal
    paired_with: str


@dataclass(frozen=True, slots=True)
class Applied:
    """One activity's effects, written together, exactly once (ops.store.activities)."""

    activity: NonTradeActivity
    activity_type: str
    symbol: str | None
    qty_delta: Decimal | None
    managed_delta: Decimal
    kind: str
    effect: str
    ratio: Fraction | None = None
    exit_state: PositionState | None = None  # the re-based state to store
    exit_before: PositionState | None = None  # the state it replaces
    exit_reset: bool = False  # split ratio unknown: forget the state (tracking restarts)
    paired_with: str | None = None
    late: tuple[LatePair, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    book: Book
    applied: tuple[Applied, ...]


def _order(a: NonTradeActivity) -> tuple[bool, str]:
    # Sources before sinks: an OPTRD in the same batch as its OPEXC is paired with it
    # whatever their ids say (Alpaca's example pair shows one id for both).
    return is_sink(a.activity_type, a.qty), a.id


def plan(book: Book, batch: Iterable[NonTradeActivity], *, at: datetime,
         held_now: Mapping[str, Decimal] | None = None) -> Plan:
    """The effects of the activities of `batch` not in `book.applied` (duplicates in the
    batch count once), in order, and the book after them. `at`: when they were first
    seen (a split re-bases only exit states opened before); `held_now`: the broker's
    positions read after the batch was fetched (for split ratios)."""
    applied = set(book.applied)
    held = dict(book.held)
    managed = dict(book.managed)
    exits = dict(book.exits)
    legs = list(book.legs)
    out: list[Applied] = []
    fresh: dict[str, NonTradeActivity] = {}
    for a in batch:
        if a.id not in applied:
            fresh.setdefault(a.id, a)
    for a in sorted(fresh.values(), key=_order):
        t = a.activity_type.strip().upper()
        sym = a.symbol
        applied.add(a.id)
        if t not in POSITION_TYPES or sym is None:
            why = ("no symbol" if t in POSITION_TYPES
                   else f"type {a.activity_type or '(none)'} changes no position")
            out.append(Applied(a, t, sym, _ZERO, _ZERO, kind_of(t), f"kept, not applied: {why}"))
            continue
        h = held.get(sym, _ZERO)
        d = qty_delta(t, a.qty, h)
        if d is None:
            out.append(Applied(a, t, sym, None, _ZERO, kind_of(t),
                               f"quantity {a.raw.get('qty')!r} unreadable: {sym} is not "
                               "compared by the drift check until it agrees again"))
            continue
        m = managed.get(sym, _ZERO)
        md = _ZERO
        ratio: Fraction | None = None
        exit_state: PositionState | None = None
        exit_before: PositionState | None = None
        exit_reset = False
        paired_with: str | None = None
        late: LatePair | None = None
        if t in CLOSING or (t in TRANSFERS and d < 0):
            closed = closed_managed(d, h, m)
            md = closed if d > 0 else -closed
            effect = (f"{_q(abs(d))} of {sym} gone ({kind_of(t)}): "
                      + (f"{_q(closed)} managed, " if closed else "")
                      + f"{_q(abs(d) - closed)} external")
            if is_source(t, d):
                leg = Leg(a.id, t, a.date, sym, d, md, a.price)
                legs.append(leg)
                late = _pair_late(leg, legs)
                if late is not None and late.managed_delta:
                    managed[late.symbol] = managed.get(late.symbol, _ZERO) + late.managed_delta
                    effect += (f"; its paired {late.symbol} row {late.sink_id}: "
                               f"{_q(abs(late.managed_delta))} managed now")
        elif is_sink(t, d):
            sink = Leg(a.id, t, a.date, sym, d, _ZERO, a.price)
            source = _source_for(sink, legs)
            if source is None:
                effect = (f"{_q(d)} {sym} ({kind_of(t)}) external: no paired activity seen "
                          "yet (managed later if its option or old-symbol row shows up)")
            else:
                md = inherited(source, d)
                paired_with = source.activity_id
                effect = (f"{_q(d)} {sym} ({kind_of(t)}, paired with {source.activity_id}): "
                          f"{_q(abs(md))} managed")
            legs.append(replace(sink, managed_delta=md, paired_with=paired_with))
        elif t in SPLITS:
            now_qty = (held_now or {}).get(sym)
            ratio = split_ratio(d, h, now_qty)
            state = exits.get(sym)
            if ratio is None:
                effect = (f"split of {sym} ({_q(d)} shares): ratio not derivable from "
                          f"{_q(h)} before and {'?' if now_qty is None else _q(now_qty)} "
                          "now: exit state reset, managed quantity unchanged")
                if state is not None:
                    exit_reset, exit_before = True, state
                    del exits[sym]
            else:
                md = scale(m, ratio - 1)
                effect = f"split {ratio.numerator}:{ratio.denominator} of {sym}"
                if md:
                    effect += f": managed {_q(m)} -> {_q(m + md)}"
                if state is not None and state.opened_at < at:
                    exit_before, exit_state = state, rebase_state(state, ratio)
                    exits[sym] = exit_state
                    effect += "; exit state re-based"
        else:  # a spin-off: shares the pipeline never opened
            effect = f"{_q(d)} {sym} ({kind_of(t)}) external"
        held[sym] = h + d
        if md:
            managed[sym] = m + md
        out.append(Applied(a, t, sym, d, md, kind_of(t), effect, ratio, exit_state,
                           exit_before, exit_reset, paired_with,
                           () if late is None else (late,)))
    return Plan(Book(frozenset(applied), held, managed, exits, tuple(legs)), tuple(out))


def _source_for(sink: Leg, legs: list[Leg]) -> Leg | None:
    taken = {leg.paired_with for leg in legs if leg.paired_with}
    for leg in legs:
        if (not leg.is_sink and leg.activity_id not in taken and is_source(
                leg.activity_type, leg.qty_delta) and pairs(leg, sink)):
            return leg
    return None


def _pair_late(source: Leg, legs: list[Leg]) -> LatePair | None:
    """An unpaired sink applied before its source: paired now (the first that matches)."""
    for i, leg in enumerate(legs):
        if leg.is_sink and leg.paired_with is None and pairs(source, leg):
            md = inherited(source, leg.qty_delta)
            legs[i] = replace(leg, managed_delta=md, paired_with=source.activity_id)
            return LatePair(leg.activity_id, leg.symbol, md, source.activity_id)
    return None


__all__ = ["CLOSING", "FETCH_TYPES", "POSITION_TYPES", "SPLITS", "Applied", "Book",
           "LatePair", "Leg", "Plan", "closed_managed", "inherited", "is_sink", "is_source",
           "kind_of", "looks_like_split", "nice_ratio", "pairs", "plan", "qty_delta",
           "rebase_state", "scale", "split_ratio"]
