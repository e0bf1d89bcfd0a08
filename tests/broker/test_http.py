"""transport.Http on urllib3's public API, in-process. A canned PoolManager stands in for
the network (urllib3's own PoolManager logic, redirects included, runs; only the per-host
pool answers from a list), so each test sees exactly what would go on the wire. Loopback
sockets that refuse or never answer show how a failure to get an answer is worded."""

from __future__ import annotations

import gzip
import io
import json
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import urllib3
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.response import BaseHTTPResponse, HTTPResponse

from ops.broker.errors import BrokerApiError, BrokerDataError, BrokerUnavailable
from ops.broker.transport import Http, HttpStatusError, translate

Answer = tuple[int, bytes, Mapping[str, str]]


@dataclass
class Sent:
    method: str
    host: str | None
    url: str  # the request target: path and query
    headers: Mapping[str, str]
    body: bytes | None
    kw: dict[str, Any]  # timeout, retries, redirect, ...


class CannedPool(HTTPConnectionPool):
    """One host's pool: answers with the manager's next canned answer, records the call."""

    def __init__(self, manager: Canned, host: str | None, port: int | None) -> None:
        super().__init__(host or "", port)
        self.manager = manager

    def urlopen(self, method: str, url: str, *args: Any,
                **kw: Any) -> BaseHTTPResponse:
        assert not args  # the PoolManager passes everything but these two by keyword
        self.manager.sent.append(Sent(method, self.host, url, dict(kw.pop("headers")),
                                      kw.pop("body", None), kw))
        status, body, headers = self.manager.answers.pop(0)
        # As from a socket: read (and decompressed) through a file object.
        return HTTPResponse(body=io.BytesIO(body), status=status, headers=dict(headers),
                            preload_content=True)


class Canned(urllib3.PoolManager):
    """A PoolManager whose per-host pools answer from `answers`, in order."""

    def __init__(self, *answers: Answer) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[Sent] = []
        self.cleared = 0

    def connection_from_host(self, host: str | None, port: int | None = None,
                             scheme: str | None = "http",
                             pool_kwargs: dict[str, Any] | None = None) -> HTTPConnectionPool:
        return CannedPool(self, host, port)

    def clear(self) -> None:
        self.cleared += 1
        super().clear()


def http_with(*answers: Answer) -> tuple[Http, Canned]:
    canned = Canned(*answers)
    return Http("KEY-ID-1", "SECRET-1", 2.5, pool=canned), canned


JSON = {"Content-Type": "application/json"}


def test_request_sends_keys_timeout_query_and_json_body() -> None:
    http, canned = http_with((200, b'{"id": "o-1"}', JSON))
    out = http.request("POST", "http://broker/v2/orders", {"nested": "true"},
                       {"symbol": "AAPL", "qty": "2"})
    assert out == {"id": "o-1"}
    (sent,) = canned.sent
    assert (sent.method, sent.host, sent.url) == ("POST", "broker", "/v2/orders?nested=true")
    assert sent.headers["APCA-API-KEY-ID"] == "KEY-ID-1"
    assert sent.headers["APCA-API-SECRET-KEY"] == "SECRET-1"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["Accept"] == "application/json"
    assert sent.headers["Accept-Encoding"] == "gzip, deflate"  # as requests asked
    assert json.loads(sent.body or b"") == {"symbol": "AAPL", "qty": "2"}
    # Never the default: without a timeout a silent server blocks the thread for good.
    timeout = sent.kw["timeout"]
    assert isinstance(timeout, urllib3.Timeout)
    assert (timeout.connect_timeout, timeout.read_timeout) == (2.5, 2.5)
    assert sent.kw["retries"] is False  # every retry is ours (ops.runtime.retry)
    assert "KEY-ID-1" not in repr(http) and "SECRET-1" not in repr(http)


def test_query_is_encoded_as_requests_encoded_it() -> None:
    # Commas, the '+' of an offset, spaces and non-ASCII escaped; a query already in the
    # URL is extended; no '?' without parameters; GET and DELETE carry no body.
    http, canned = http_with((200, b"[]", JSON), (200, b"[]", JSON), (204, b"", {}))
    http.request("GET", "http://data/v2/stocks/bars",
                 {"symbols": "AAPL,MSFT", "start": "2024-01-02T09:30:00+00:00",
                  "q": "a b/\u00e9~*"})
    http.request("GET", "http://broker/v2/orders?status=all", {"limit": "500"})
    http.request("DELETE", "http://broker/v2/orders")
    assert [s.url for s in canned.sent] == [
        "/v2/stocks/bars?symbols=AAPL%2CMSFT&start=2024-01-02T09%3A30%3A00%2B00%3A00"
        "&q=a+b%2F%C3%A9~%2A",
        "/v2/orders?status=all&limit=500",
        "/v2/orders",
    ]
    assert [s.body for s in canned.sent] == [None, None, None]
    assert all("Content-Type" not in s.headers for s in canned.sent)


def test_empty_body_is_none_and_redirects_are_not_followed() -> None:
    http, canned = http_with((204, b"", {}),
                             (302, b"", {"Location": "http://elsewhere/v2/orders"}),
                             (200, b"{}", JSON))
    assert http.request("DELETE", "http://broker/v2/orders/x") is None
    with pytest.raises(HttpStatusError) as ei:
        http.request("GET", "http://broker/v2/orders")
    assert ei.value.status == 302
    # The 302 was the answer: nothing went to "elsewhere" (urllib3 would have asked the
    # pool for it with the third answer ready).
    assert [s.host for s in canned.sent] == ["broker", "broker"]
    assert len(canned.answers) == 1


def test_error_status_and_unreadable_body_translate_to_ours() -> None:
    http, _ = http_with((422, b'{"code":40010001,"message":"client_order_id must be unique"}',
                         {}), (200, b"<html>oops</html>", {}))
    with pytest.raises(HttpStatusError) as ei:
        http.request("POST", "http://broker/v2/orders", None, {"symbol": "AAPL"})
    err = translate(ei.value, "submit order c1", 2.5)
    assert isinstance(err, BrokerApiError)
    assert (err.http_status, err.code, err.reason) == (422, 40010001,
                                                       "client_order_id must be unique")
    with pytest.raises(ValueError) as ve:
        http.request("GET", "http://broker/v2/account")
    data_err = translate(ve.value, "get account", 2.5)
    assert isinstance(data_err, BrokerDataError) and "unreadable response" in str(data_err)


def test_bodies_are_decoded_by_their_charset_else_utf8() -> None:
    zurich = '{"city": "Z\u00fcrich"}'
    http, _ = http_with(
        (200, zurich.encode("latin-1"), {"Content-Type": "application/json; charset=ISO-8859-1"}),
        (200, zurich.encode(), JSON),  # no charset: UTF-8
        (200, zurich.encode(), {"Content-Type": 'application/json; charset="utf-8"'}),
        (200, zurich.encode(), {"Content-Type": "application/json; charset=klingon"}),
        (200, gzip.compress(zurich.encode()), {**JSON, "Content-Encoding": "gzip"}),
        (500, b'{"message": "bad \xff byte"}', JSON),
    )
    for _ in range(5):
        assert http.request("GET", "http://broker/v2/x") == {"city": "Z\u00fcrich"}
    with pytest.raises(HttpStatusError) as ei:
        http.request("GET", "http://broker/v2/x")
    assert ei.value.body == '{"message": "bad \ufffd byte"}'  # undecodable: replaced


def test_close_clears_the_pool_and_is_idempotent() -> None:
    http, canned = http_with((200, b"{}", JSON))
    http.close()
    http.close()
    assert canned.cleared == 2
    assert http.request("GET", "http://broker/v2/account") == {}  # a new connection


def test_keys_with_a_line_break_are_refused_without_quoting_them() -> None:
    # http.client would refuse the header itself, with the value (the key) in its message.
    http, canned = http_with()
    http = Http("KEY-ID-1", "SECRET-1\r\nX-Evil: 1", 2.5, pool=canned)
    with pytest.raises(ValueError) as ei:
        http.request("GET", "http://broker/v2/account")
    err = translate(ei.value, "get account", 2.5)
    assert err is not None and "SECRET-1" not in str(err) and "line break" in str(err)
    assert canned.sent == []


# -- real sockets on loopback: what urllib3 raises, and how it is worded ---------------------

@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_a_refused_connection_is_a_connection_failure_not_a_timeout(closed_port: int) -> None:
    # urllib3 2's NewConnectionError subclasses ConnectTimeoutError: it must not read as one.
    http = Http("KEY-ID-1", "SECRET-1", 5.0)
    try:
        with pytest.raises(urllib3.exceptions.NewConnectionError) as ei:
            http.request("GET", f"http://127.0.0.1:{closed_port}/v2/account")
    finally:
        http.close()
    err = translate(ei.value, "get account", 5.0)
    assert isinstance(err, BrokerUnavailable)
    assert err.reason.startswith("connection failed: NewConnectionError: ")
    assert "refused" in err.reason.lower()
    assert "KEY-ID-1" not in str(err) and "SECRET-1" not in str(err)


@pytest.mark.timeout(20)  # without the read timeout this would hang
def test_a_silent_server_is_a_timeout(silent_port: int) -> None:
    http = Http("KEY-ID-1", "SECRET-1", 0.2)
    try:
        with pytest.raises(urllib3.exceptions.ReadTimeoutError) as ei:
            http.request("GET", f"http://127.0.0.1:{silent_port}/v2/account")
    finally:
        http.close()
    err = translate(ei.value, "get account", 0.2)
    assert isinstance(err, BrokerUnavailable)
    assert err.reason == "no answer within 0.2s (timeout)"
