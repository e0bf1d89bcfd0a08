"""The dashboard's history (the History tab, key 6): what it reads and how it judges it.

`HistoryData.load(span, targets)` reads, through the Store (Postgres only: the history has
no buffered copy), the account series (migration 0019), the run ledger over the window,
the fills and the incidents, and returns a frozen `HistoryState`. It is loaded on its own
cadence (when the tab is shown, then every `REFRESH_S`), never by the 1 s poll.

Run slots are judged with the thresholds `ops status` and `ops gaps` use (ops.core.gaps):
a stretch with no completed run longer than `late_after(interval)` is a gap (`ops gaps`
lists exactly these); past `stalled_after(interval, gap bound)` the process would have been
stalled. A column of the strip is

    failed   a run in it ended in error or timeout
    missed   a gap the process would have been stalled in overlaps it (a hole)
    late     a gap overlaps it, but shorter than the stall bound
    ok       runs on schedule (or no run due within the column)
    idle     only runs the market gate or the kill switch held (by design, no work)
    none     before the first run the ledger keeps (never ran, or pruned by retention)

in that order of precedence. Nothing here imports textual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from ops.core.gaps import late_after, stalled_after
from ops.core.models import OptionSymbol
from ops.runtime.errors import underlying
from ops.store import StorageUnavailable, Store
from ops.store.history import AccountPoint, FillRecord, IncidentSpan, RunLedgerWindow
from ops.store.status import start_of_trading_day

SlotState = Literal["none", "ok", "idle", "late", "missed", "failed"]
LaneState = Literal["none", "open", "closed"]

#: The zoom levels of the strips, shortest first (`z` cycles them).
ZOOMS: tuple[timedelta, ...] = (timedelta(hours=1), timedelta(hours=6), timedelta(hours=24))
DEFAULT_ZOOM = timedelta(hours=24)
#: How often the shown History tab reloads, by zoom (the 1 s poll never reads history).
#: A 24 h load reads the whole day's run ledger (~200k rows for the demo: a few hundred
#: ms of Postgres, bench/history.py); its 5-minute columns change no faster than this.
REFRESH_S: dict[timedelta, float] = {ZOOMS[0]: 15.0, ZOOMS[1]: 20.0, ZOOMS[2]: 30.0}
#: Buckets the window is read in; the strips merge them to the columns they have.
FINE_BUCKETS = 288
#: No account summary for this long is a hole in the series (the position manager
#: records one every sync, seconds apart; the series keeps one a minute).
ACCOUNT_HOLE = timedelta(minutes=3)
#: No interval is shorter than 1 s: what `ops gaps` uses for a process without one.
MIN_GAP_S = late_after(1.0)
MAX_INCIDENT_LANES = 8


def zoom_label(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:g}h" if hours >= 1 else f"{span.total_seconds() / 60:g}m"


def next_zoom(span: timedelta, back: bool = False) -> timedelta:
    i = ZOOMS.index(span) if span in ZOOMS else len(ZOOMS) - 1
    return ZOOMS[(i + (-1 if back else 1)) % len(ZOOMS)]


def column_bounds(start: datetime, end: datetime, columns: int) -> list[tuple[datetime, datetime]]:
    """`columns` equal slices of [start, end), the last ending at `end`."""
    step = (end - start) / columns
    return [(start + step * i, start + step * (i + 1)) for i in range(columns)]


# --- run slots --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineTarget:
    """A process the strips should show, with what its gaps are judged against (the
    dashboard's ProcessRow: the interval and gap bound `ops status` uses)."""

    name: str
    account: str | None
    role: str
    interval_s: float | None
    gap_bound_s: float | None = None

    @property
    def late_s(self) -> float:
        return MIN_GAP_S if self.interval_s is None else late_after(self.interval_s)

    @property
    def stall_s(self) -> float:
        if self.interval_s is None:
            return 3.0 * MIN_GAP_S
        return stalled_after(self.interval_s, self.gap_bound_s)


@dataclass(frozen=True, slots=True)
class Gap:
    start: datetime  # the last run before it finished
    end: datetime  # the next run began, or the window's end (ongoing)
    ongoing: bool

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True, slots=True)
class ProcessTimeline:
    target: TimelineTarget
    window_start: datetime
    window_end: datetime
    bucket_s: float
    counts: dict[int, tuple[int, int, int]]  # fine bucket -> (ok, failed, idle)
    gaps: tuple[Gap, ...]  # longer than target.late_s, oldest first
    known_from: datetime | None  # the first run the ledger keeps (None: no run at all)

    @property
    def name(self) -> str:
        return self.target.name

    def slots(self, columns: int, end: datetime | None = None) -> list[SlotState]:
        """The strip at `columns` columns over the window (see the module docstring)."""
        if columns < 1:
            return []
        end = end or self.window_end
        bounds = column_bounds(self.window_start, end, columns)
        per_col: list[list[int]] = [[0, 0, 0] for _ in range(columns)]
        step = (end - self.window_start).total_seconds() / columns
        for i, (ok, failed, idle) in self.counts.items():
            col = int(i * self.bucket_s // step)
            if 0 <= col < columns:
                c = per_col[col]
                c[0] += ok
                c[1] += failed
                c[2] += idle
        out: list[SlotState] = []
        for (c0, c1), (ok, failed, idle) in zip(bounds, per_col, strict=True):
            if self.known_from is None or c1 <= self.known_from:
                out.append("none")
                continue
            worst = max((g.seconds for g in self.gaps if g.start < c1 and g.end > c0),
                        default=0.0)
            if failed:
                out.append("failed")
            elif worst > self.target.stall_s:
                out.append("missed")
            elif worst > self.target.late_s:
                out.append("late")
            elif ok:
                out.append("ok")
            elif idle:
                out.append("idle")
            else:
                out.append("ok")  # no run due within a column narrower than the interval
        return out


def judge_ledger(window: RunLedgerWindow, targets: Sequence[TimelineTarget],
                 ) -> tuple[ProcessTimeline, ...]:
    """One timeline per target, its gaps judged against the target's own bounds."""
    by_name = {t.name: t for t in targets}
    counts: dict[str, dict[int, tuple[int, int, int]]] = {}
    for b in window.buckets:
        counts.setdefault(b.process, {})[b.index] = (b.ok, b.failed, b.idle)
    holes: dict[str, list[Gap]] = {}
    for h in window.holes:
        holes.setdefault(h.process, []).append(Gap(h.after, h.before, False))
    out = []
    for name, target in by_name.items():
        span = window.spans.get(name)
        prior = span.prior if span else None
        first = span.first if span else None
        last = span.last if span else None
        gaps = list(holes.get(name, []))
        if prior is not None:  # the stretch from the last run before the window
            gaps.insert(0, Gap(prior, first or window.end, first is None))
        if last is not None:  # ... and since the last run inside it
            gaps.append(Gap(last, window.end, True))
        out.append(ProcessTimeline(
            target, window.start, window.end, window.bucket_s, counts.get(name, {}),
            tuple(g for g in gaps if g.seconds > target.late_s),
            prior or first))
    return tuple(out)


# --- incidents --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncidentLane:
    """One kind of incident on one subject, and when it was open."""

    label: str
    spans: tuple[IncidentSpan, ...]

    @property
    def is_open(self) -> bool:
        return any(s.closed_at is None for s in self.spans)

    def cells(self, start: datetime, end: datetime, columns: int) -> list[LaneState]:
        out: list[LaneState] = []
        for c0, c1 in column_bounds(start, end, columns):
            hit = [s for s in self.spans if s.opened_at < c1 and (s.closed_at or end) >= c0]
            out.append("none" if not hit else
                       "open" if any(s.closed_at is None for s in hit) else "closed")
        return out


def incident_lanes(spans: Iterable[IncidentSpan]) -> tuple[IncidentLane, ...]:
    lanes: dict[str, list[IncidentSpan]] = {}
    for s in spans:
        lanes.setdefault(f"{s.kind} {s.process or s.account or '-'}", []).append(s)
    return tuple(IncidentLane(k, tuple(v)) for k, v in lanes.items())


# --- realised P&L -----------------------------------------------------------------------------


def multiplier(symbol: str, asset_class: str) -> Decimal:
    option = asset_class == "us_option" or OptionSymbol.parse(symbol) is not None
    return Decimal(100) if option else Decimal(1)


@dataclass(slots=True)
class RealisedBook:
    """Realised P&L from the stored fills, by AVERAGE COST.

    Average cost, not FIFO, because it is what the broker's own figures use: a position's
    `avg_entry_price` stays unchanged when part of it is sold (the bundled simulator does
    the same, ops/sim/ledger.py `apply_fill`), so its `unrealized_pl` is measured from the
    average; realised P&L measured the same way makes realised + unrealised the account's
    whole trading P&L, with no lot the two would count differently.

    A fill that reduces a position realises (price - average) x closed qty x multiplier
    (100 for options), sign-flipped for shorts; a fill that flips a position opens the
    remainder at its price. Fills are applied in execution order; a fill stored late
    (a completeness check) with an older execution time makes the next `add` start over.
    Fills whose order is not stored (side unknown) cannot be signed: counted, skipped.
    Position changes without a fill (splits, expiries: position_activities) are not in
    it; neither are fees.
    """

    last_id: int = 0
    newest_ts: datetime | None = None
    held: dict[tuple[str, str], tuple[Decimal, Decimal]] = field(default_factory=dict)
    realised: list[tuple[str, datetime, Decimal]] = field(default_factory=list)
    unsided: int = 0

    def add(self, fills: Sequence[FillRecord]) -> bool:
        """Apply new fills (storage order); False when one is older than a fill already
        applied, so the caller must start over with every fill."""
        ordered = sorted(fills, key=lambda f: (f.ts, f.id))
        if ordered and self.newest_ts is not None and ordered[0].ts < self.newest_ts:
            return False
        for f in ordered:
            self._apply(f)
        if fills:
            self.last_id = max(self.last_id, max(f.id for f in fills))
        return True

    def _apply(self, f: FillRecord) -> None:
        self.newest_ts = f.ts if self.newest_ts is None else max(self.newest_ts, f.ts)
        if f.side not in ("buy", "sell") or f.qty <= 0:
            self.unsided += 1
            return
        key = (f.account, f.symbol)
        qty, avg = self.held.get(key, (Decimal(0), Decimal(0)))
        signed = f.qty if f.side == "buy" else -f.qty
        if qty == 0 or (qty > 0) == (signed > 0):
            new = qty + signed
            avg = (abs(qty) * avg + f.qty * f.price) / abs(new)
        else:
            closed = min(abs(signed), abs(qty))
            per_unit = (f.price - avg) if qty > 0 else (avg - f.price)
            self.realised.append((f.account, f.ts,
                                  per_unit * closed * multiplier(f.symbol, f.asset_class)))
            new = qty + signed
            if new != 0 and (new > 0) != (qty > 0):
                avg = f.price  # flipped: the remainder opens at this price
        self.held[key] = (new, avg if new != 0 else Decimal(0))

    def total(self, account: str, since: datetime | None = None) -> Decimal:
        return sum((v for a, ts, v in self.realised
                    if a == account and (since is None or ts >= since)), Decimal(0))


def realised_pnl(fills: Sequence[FillRecord]) -> RealisedBook:
    """A book of `fills` from scratch (see RealisedBook)."""
    book = RealisedBook()
    book.add(fills)
    return book


# --- account series ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountHistory:
    name: str
    equity: tuple[float, ...]  # FINE_BUCKETS values over the window, carried forward
    day_pl: tuple[float, ...]  # equity - last_equity, likewise
    points: int  # summaries read in the window
    holes: tuple[Gap, ...]  # stretches without a summary longer than ACCOUNT_HOLE
    last_equity: Decimal | None
    last_day_pl: Decimal | None
    realised_today: Decimal
    realised_total: Decimal


def resample(points: Sequence[AccountPoint], start: datetime, end: datetime, n: int,
             value: Callable[[AccountPoint], Decimal | None]) -> tuple[float, ...]:
    """`n` values over [start, end): each bucket's last value, empty buckets carrying the
    one before (the first value before any). Empty when no point has a value."""
    step = (end - start) / n
    buckets: list[float | None] = [None] * n
    for p in points:
        v = value(p)
        i = min(int((p.as_of - start) / step), n - 1 if p.as_of <= end else n)
        if v is not None and 0 <= i < n:
            buckets[i] = float(v)
    first = next((b for b in buckets if b is not None), None)
    if first is None:
        return ()
    out, prev = [], first
    for b in buckets:
        prev = prev if b is None else b
        out.append(prev)
    return tuple(out)


def account_holes(points: Sequence[AccountPoint], end: datetime) -> tuple[Gap, ...]:
    out = [Gap(a.as_of, b.as_of, False) for a, b in zip(points, points[1:], strict=False)
           if b.as_of - a.as_of > ACCOUNT_HOLE]
    if points and end - points[-1].as_of > ACCOUNT_HOLE:
        out.append(Gap(points[-1].as_of, end, True))
    return tuple(out)


def _day_pl(p: AccountPoint) -> Decimal | None:
    return None if p.equity is None or p.last_equity is None else p.equity - p.last_equity


# --- the state and its loader -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryState:
    loaded_at: datetime
    span: timedelta
    start: datetime
    accounts: tuple[AccountHistory, ...] = ()
    processes: tuple[ProcessTimeline, ...] = ()
    incidents: tuple[IncidentLane, ...] = ()
    unsided_fills: int = 0
    error: str | None = None  # why nothing could be read (Postgres away, ...)

    @property
    def end(self) -> datetime:
        return self.loaded_at


class HistoryData:
    """Reads the history through the Store; keeps the realised-P&L book between loads so
    that only new fills are read."""

    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self.store = store
        self.now = now
        self.book = RealisedBook()

    async def _fills(self) -> RealisedBook:
        new = await self.store.fills_after(self.book.last_id)
        if not self.book.add(new):
            self.book = realised_pnl(await self.store.fills_after(0))
        return self.book

    async def load(self, span: timedelta, targets: Sequence[TimelineTarget],
                   accounts: Sequence[str]) -> HistoryState:
        now = self.now()
        start = now - span
        try:
            points = await self.store.account_history(start - ACCOUNT_HOLE, now)
            ledger = await self.store.run_ledger_window(
                start, now, span.total_seconds() / FINE_BUCKETS, [t.name for t in targets],
                MIN_GAP_S)
            incidents = await self.store.incident_spans(start, now)
            book = await self._fills()
        except StorageUnavailable as exc:
            return HistoryState(now, span, start,
                                error=f"Postgres unreachable ({type(underlying(exc)).__name__}):"
                                      " the history is read from Postgres only")
        by_account: dict[str, list[AccountPoint]] = {a: [] for a in accounts}
        for p in points:
            by_account.setdefault(p.account, []).append(p)
        today = start_of_trading_day(now)
        hist = tuple(
            AccountHistory(
                name=name,
                equity=resample(pts, start, now, FINE_BUCKETS, lambda p: p.equity),
                day_pl=resample(pts, start, now, FINE_BUCKETS, _day_pl),
                points=sum(1 for p in pts if p.as_of >= start),
                holes=account_holes(pts, now),
                last_equity=pts[-1].equity if pts else None,
                last_day_pl=_day_pl(pts[-1]) if pts else None,
                realised_today=book.total(name, today),
                realised_total=book.total(name),
            ) for name, pts in sorted(by_account.items()))
        lanes = sorted(incident_lanes(incidents), key=lambda lane: (
            not lane.is_open, -max(s.opened_at.timestamp() for s in lane.spans)))
        return HistoryState(now, span, start, hist, judge_ledger(ledger, targets),
                            tuple(lanes), book.unsided)
