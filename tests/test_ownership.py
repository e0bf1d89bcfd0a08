"""ops.core.ownership.split: the managed part of a position, bounded by what is held."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from ops.core.ownership import split


def test_examples() -> None:
    assert split("A", D(10), D(4)).managed == D(4) and split("A", D(10), D(4)).external == D(6)
    assert split("A", D(10), D(15)).managed == D(10)  # sold by hand: bounded by the position
    assert split("A", D(-5), D(-2)).managed == D(-2)  # short
    assert split("A", D(10), D(-3)).managed == 0  # opposite: manages nothing
    assert split("A", D(0), D(3)).managed == 0
    assert split("A", D(7), D(0)).owner == "external"
    assert split("A", D(7), D(3)).owner == "mixed"
    assert split("A", D(7), D(0), manage_external=True).managed == D(7)


ints = st.integers(-1000, 1000).map(D)


@given(ints, ints)
def test_the_parts_add_up_and_never_exceed_the_position(broker: D, managed: D) -> None:
    h = split("X", broker, managed)
    assert h.managed + h.external == broker
    assert abs(h.managed) <= abs(broker) and abs(h.external) <= abs(broker)
    assert h.managed == 0 or (h.managed > 0) == (broker > 0)
