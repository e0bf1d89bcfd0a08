"""ops.core.refusals: broker refusals in words an operator acts on (pure; examples and
properties)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.core import refusals
from ops.core.refusals import Cause, Refusal, classify, describe, explain

PDT = Refusal(403, 40310100, "trade denied due to pattern day trading protection")
KEY = Refusal(401, 40110000, "request is not authorized")
HELD = Refusal(403, 40310000, "insufficient qty available for order (requested: 10, "
                              "available: 4)")


def test_pdt_sentence_names_everything_an_operator_needs() -> None:
    text = describe(PDT, what="the flatten close", account="tiny", symbol="SPY",
                    qty=Decimal(10), side="sell", order="close-position request")
    assert text == (
        "the broker refused the flatten close of 10 SPY (sell) on tiny "
        "(order close-position request): pattern-day-trading protection (403 40310100): "
        "the account is under $25k and this would be a 4th day trade in 5 days; close it "
        "by hand or wait")


def test_pdt_is_recognised_by_its_message_too() -> None:
    assert classify(Refusal(403, 40310000, "Trade denied due to Pattern Day Trading "
                                           "protection")) is Cause.PDT


def test_a_rejected_key_names_the_secret_id_never_a_key() -> None:
    text = explain(KEY, secret_id="ops-pipeline/alpaca/tiny")
    assert "rotate secret ops-pipeline/alpaca/tiny" in text
    assert "401 40110000" in text and "API key" in text
    assert "reachable" not in text
    assert "rotate the account's secret" in explain(KEY)


def test_qty_held_by_open_orders_gives_the_numbers() -> None:
    text = explain(HELD, symbol="AAPL")
    assert classify(HELD) is Cause.QTY_HELD
    assert "held by open orders (10 requested, 4 available)" in text
    assert "cancel the working orders in AAPL" in text


@pytest.mark.parametrize(("refusal", "cause", "needle"), [
    (Refusal(403, 40310000, "insufficient buying power"), Cause.BUYING_POWER, "buying power"),
    (Refusal(403, 40310000, "account is not allowed to short"), Cause.NO_SHORTING, "short"),
    (Refusal(403, 40310000, "insufficient underlying qty available for covered call "
                            "(requested: 1, available: 0)"), Cause.OPTIONS_LEVEL,
     "options trading level"),
    (Refusal(403, 40310000, "account not eligible to trade uncovered option contracts"),
     Cause.OPTIONS_LEVEL, "options level"),
    (Refusal(422, 42210000, "asset AAPL is not active"), Cause.NOT_TRADABLE, "not tradable"),
    (Refusal(403, 40310000, "trading is blocked on this account"), Cause.ACCOUNT_BLOCKED,
     "blocked"),
    (Refusal(404, 40410000, "position does not exist"), Cause.NO_POSITION, "closed already"),
    (Refusal(None, None, "invalid order request: qty must be > 0"), Cause.INVALID,
     "not sent"),
    (Refusal(422, 40010001, "qty or notional is required"), Cause.INVALID, "invalid"),
    (Refusal(418, None, "I'm a teapot"), Cause.OTHER, "the broker said (418): I'm a teapot"),
])
def test_known_causes(refusal: Refusal, cause: Cause, needle: str) -> None:
    assert classify(refusal) is cause
    assert needle in explain(refusal, symbol="AAPL")


def test_unknown_messages_are_quoted_on_one_line_and_truncated() -> None:
    long = "weird\nbroker\x00 answer " + "x" * 1000
    text = explain(Refusal(403, 40399999, long))
    assert "weird broker answer" in text and "\n" not in text and "\x00" not in text
    assert len(text) < refusals.MESSAGE_MAX + 60 and text.endswith("…")


def test_dedupe_keys_round_trip() -> None:
    key = refusals.dedupe_key(refusals.EXIT_REFUSED, "tiny", "BRK.B")
    assert key == "exit-refused:tiny:BRK.B"
    assert refusals.symbol_of_key(refusals.EXIT_REFUSED, "tiny", key) == "BRK.B"
    assert refusals.symbol_of_key(refusals.EXIT_REFUSED, "large", key) is None
    assert refusals.symbol_of_key(refusals.FLATTEN_REFUSED, "tiny", key) is None
    assert refusals.symbol_of_key(refusals.EXIT_REFUSED, "tiny", None) is None


@given(status=st.one_of(st.none(), st.integers(100, 599)),
       code=st.one_of(st.none(), st.integers(0, 99_999_999)),
       message=st.text(max_size=2000),
       qty=st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False,
                                            places=4, min_value=-10**6, max_value=10**6)))
def test_any_refusal_gives_one_bounded_line(status: int | None, code: int | None,
                                            message: str, qty: Decimal | None) -> None:
    r = Refusal(status, code, message)
    text = describe(r, what="the exit", account="tiny", symbol="SPY", qty=qty,
                    secret_id="ops-pipeline/alpaca/tiny")
    assert text.startswith("the broker refused the exit of ")
    assert "\n" not in text and "\r" not in text
    assert len(text) < 1000
    assert classify(r) in set(Cause)


# --- retry_after (issue 14.4) ------------------------------------------------------------------


def test_a_pdt_refusal_is_retried_at_the_next_session_open() -> None:
    from datetime import UTC, datetime

    from ops.core.models import Clock

    clock = Clock(timestamp=datetime(2026, 3, 2, 15, 0, tzinfo=UTC), is_open=True,
                  next_open=datetime(2026, 3, 3, 14, 30, tzinfo=UTC),
                  next_close=datetime(2026, 3, 2, 21, 0, tzinfo=UTC))
    assert refusals.retry_after(PDT, clock) == clock.next_open
    # Recognised by its message as well as by its code.
    by_text = Refusal(403, None, "Trade denied due to Pattern Day Trading protection")
    assert refusals.retry_after(by_text, clock) == clock.next_open
    for other in (KEY, HELD, Refusal(403, 40310000, "insufficient buying power"),
                  Refusal(None, None, "invalid order request")):
        assert refusals.retry_after(other, clock) is None
