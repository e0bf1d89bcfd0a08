"""ops.core.activities: non-trade activities planned exactly once, and splits that re-base.

Properties: any sequence of activities applied twice (again, or repeated inside one batch)
equals it applied once; an exercise/assignment and its OPTRD give the same ownership
whether they arrive together or apart; a position and its exit state re-based by r then
1/r are unchanged; a split alone never changes what the exit rules decide; a closing
activity takes external lots first and never more than was managed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.activities import (
    Book,
    closed_managed,
    looks_like_split,
    plan,
    qty_delta,
    rebase_state,
    scale,
    split_ratio,
)
from ops.core.exits import ExitRules, PositionState, evaluate_exits
from ops.core.models import NonTradeActivity, Position

T = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
DAY = date(2026, 3, 2)
CALL = "AAPL260619C00190000"  # strike 190
PUT = "MSFT260619P00400000"  # strike 400
SYMBOLS = ("AAPL", "MSFT", CALL, PUT)
TYPES = ("OPEXP", "OPEXC", "OPASN", "OPTRD", "SPLIT", "SSP", "SPIN", "SC", "NC", "REO",
         "DIV", "SOMETHING_NEW", "")
#: Ratios whose terms have only the factors 2 and 5: Decimal arithmetic is exact for them.
EXACT = (Fraction(2), Fraction(1, 2), Fraction(4), Fraction(1, 4), Fraction(5),
         Fraction(1, 5), Fraction(10), Fraction(1, 10), Fraction(5, 2), Fraction(2, 5))


def nta(i: int, kind: str, symbol: str | None, qty: Decimal | None,
        price: Decimal | None = None, day: date = DAY) -> NonTradeActivity:
    raw = {"id": f"{i:04d}::x", "activity_type": kind, "symbol": symbol,
           "qty": None if qty is None else str(qty)}
    return NonTradeActivity(f"{i:04d}::x", kind, symbol, qty, price, day, raw=raw)


@st.composite
def activities(draw: st.DrawFn) -> list[NonTradeActivity]:
    """A pool of distinct activities (ids unique), then a sequence drawn from it with
    repeats, as a broker's pages overlapping between reads would give."""
    pool = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(TYPES))
        symbol = draw(st.one_of(st.none(), st.sampled_from(SYMBOLS)))
        qty = draw(st.one_of(st.none(), st.integers(-300, 300).map(Decimal)))
        price = draw(st.sampled_from((None, Decimal(190), Decimal(400), Decimal(7))))
        day = draw(st.sampled_from((DAY, DAY + timedelta(days=1))))
        pool.append(nta(i, kind, symbol, qty, price, day))
    return draw(st.lists(st.sampled_from(pool), min_size=1, max_size=14))


positions = st.dictionaries(st.sampled_from(SYMBOLS), st.integers(-500, 500).map(Decimal))
states = st.builds(
    lambda opened_s, hw, lw: PositionState(T + timedelta(seconds=opened_s),
                                           Decimal(max(hw, lw)), Decimal(min(hw, lw))),
    st.integers(-3600, 3600), st.integers(1, 10_000), st.integers(1, 10_000))
books = st.builds(lambda h, m, e: Book(held=h, managed=m, exits=e), positions, positions,
                  st.dictionaries(st.sampled_from(SYMBOLS), states))


@settings(max_examples=600, deadline=None)
@given(books, activities(), positions)
def test_any_sequence_applied_twice_equals_applied_once(
        book: Book, xs: list[NonTradeActivity], now: dict[str, Decimal]) -> None:
    once = plan(book, xs, at=T, held_now=now)
    again = plan(once.book, xs, at=T, held_now=now)
    assert again.applied == () and again.book == once.book
    doubled = plan(book, xs + list(reversed(xs)), at=T, held_now=now)
    assert doubled.book == once.book and doubled.applied == once.applied
    assert len({a.activity.id for a in once.applied}) == len(once.applied)
    assert {a.activity.id for a in once.applied} == {x.id for x in xs}


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.integers(0, 5), st.integers(0, 5), st.booleans(),
       st.integers(0, 2))
def test_an_exercise_and_its_trade_own_the_same_together_or_apart(
        k: int, managed: int, external: int, short: bool, cut: int) -> None:
    """OPEXC/OPASN then OPTRD, in one batch, in two, or the trade first: the same
    managed shares (external lots go first)."""
    if managed + external < k:
        external = k - managed
    sign = -1 if short else 1
    held = {CALL: Decimal(sign * (managed + external))}
    book = Book(held=held, managed={CALL: Decimal(sign * managed)})
    kind = "OPASN" if short else "OPEXC"
    option = nta(1, kind, CALL, Decimal(-sign * k))
    # A call's holder buys the shares; its assigned writer delivers them.
    shares = nta(2, "OPTRD", "AAPL", Decimal(-100 * k if short else 100 * k), Decimal(190))
    orders = [[[option, shares]], [[option], [shares]], [[shares], [option]]][cut]
    b = book
    for batch in orders:
        b = plan(b, batch, at=T).book
    together = plan(book, [shares, option], at=T).book
    def nonzero(d: Mapping[str, Decimal]) -> dict[str, Decimal]:
        return {s: q for s, q in d.items() if q}

    assert nonzero(b.managed) == nonzero(together.managed)
    assert nonzero(b.held) == nonzero(together.held)
    closed = min(managed, max(0, k - external))
    shares_sign = -1 if short else 1  # a short call's writer delivers shares
    assert b.managed.get("AAPL", Decimal(0)) == shares_sign * 100 * closed
    assert b.managed[CALL] == sign * (managed - closed)


@settings(max_examples=500, deadline=None)
@given(states, st.sampled_from(EXACT))
def test_an_exit_state_rebased_by_r_then_1_over_r_is_unchanged(
        s: PositionState, r: Fraction) -> None:
    assert rebase_state(rebase_state(s, r), 1 / r) == s


@settings(max_examples=300, deadline=None)
@given(states, st.integers(1, 97), st.integers(1, 97))
def test_any_ratio_round_trips_to_twenty_digits(s: PositionState, n: int, d: int) -> None:
    r = Fraction(n, d)
    if r == 1:
        return
    back = rebase_state(rebase_state(s, r), 1 / r)
    assert back.opened_at == s.opened_at
    for x, y in ((back.high_water, s.high_water), (back.low_water, s.low_water)):
        assert abs(x - y) <= y * Decimal("1e-20")


@settings(max_examples=500, deadline=None)
@given(st.integers(-1000, 1000).filter(bool), st.integers(-1000, 1000), states,
       st.sampled_from(EXACT))
def test_a_split_then_its_reverse_leaves_the_book_unchanged(
        q: int, m: int, s: PositionState, r: Fraction) -> None:
    held, managed = Decimal(q), Decimal(m)
    book = Book(held={"AAPL": held}, managed={"AAPL": managed}, exits={"AAPL": s})
    at = s.opened_at + timedelta(seconds=1)
    split_qty = scale(held, r)
    first = plan(book, [nta(1, "SPLIT", "AAPL", split_qty - held)], at=at,
                 held_now={"AAPL": split_qty})
    (a,) = first.applied
    assert a.ratio == r and a.exit_state == rebase_state(s, r)
    assert first.book.held["AAPL"] == split_qty
    assert first.book.managed.get("AAPL", Decimal(0)) == scale(managed, r)
    back = plan(first.book, [nta(2, "SPLIT", "AAPL", held - split_qty)], at=at,
                held_now={"AAPL": held})
    assert back.book.held["AAPL"] == held
    assert back.book.managed.get("AAPL", Decimal(0)) == managed
    assert back.book.exits["AAPL"] == s


def test_a_split_seen_before_a_state_opened_does_not_rebase_it() -> None:
    s = PositionState(T, Decimal(50), Decimal(40))
    p = plan(Book(held={"AAPL": Decimal(10)}, exits={"AAPL": s}),
             [nta(1, "SPLIT", "AAPL", Decimal(10))], at=T - timedelta(seconds=1),
             held_now={"AAPL": Decimal(20)})
    assert p.applied[0].exit_state is None and p.book.exits["AAPL"] == s


def test_an_underivable_ratio_resets_the_exit_state() -> None:
    s = PositionState(T, Decimal(50), Decimal(40))
    p = plan(Book(held={"AAPL": Decimal(10)}, managed={"AAPL": Decimal(10)},
                  exits={"AAPL": s}),
             [nta(1, "SPLIT", "AAPL", Decimal(10))], at=T + timedelta(seconds=1),
             held_now={"AAPL": Decimal(30)})  # 2:1 from before, 3:2 from now: which?
    (a,) = p.applied
    assert a.ratio is None and a.exit_reset and a.exit_before == s
    assert "AAPL" not in p.book.exits and p.book.managed["AAPL"] == 10
    assert split_ratio(Decimal(3), Decimal(997), Decimal(1000)) is None  # 1000:997
    assert split_ratio(Decimal(11), Decimal(10), Decimal(23)) is None  # 21:10, 23:12
    assert split_ratio(Decimal(5), Decimal(20), Decimal(25)) == Fraction(5, 4)
    # One reading spoiled (a fill between): the other decides.
    assert split_ratio(Decimal(10), Decimal(10), Decimal(23)) == Fraction(2)
    assert split_ratio(Decimal(10), Decimal(0), Decimal(20)) == Fraction(2)


def _position(qty: Decimal, entry: Decimal) -> Position:
    return Position("AAPL", qty, entry, qty * entry)


rules = st.builds(
    ExitRules,
    stop_loss_pct=st.one_of(st.none(), st.integers(1, 50).map(Decimal)),
    take_profit_pct=st.one_of(st.none(), st.integers(1, 80).map(Decimal)),
    trailing_stop_pct=st.one_of(st.none(), st.integers(1, 50).map(Decimal)),
)


@settings(max_examples=1000, deadline=None)
@given(st.integers(-500, 500).filter(bool), st.integers(100, 100_000), st.integers(100, 100_000),
       states, rules, st.sampled_from(EXACT))
def test_a_split_alone_never_changes_what_the_exit_rules_decide(
        q: int, entry_c: int, price_c: int, s: PositionState, rules: ExitRules,
        r: Fraction) -> None:
    """A position, its exit state and the price all re-based by one split: the same
    decision (no exit fires from a split alone; one that was due stays due)."""
    entry, price = Decimal(entry_c) / 100, Decimal(price_c) / 100
    pos = _position(Decimal(q), entry)
    now = s.opened_at + timedelta(minutes=5)
    before = evaluate_exits(pos, s, price, rules, now)
    after = evaluate_exits(_position(scale(Decimal(q), r), scale(entry, 1 / r)),
                           rebase_state(s, r), scale(price, 1 / r), rules, now)
    assert (before is None) == (after is None)
    if before is not None and after is not None:
        assert before.rule == after.rule


@settings(max_examples=500, deadline=None)
@given(st.integers(-300, 300), st.integers(-300, 300), st.integers(-300, 300))
def test_closing_takes_external_lots_first_and_never_more_than_managed(
        d: int, held: int, managed: int) -> None:
    closed = closed_managed(Decimal(d), Decimal(held), Decimal(managed))
    assert 0 <= closed <= abs(d)
    if held and (held > 0) == (d < 0):
        bounded = min(abs(managed), abs(held)) if managed and (managed > 0) == (held > 0) else 0
        external = abs(held) - bounded
        assert closed == min(bounded, max(0, abs(d) - external))


@pytest.mark.parametrize(("kind", "qty", "held", "want"), [
    ("OPEXC", "2", "2", "-2"), ("OPEXC", "-2", "2", "-2"),  # exercise reduces a long
    ("OPASN", "-1", "-1", "1"), ("OPASN", "1", "-1", "1"),  # assignment reduces a short
    ("OPEXP", "2", "2", "-2"), ("OPEXP", "-2", "2", "-2"),  # expiry: toward zero
    ("OPEXP", "3", "-3", "3"), ("OPEXP", "-3", "0", "-3"),  # unknown holding: as sent
    ("OPTRD", "-100", "0", "-100"), ("SPLIT", "-5", "10", "-5"),
    ("DIV", "2", "10", "0"), ("BRAND_NEW", "7", "0", "0"),  # not a position change here
])
def test_qty_delta_signs(kind: str, qty: str, held: str, want: str) -> None:
    assert qty_delta(kind, Decimal(qty), Decimal(held)) == Decimal(want)
    assert qty_delta(kind, None, Decimal(held)) in (None, Decimal(0))


# --- a split seen before its activity (ops.core.activities.looks_like_split) ---------------------

_RATIOS = [Fraction(2), Fraction(3), Fraction(3, 2), Fraction(1, 2), Fraction(1, 10),
           Fraction(5, 4), Fraction(10)]


@given(qty=st.integers(1, 100_000), cents=st.integers(100, 500_000),
       ratio=st.sampled_from(_RATIOS), short=st.booleans(),
       drift=st.integers(-5, 5), priced=st.booleans())
def test_a_split_keeps_the_basis_and_looks_like_one(qty: int, cents: int, ratio: Fraction,
                                                    short: bool, drift: int,
                                                    priced: bool) -> None:
    """Whatever the market did besides (up to 5 % between two reads), or without prices."""
    q = Decimal(-qty if short else qty)
    avg = Decimal(cents) / 100
    after_q = q * ratio.numerator / ratio.denominator
    after_avg = (avg * ratio.denominator / ratio.numerator).quantize(Decimal("0.0001"))
    price = avg if priced else None
    after_price = (avg * ratio.denominator / ratio.numerator * (100 + drift) / 100
                   if priced else None)
    assert looks_like_split((q, avg, price), (after_q, after_avg, after_price))


@given(qty=st.integers(1, 100_000), cents=st.integers(100, 500_000),
       traded=st.integers(1, 200_000), price_cents=st.integers(1, 500_000),
       drift=st.integers(-5, 5))
def test_a_fill_never_looks_like_a_split(qty: int, cents: int, traded: int,
                                         price_cents: int, drift: int) -> None:
    """A buy adds its cost to the basis, a sell takes its shares out at the average; a
    fill is at the market price, which moved at most 5 % since the previous read (a buy
    at a tiny price may keep the basis: qty 1 @ 2 + 1 @ 0.01; the price says no split)."""
    q, avg, price = Decimal(qty), Decimal(cents) / 100, Decimal(price_cents) / 100
    before_price = price * 100 / (100 + drift)
    bought_avg = (q * avg + traded * price) / (q + traded)
    assert not looks_like_split((q, avg, before_price), (q + traded, bought_avg, price))
    if traded < qty:
        assert not looks_like_split((q, avg, before_price), (q - traded, avg, price))
