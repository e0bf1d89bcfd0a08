"""ops.core.drift.compare: the broker's positions against baseline + fills between two cuts.

Properties: whatever the fills and wherever the true cuts lie inside their intervals, a
broker whose positions are exactly baseline + the fills between the true cuts is never
called drifted (no false alarm, however late the fills were stored: placement is by
execution time); a change no stored fill explains always is; and the new baseline's cut
interval keeps an interpretation equivalent to the true cut.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.drift import Cut, FillDelta, compare

T = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
SYMBOLS = ("AAPL", "MSFT", "SPY")

fill_lists = st.lists(st.tuples(st.sampled_from(SYMBOLS), st.integers(-50, 50).filter(bool),
                                st.integers(0, 20_000)), max_size=25)
bases = st.dictionaries(st.sampled_from(SYMBOLS), st.integers(-100, 100).filter(bool))


def _fills(raw: list[tuple[str, int, int]]) -> list[FillDelta]:
    return [FillDelta(s, T + timedelta(milliseconds=ms), Decimal(q)) for s, q, ms in raw]


def _sum(base: dict[str, int], fills: list[FillDelta], a: datetime, b: datetime
         ) -> dict[str, Decimal]:
    out = {s: Decimal(q) for s, q in base.items()}
    for f in fills:
        if a <= f.ts < b and f.qty is not None:
            out[f.symbol] = out.get(f.symbol, Decimal(0)) + f.qty
    return {s: q for s, q in out.items() if q}


@st.composite
def cuts(draw: st.DrawFn) -> tuple[datetime, datetime, Cut, Cut]:
    t0 = draw(st.integers(0, 20_000))
    t1 = draw(st.integers(t0, 20_000))
    true0, true1 = (T + timedelta(milliseconds=t0), T + timedelta(milliseconds=t1))
    def around(t: datetime) -> Cut:
        lo = t - timedelta(milliseconds=draw(st.integers(0, 3000)))
        hi = t + timedelta(milliseconds=draw(st.integers(0, 3000)))
        return Cut(lo, hi)
    return true0, true1, around(true0), around(true1)


@settings(max_examples=1000, deadline=None)
@given(bases, fill_lists, cuts(), st.integers(0, 20_000), st.sets(st.integers(0, 24)))
def test_a_broker_that_matches_the_fills_is_never_called_drifted(
    base: dict[str, int], raw: list[tuple[str, int, int]],
    c: tuple[datetime, datetime, Cut, Cut], later_ms: int, late: set[int],
) -> None:
    true0, true1, base_cut, snap_cut = c
    fills = _fills(raw)
    actual = _sum(base, fills, true0, true1)
    # What the database reads: fills executed from the baseline's cut to this snapshot's,
    # less some executed after the snapshot that are not stored yet (stored later).
    missing = {k for k in late if k < len(fills) and fills[k].ts >= true1}
    seen = [f for k, f in enumerate(fills)
            if base_cut.lo <= f.ts <= snap_cut.hi and k not in missing]
    res = compare({s: Decimal(q) for s, q in base.items()}, base_cut, snap_cut, seen, actual)
    assert res.agree and res.mismatches == ()
    assert res.cut is not None
    assert snap_cut.lo <= res.cut.lo <= res.cut.hi <= snap_cut.hi + timedelta(microseconds=1)
    # A later snapshot from the new baseline, with every fill stored by then (the late
    # ones too): agrees as well. This is where a baseline that assumed a late fill was in
    # it would count it twice, or never.
    true2 = max(true1, T + timedelta(milliseconds=later_ms))
    actual2 = _sum({s: int(q) for s, q in actual.items()}, fills, true1, true2)
    again = compare(actual, res.cut, Cut(true2, true2),
                    [f for f in fills if res.cut.lo <= f.ts <= true2], actual2)
    assert again.agree, (again.mismatches, res.cut)


@settings(max_examples=300, deadline=None)
@given(bases, fill_lists, cuts(), st.integers(1, 10))
def test_a_change_no_fill_explains_is_always_drift(
    base: dict[str, int], raw: list[tuple[str, int, int]],
    c: tuple[datetime, datetime, Cut, Cut], extra: int,
) -> None:
    true0, true1, base_cut, snap_cut = c
    fills = _fills(raw)
    actual = _sum(base, fills, true0, true1)
    actual["QQQ"] = actual.get("QQQ", Decimal(0)) + extra  # bought outside the pipeline
    seen = [f for f in fills if base_cut.lo <= f.ts <= snap_cut.hi]
    res = compare({s: Decimal(q) for s, q in base.items()}, base_cut, snap_cut, seen, actual)
    assert not res.agree
    assert [m.describe() for m in res.mismatches if m.symbol == "QQQ"] == [
        f"QQQ expected 0 actual {extra}"]


def test_a_fill_stored_late_is_counted_once_where_it_happened() -> None:
    """Baseline taken while a fill was missing from the database (the broker already
    held it); the fill is stored later: it is part of the baseline, not counted again."""
    late = FillDelta("AAPL", T - timedelta(minutes=10), Decimal(3))  # before the baseline
    after = FillDelta("AAPL", T + timedelta(seconds=30), Decimal(2))
    base_cut = Cut(T - timedelta(seconds=2), T + timedelta(seconds=2))
    snap = Cut(T + timedelta(seconds=58), T + timedelta(seconds=62))
    # The query reads from base_cut.lo on, so `late` is not even read; were it passed,
    # it lies before every candidate cut and is still not counted.
    for fills in ([after], [late, after]):
        res = compare({"AAPL": Decimal(8)}, base_cut, snap, fills, {"AAPL": Decimal(10)})
        assert res.agree


def test_an_unreadable_fill_leaves_its_symbol_uncompared() -> None:
    cut = Cut(T, T)
    res = compare({}, cut, Cut(T + timedelta(seconds=10), T + timedelta(seconds=10)),
                  [FillDelta("AAPL", T + timedelta(seconds=5), None)], {"AAPL": Decimal(1)})
    assert res.agree and res.unverifiable == frozenset({"AAPL"})
