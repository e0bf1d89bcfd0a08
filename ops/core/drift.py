"""Position drift: do the broker's positions equal what the stored fills say? Pure, no I/O.

A baseline is the broker's positions at an earlier sync that agreed (or that was adopted
or accepted), with the *cut* of that snapshot: the broker's positions include every fill
executed before the cut and none after it. Expected now = baseline + the fills executed
between the baseline's cut and this snapshot's cut. Fills are placed by their execution
time (broker time), never by when they were stored: a fill the stream missed and the
completeness check stored an hour later is counted where it belongs, so a late fill is
neither counted twice (it happened before the baseline, which already holds it) nor lost.

Neither cut is known exactly: the local and broker clocks differ a little and a snapshot
takes a request's time. So a cut is an interval: a snapshot taken between t0 and t1 has
its cut in [t0 - skew, t1 + skew], and a baseline keeps the interval of cuts that agreed.
The comparison agrees when *some* pair of cuts (the baseline's, this snapshot's) makes the
expected positions equal the broker's: only fills executed within a few seconds of a
snapshot are ambiguous, and only those are tried both ways (in time order: a snapshot
holds a prefix of the executions). The quantity of each fill is its order's cumulative
quantity minus the previous stored one (`FillDelta`), so a stream event that did not carry
`qty` still counts, and an execution stored late corrects its successor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

_ZERO = Decimal(0)
_TICK = timedelta(microseconds=1)
#: Local clock vs the broker's, plus slack, on either side of a snapshot's request.
SKEW = timedelta(seconds=2)
MAX_CUTS = 64  # candidate cuts per interval (a burst inside one is thinned to this many)


@dataclass(frozen=True, slots=True)
class Cut:
    """The interval the snapshot's cut lies in: fills before `lo` are in the snapshot,
    fills at or after `hi` are not, those in between may be either."""

    lo: datetime
    hi: datetime

    @classmethod
    def around(cls, started: datetime, finished: datetime, skew: timedelta = SKEW) -> Cut:
        """The cut of a snapshot requested at `started` and answered at `finished`."""
        return cls(started - skew, finished + skew)


@dataclass(frozen=True, slots=True)
class FillDelta:
    """One stored fill's effect on its symbol: signed quantity (None: unreadable side)."""

    symbol: str
    ts: datetime  # execution time (broker)
    qty: Decimal | None


@dataclass(frozen=True, slots=True)
class Mismatch:
    symbol: str
    expected: Decimal
    actual: Decimal

    def describe(self) -> str:
        return f"{self.symbol} expected {_q(self.expected)} actual {_q(self.actual)}"


@dataclass(frozen=True, slots=True)
class Comparison:
    agree: bool
    cut: Cut | None  # when agreeing: the cuts of this snapshot that agree (the new baseline's)
    mismatches: tuple[Mismatch, ...]  # when not: those of the closest interpretation
    expected: dict[str, Decimal]  # that interpretation's expected positions
    unverifiable: frozenset[str]  # symbols with an unreadable fill: not compared
    fills: int  # fills between the two cuts (the closest interpretation)


def _q(x: Decimal) -> str:
    return format(x.normalize(), "f") if x else "0"


def nonzero(items: Iterable[tuple[str, Decimal]]) -> dict[str, Decimal]:
    return {s: q for s, q in items if q != 0}


def _cuts(cut: Cut, times: Sequence[datetime]) -> list[datetime]:
    """Candidate cut instants in `cut` (a fill is in the snapshot iff its ts < the cut)."""
    inside = sorted({t for t in times if cut.lo < t <= cut.hi})
    if len(inside) > MAX_CUTS - 2:
        step = len(inside) / (MAX_CUTS - 2)
        inside = [inside[int(i * step)] for i in range(MAX_CUTS - 2)]
    return [cut.lo, *inside, cut.hi + _TICK]


def compare(base: Mapping[str, Decimal], base_cut: Cut, snapshot_cut: Cut,
            fills: Sequence[FillDelta], actual: Mapping[str, Decimal]) -> Comparison:
    """Compare `actual` (the broker's positions, non-zero) with `base` + the fills between
    the two cuts, trying every candidate pair of cuts (`fills`: at least those executed
    from `base_cut.lo` to `snapshot_cut.hi`)."""
    unverifiable = frozenset(f.symbol for f in fills if f.qty is None)
    known = sorted((f for f in fills if f.qty is not None), key=lambda f: f.ts)
    times = [f.ts for f in known]
    c1s, c2s = _cuts(base_cut, times), _cuts(snapshot_cut, times)

    def prefixes(cuts: list[datetime]) -> list[dict[str, Decimal]]:
        out, run, i = [], dict[str, Decimal](), 0
        for c in cuts:  # ascending
            while i < len(known) and known[i].ts < c:
                f = known[i]
                run[f.symbol] = run.get(f.symbol, _ZERO) + (f.qty or _ZERO)
                i += 1
            out.append(dict(run))
        return out

    p1, p2 = prefixes(c1s), prefixes(c2s)
    # A snapshot holds a prefix of the executions (time order), and the later snapshot
    # holds at least what the earlier one did: pairs are compared by how many fills their
    # cuts include, not by the instants (intervals of two snapshots may overlap).
    n1 = [sum(1 for t in times if t < c) for c in c1s]
    n2 = [sum(1 for t in times if t < c) for c in c2s]

    def key(d: Mapping[str, Decimal]) -> frozenset[tuple[str, Decimal]]:
        return frozenset((s, q) for s, q in d.items() if q != 0 and s not in unverifiable)

    target = {s: actual.get(s, _ZERO) - base.get(s, _ZERO) for s in set(actual) | set(base)}
    by_key: dict[frozenset[tuple[str, Decimal]], list[int]] = {}
    for j, p in enumerate(p2):
        by_key.setdefault(key(p), []).append(j)
    agreeing: list[tuple[int, int]] = []
    for i, p in enumerate(p1):
        want = dict(p)
        for s, q in target.items():
            want[s] = want.get(s, _ZERO) + q
        agreeing += [(i, j) for j in by_key.get(key(want), []) if n2[j] >= n1[i]]
    if agreeing:
        js = [j for _, j in agreeing]
        i, j = agreeing[0]
        # Candidate j stands for every instant with its prefix: (c2s[j-1], c2s[j]]. The
        # new baseline's cut spans all of them, so a fill stored later inside that span
        # (it was not known now) is tried both ways next time, never assumed.
        lo = c2s[0] if min(js) == 0 else c2s[min(js) - 1] + _TICK
        return Comparison(True, Cut(lo, c2s[max(js)]), (),
                          _expected(base, p1[i], p2[j]), unverifiable, n2[j] - n1[i])
    # Not agreeing: report the reading with the fewest mismatches; among equals, the one
    # whose snapshots hold the most fills (an ambiguous fill executed just before a
    # snapshot is most likely in it).
    best: tuple[int, int, int, int, int] | None = None
    for i in range(len(c1s)):
        for j in range(len(c2s)):
            if n2[j] < n1[i]:
                continue
            n = len(_mismatches(_expected(base, p1[i], p2[j]), actual, unverifiable))
            cand = (n, -n1[i], -n2[j], i, j)
            if best is None or cand < best:
                best = cand
    if best is None:  # only when the baseline's cut lies after this snapshot's
        best = (0, 0, 0, 0, len(c2s) - 1)
    *_, i, j = best
    expected = _expected(base, p1[i], p2[j])
    return Comparison(False, None, tuple(_mismatches(expected, actual, unverifiable)),
                      expected, unverifiable, n2[j] - n1[i])


def _expected(base: Mapping[str, Decimal], p1: Mapping[str, Decimal],
              p2: Mapping[str, Decimal]) -> dict[str, Decimal]:
    out = dict(base)
    for s in set(p1) | set(p2):
        out[s] = out.get(s, _ZERO) + p2.get(s, _ZERO) - p1.get(s, _ZERO)
    return nonzero(out.items())


def _mismatches(expected: Mapping[str, Decimal], actual: Mapping[str, Decimal],
                ignore: Iterable[str] = ()) -> list[Mismatch]:
    skip = set(ignore)
    out = []
    for s in sorted(set(expected) | set(actual)):
        e, a = expected.get(s, _ZERO), actual.get(s, _ZERO)
        if e != a and s not in skip:
            out.append(Mismatch(s, e, a))
    return out


position_mismatches = _mismatches

__all__ = ["SKEW", "Comparison", "Cut", "FillDelta", "Mismatch", "compare", "nonzero",
           "position_mismatches"]
