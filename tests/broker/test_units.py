"""Pure parts of the adapter: endpoints, the rate budget, error translation, order
request bodies."""

from __future__ import annotations

import socket
from decimal import Decimal

import pytest
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    DecodeError,
    LocationParseError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    ResponseError,
    SSLError,
)

from ops.broker import BrokerEndpoints, BrokerSettings
from ops.broker.errors import (
    AccountMismatchError,
    BrokerApiError,
    BrokerDataError,
    BrokerUnavailable,
)
from ops.broker.marketdata import parse_timeframe
from ops.broker.orders import build_order_request, build_replace_request
from ops.broker.transport import (
    HttpStatusError,
    TokenBucket,
    is_rate_limited,
    is_transient,
    translate,
)
from ops.core.models import OrderRequest, OrderType, Side
from ops.runtime.errors import AUTH_HINTS


def test_endpoints_normalise_and_reject_bad_urls() -> None:
    e = BrokerEndpoints("http://127.0.0.1:1/", "ws://127.0.0.1:1/stream", "http://h:2")
    assert e.rest_url == "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="rest_url = 'http://h/v2'"):
        BrokerEndpoints("http://h/v2", "ws://h/stream", "http://h")
    with pytest.raises(ValueError, match="stream_url"):
        BrokerEndpoints("http://h", "http://h/stream", "http://h")
    with pytest.raises(ValueError, match="rest_timeout_s"):
        BrokerSettings(rest_timeout_s=0)


def test_token_bucket_bursts_then_paces_within_the_window() -> None:
    b = TokenBucket(rate_per_min=200, burst=20)
    assert [b.delay(100.0) for _ in range(20)] == [0.0] * 20
    wait = b.delay(100.0)
    assert wait == pytest.approx(60 / 180)
    # Over any 60 s, at most burst + 60 * refill = 200 requests go out.
    taken, now = 20, 100.0
    while now < 160.0:
        d = b.delay(now)
        if d == 0.0:
            taken += 1
        else:
            now += d
    assert 195 <= taken <= 200


@pytest.mark.parametrize(
    ("status", "body", "code", "reason"),
    [(422, '{"code":40010001,"message":"client_order_id must be unique"}', 40010001,
      "client_order_id must be unique"),
     # 401 / 403 say what they mean for the pipeline; an HTML page is its title, never
     # the page (a proxy's error page would fill a log line per call).
     (403, '{"message":"forbidden."}', None, f"forbidden.: {AUTH_HINTS[403]}"),
     (401, '{"message":"unauthorized."}', None, f"unauthorized.: {AUTH_HINTS[401]}"),
     # A 403 with Alpaca's code refuses this order, not the key: no credentials hint.
     (403, '{"code":40310100,"message":"trade denied due to pattern day trading '
      'protection"}', 40310100, "trade denied due to pattern day trading protection"),
     (504, "", None, "(empty response body)"),
     (502, "<html>bad gateway</html>", None, "HTML error page: bad gateway"),
     (503, "<!DOCTYPE html><html><head><title>503 Service Unavailable</title><style>b{}"
      "</style></head><body><h1>Down</h1><script>x()</script></body></html>", None,
      "HTML error page: 503 Service Unavailable")],
)
def test_api_errors_are_read_defensively(status: int, body: str, code: int | None,
                                         reason: str) -> None:
    err = translate(HttpStatusError(status, body), "submit order c1", 1.0)
    assert isinstance(err, BrokerApiError)
    assert (err.http_status, err.code, err.reason) == (status, code, reason)
    assert str(err).startswith("submit order c1: ")
    assert is_transient(err) == (status >= 500)
    assert not is_rate_limited(err)


_POOL = HTTPConnectionPool("broker.test", 443)
_CONN = HTTPConnection("broker.test", 443)
_URL = "/v2/account"
_REFUSED = NewConnectionError(_CONN, "Failed to establish a new connection: [Errno 111] "
                                     "Connection refused")


@pytest.mark.parametrize(
    ("exc", "reason"),
    [(ReadTimeoutError(_POOL, _URL, "Read timed out. (read timeout=2.0)"), "timeout"),
     (ConnectTimeoutError(_CONN, "Connection timed out"), "timeout"),
     (TimeoutError(), "timeout"),  # the loop's bound (asyncio.wait_for), a socket timeout
     (MaxRetryError(_POOL, _URL, ConnectTimeoutError(_CONN, "timed out")), "timeout"),
     # A NewConnectionError is a ConnectTimeoutError in urllib3 2, but no timeout.
     (_REFUSED, "connection failed: NewConnectionError: "),
     (NameResolutionError("broker.test", _CONN, socket.gaierror(-2, "Name or service not "
                                                               "known")),
      "connection failed: NameResolutionError: "),
     (MaxRetryError(_POOL, _URL, _REFUSED), "connection failed: MaxRetryError: "),
     (MaxRetryError(_POOL, _URL, None), "connection failed: MaxRetryError: "),
     (ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer")),
      "connection failed: ProtocolError: "),
     (SSLError("certificate verify failed"), "connection failed: SSLError: "),
     (ProxyError("Unable to connect to proxy", OSError("x")), "connection failed: ProxyError: "),
     (ClosedPoolError(_POOL, "Pool is closed."), "connection failed: ClosedPoolError: "),
     (MaxRetryError(_POOL, _URL, ResponseError("too many redirects")),
      "request failed: MaxRetryError: "),
     (DecodeError("Received response with content-encoding: gzip, but failed to decode it."),
      "request failed: DecodeError: "),
     # A ValueError too, but about the URL, not the response.
     (LocationParseError("http://[::1"), "request failed: LocationParseError: ")],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_no_answer_is_unavailable_and_transient(exc: BaseException, reason: str) -> None:
    err = translate(exc, "get account", 2.0)
    assert isinstance(err, BrokerUnavailable) and is_transient(err)
    assert str(err).startswith("get account: ")
    if reason == "timeout":
        assert err.reason == "no answer within 2s (timeout)"
    else:
        assert err.reason.startswith(reason) and len(err.reason) > len(reason)


def test_what_is_not_ours_is_not_translated() -> None:
    assert translate(KeyError("k"), "x", 1.0) is None
    assert translate(OSError("raw"), "x", 1.0) is None
    err = translate(ValueError("Expecting value: line 1 column 1"), "get account", 1.0)
    assert isinstance(err, BrokerDataError) and not is_transient(err)
    assert err.reason == "unreadable response: ValueError: Expecting value: line 1 column 1"


def test_account_mismatch_message_names_account_and_numbers() -> None:
    e = AccountMismatchError("large", "PASIM0000001", "PASIM0000002")
    assert "'large'" in str(e) and "PASIM0000001" in str(e) and "PASIM0000002" in str(e)
    assert (e.account_name, e.expected, e.actual) == ("large", "PASIM0000001", "PASIM0000002")


def test_order_request_building() -> None:
    req = OrderRequest("AAPL", Side.BUY, "c-1", qty=Decimal("2"), order_type=OrderType.LIMIT,
                       limit_price=Decimal("190.5"), position_intent="buy_to_open")
    # Decimal strings as Alpaca documents them: exact, no float rounding.
    assert build_order_request(req) == {
        "symbol": "AAPL", "qty": "2", "side": "buy", "type": "limit", "time_in_force": "day",
        "client_order_id": "c-1", "limit_price": "190.5", "position_intent": "buy_to_open"}
    tiny = OrderRequest("AAPL", Side.SELL, "c-2", notional=Decimal("1E+2"),
                        order_type=OrderType.STOP, stop_price=Decimal("0.1000001"))
    assert build_order_request(tiny) == {
        "symbol": "AAPL", "notional": "100", "side": "sell", "type": "stop",
        "time_in_force": "day", "client_order_id": "c-2", "stop_price": "0.1000001"}
    # A price the order type does not take is refused, not silently dropped.
    with pytest.raises(ValueError, match="limit_price = 5: not taken by market orders"):
        build_order_request(OrderRequest("AAPL", Side.BUY, "c", qty=Decimal(1),
                                         limit_price=Decimal(5)))
    with pytest.raises(ValueError, match="'trailing_stop' is not supported"):
        build_order_request(OrderRequest("AAPL", Side.BUY, "c", qty=Decimal(1),
                                         order_type=OrderType.TRAILING_STOP))
    with pytest.raises(ValueError, match="position_intent = 'sideways'"):
        build_order_request(OrderRequest("AAPL", Side.BUY, "c", qty=Decimal(1),
                                         position_intent="sideways"))
    with pytest.raises(ValueError, match="client_order_id"):
        build_order_request(OrderRequest("AAPL", Side.BUY, "c" * 129, qty=Decimal(1)))


def test_replace_request_building() -> None:
    assert build_replace_request(Decimal(3), None, None, None, None) == {"qty": "3"}
    assert build_replace_request(None, Decimal("1.50"), None, "gtc", "c-9") == {
        "limit_price": "1.50", "time_in_force": "gtc", "client_order_id": "c-9"}
    with pytest.raises(ValueError, match="time_in_force = 'week'"):
        build_replace_request(None, Decimal(1), None, "week", None)
    with pytest.raises(ValueError, match="whole number"):
        build_replace_request(Decimal("1.5"), None, None, None, None)
    with pytest.raises(ValueError, match="at least one"):
        build_replace_request(None, None, None, None, None)


def test_timeframes() -> None:
    assert parse_timeframe("5Min") == "5Min"
    assert parse_timeframe("1Day") == "1Day"
    assert parse_timeframe("06Month") == "6Month"
    for bad in ("5 min", "60Min", "2Day", "0Hour", "4Month"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_timeframe(bad)


async def test_token_bucket_acquire_waits_when_empty() -> None:
    b = TokenBucket(rate_per_min=120, burst=1)
    await b.acquire()
    assert b.waited_s == 0.0
    await b.acquire()  # the single token is spent: this one has to wait for the refill
    assert b.waited_s > 0.0
