"""transport.Http on requests' public API, in-process: a canned transport adapter stands in
for the network, so each test sees exactly what would go on the wire."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3.response import HTTPResponse

from ops.broker.errors import BrokerApiError, BrokerDataError
from ops.broker.transport import Http, HttpStatusError, translate


class Canned(BaseAdapter):
    """Answers each request with the next canned (status, body, headers); records them."""

    def __init__(self, *answers: tuple[int, bytes, Mapping[str, str]]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.sent: list[tuple[requests.PreparedRequest, dict[str, Any]]] = []

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        self.sent.append((request, {"timeout": timeout}))
        status, body, headers = self.answers.pop(0)
        raw = HTTPResponse(body=io.BytesIO(body), status=status, headers=dict(headers),
                           preload_content=False)
        return HTTPAdapter().build_response(request, raw)

    def close(self) -> None:
        pass


def http_with(*answers: tuple[int, bytes, Mapping[str, str]]) -> tuple[Http, Canned]:
    session = requests.Session()
    canned = Canned(*answers)
    session.mount("http://", canned)
    return Http("KEY-ID-1", "SECRET-1", 2.5, session=session), canned


def test_request_sends_keys_timeout_query_and_json_body() -> None:
    http, canned = http_with((200, b'{"id": "o-1"}', {"Content-Type": "application/json"}))
    out = http.request("POST", "http://broker/v2/orders", {"nested": "true"},
                       {"symbol": "AAPL", "qty": "2"})
    assert out == {"id": "o-1"}
    (req, kw), = canned.sent
    assert req.method == "POST" and req.url == "http://broker/v2/orders?nested=true"
    assert req.headers["APCA-API-KEY-ID"] == "KEY-ID-1"
    assert req.headers["APCA-API-SECRET-KEY"] == "SECRET-1"
    assert req.headers["Content-Type"] == "application/json"
    assert json.loads(req.body or b"") == {"symbol": "AAPL", "qty": "2"}
    assert kw["timeout"] == (2.5, 2.5)  # never None: requests would wait forever
    assert "KEY-ID-1" not in repr(http) and "SECRET-1" not in repr(http)


def test_empty_body_is_none_and_redirects_are_not_followed() -> None:
    http, canned = http_with((204, b"", {}),
                             (302, b"", {"Location": "http://elsewhere/v2/orders"}))
    assert http.request("DELETE", "http://broker/v2/orders/x") is None
    with pytest.raises(HttpStatusError) as ei:
        http.request("GET", "http://broker/v2/orders")
    assert ei.value.status == 302
    assert len(canned.sent) == 2  # the 302 was the answer: nothing went to "elsewhere"


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
