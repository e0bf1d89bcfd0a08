"""How REST calls reach the broker: one `urllib3.PoolManager` per Broker, real timeouts,
no hidden retries, a rate budget, and translation of HTTP / urllib3 errors into
ops.broker.errors.

Why our own client and not alpaca-py's REST clients: what the adapter needs has no
public hook there. alpaca-py 0.44 (read in its source) passes no timeout to `requests`
(docs/broker-protocol.md 1.3); retries 429/504 itself with fixed 3 s sleeps, POST /v2/orders
included (1.5), and its `retry_attempts=0` means "the default" while TradingClient takes
no retry arguments at all; its session is private. All three could only be had by
patching private attributes. Its trading and data modules also import pandas and numpy
(~47 MB per process) for DataFrame views we never use. The calls we make are few and
documented (docs/broker-protocol.md 3, 3.8), and the adapter already converts the raw JSON
itself (convert.py), so `Http` issues them with the public API of `urllib3` (what `requests`
runs on; `requests` with charset_normalizer, idna and certifi would cost each role about
4.5 MB of RSS for nothing we use): the auth headers on every request, a (connect, read)
`urllib3.Timeout` on every request, redirects not followed (as alpaca-py: a 3xx is an
error, never a silent hop to another host), and `retries=False`: every retry goes through
ops.runtime.retry, with our bounds and our per-method policy (client.py). TLS is verified
against the system's CA certificates (as the trade stream's, websocket.py); proxy settings
in the environment are not read.

- `TokenBucket` keeps one process under the broker's per-account request budget.
- Error messages are built from the status, the body (an HTML page cut to its title)
  and our own description of the call; never from headers, where the keys live.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import (
    ClosedPoolError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ResponseError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from ops.broker.errors import BrokerApiError, BrokerDataError, BrokerError, BrokerUnavailable
from ops.runtime.errors import auth_hint, summarise_body

USER_AGENT = "ops-pipeline"  # as the trade stream's handshake (websocket.py)
# What requests called a ConnectionError: refused, reset or broken, TLS, proxy, pool closed.
_CONNECTION_FAILED = (NewConnectionError, ProtocolError, SSLError, ProxyError, ClosedPoolError)


class HttpStatusError(Exception):
    """The broker answered with a status that is not 2xx; `body` is the response text."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class Http:
    """Blocking JSON-over-HTTP calls for one set of keys (run them in a worker thread).

    `request` returns the decoded JSON body, or None for an empty one (a 204). A status
    >= 300 raises HttpStatusError; no answer raises urllib3's own exceptions; a 2xx body
    that is not JSON raises ValueError. `translate` turns all of these into ours.
    `pool` is for tests (a PoolManager that answers without a network).
    """

    def __init__(self, api_key: str, api_secret: str, timeout_s: float,
                 pool: urllib3.PoolManager | None = None) -> None:
        # A line break in a header value: http.client would refuse it, quoting the value
        # (the key) in its message; refused here, per call as before, without it.
        self._bad_keys = any(c in v for v in (api_key, api_secret) for c in "\r\n")
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._headers = {
            "APCA-API-KEY-ID": api_key,
            "APCA-API-SECRET-KEY": api_secret,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
        }
        self._manager = pool if pool is not None else urllib3.PoolManager()

    def __repr__(self) -> str:
        return "Http()"  # never the headers: they hold the keys

    def request(
        self, method: str, url: str, params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        if self._bad_keys:
            raise ValueError("the API key or secret holds a line break")
        query = urlencode(params) if params else ""
        if query:  # in the URL for every method (the body is JSON), as requests put it
            url = f"{url}{'&' if '?' in url else '?'}{query}"
        headers = self._headers
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body, allow_nan=False).encode()  # as requests encoded it
            headers = {**headers, "Content-Type": "application/json"}
        resp = self._manager.request(method, url, body=payload, headers=headers,
                                  timeout=self._timeout, retries=False, redirect=False)
        data = resp.data or b""  # urllib3 may give None for an empty body
        text = _text(data, resp.headers.get("Content-Type", ""))
        if not 200 <= resp.status < 300:
            raise HttpStatusError(resp.status, text)
        return json.loads(text) if data else None

    def close(self) -> None:
        """Close pooled connections (idempotent; a later request would open new ones)."""
        self._manager.clear()


def _text(data: bytes, content_type: str) -> str:
    """The body decoded with the charset of its Content-Type, else UTF-8 (what Alpaca
    sends JSON in); undecodable bytes become U+FFFD, as requests decoded."""
    charset = "utf-8"
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip(" \"'"):
            charset = value.strip(" \"'")
    try:
        return data.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return data.decode("utf-8", errors="replace")


class TokenBucket:
    """At most `rate_per_min` requests in any 60 s window, with bursts up to `burst`.

    Refill is (rate - burst)/60 per second, so a full bucket spent at once plus a minute
    of refill still stays inside the broker's window. `delay()` is pure (clock passed
    in) so the arithmetic is testable without sleeping.
    """

    def __init__(self, rate_per_min: int, burst: int) -> None:
        if rate_per_min < 2:
            raise ValueError(f"rate_limit_per_min must be >= 2, got {rate_per_min}")
        self.capacity = float(max(1, min(burst, rate_per_min // 2)))
        self.refill_per_s = (rate_per_min - self.capacity) / 60.0
        self._tokens = self.capacity
        self._stamp: float | None = None
        self._lock: asyncio.Lock | None = None
        self.waited_s = 0.0

    def delay(self, now: float) -> float:
        """Take a token if one is available at `now` (return 0.0), else the wait needed."""
        if self._stamp is not None:
            elapsed = max(0.0, now - self._stamp)
            self._tokens = min(self.capacity, self._tokens + elapsed * self.refill_per_s)
        self._stamp = now
        if self._tokens >= 1.0 - 1e-9:  # tolerance: float refill may land a hair short of 1
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.refill_per_s

    async def acquire(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while (wait := self.delay(time.monotonic())) > 0:
                self.waited_s += wait
                await asyncio.sleep(wait)


def _error_fields(status: int, body: str) -> tuple[int | None, str]:
    """(code, message) read defensively: the body may be empty, non-JSON, HTML or lack
    `code` (docs/broker-protocol.md 1.5)."""
    code: int | None = None
    message = body.strip()
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping):
        raw_code = parsed.get("code")
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            code = raw_code
        elif isinstance(raw_code, str) and raw_code.isdigit():
            code = int(raw_code)
        raw_msg = parsed.get("message")
        if isinstance(raw_msg, str) and raw_msg:
            message = raw_msg
    message = summarise_body(message, status)  # an HTML error page: its title only
    # A 403 with an Alpaca error code is a refusal of this order (pattern-day-trading
    # protection, shares held by other orders: ops/core/refusals.py words it), not of the key.
    if (status == 401 or code is None) and (hint := auth_hint(status)) is not None:
        message = f"{message}: {hint}" if message else hint
    if len(message) > 500:
        message = message[:497] + "..."
    return code, message or "(empty response body)"


def translate(exc: BaseException, what: str, timeout_s: float) -> BrokerError | None:
    """Our error for an HTTP / urllib3 / asyncio failure, or None if not ours."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, HttpStatusError):
        code, message = _error_fields(exc.status, exc.body)
        return BrokerApiError(what, message, http_status=exc.status, code=code)
    if isinstance(exc, HTTPError):
        # Before ValueError: a malformed URL (LocationValueError) is both, and not about
        # the response.
        return BrokerUnavailable(what, _unanswered(exc, timeout_s))
    if isinstance(exc, TimeoutError):  # the loop's bound on the call (client.py)
        return BrokerUnavailable(what, f"no answer within {timeout_s:g}s (timeout)")
    if isinstance(exc, ValueError):
        # A 2xx body that is not JSON (json.JSONDecodeError is a ValueError). Inputs are
        # validated before the call, so a ValueError here is about the response (or keys
        # with a line break, which Http refuses: a response never comes).
        return BrokerDataError(what, f"unreadable response: {_short(exc)}")
    return None


def _unanswered(exc: HTTPError, timeout_s: float) -> str:
    """What failed inside urllib3, sorted as requests sorted it: a timeout, a connection
    that failed (refused, reset, broken off, TLS, proxy), or another failed request."""
    cause: BaseException | None = exc.reason if isinstance(exc, MaxRetryError) else exc
    # NewConnectionError (a refused connection, a failed name lookup) is a subclass of
    # ConnectTimeoutError in urllib3 2, but no timeout.
    if isinstance(cause, Urllib3Timeout) and not isinstance(cause, NewConnectionError):
        return f"no answer within {timeout_s:g}s (timeout)"
    if isinstance(cause, ResponseError):  # too many redirects or error statuses
        return f"request failed: {_short(exc)}"
    if isinstance(exc, MaxRetryError) or isinstance(cause, _CONNECTION_FAILED):
        return f"connection failed: {_short(exc)}"
    return f"request failed: {_short(exc)}"


def _short(exc: BaseException) -> str:
    # urllib3's messages name the URL, host and pool (never headers, where the keys live).
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def is_transient(exc: BaseException) -> bool:
    """Worth retrying for an idempotent call: rate limited, 5xx, or no answer."""
    if isinstance(exc, BrokerUnavailable):
        return True
    if isinstance(exc, BrokerApiError) and exc.http_status is not None:
        return exc.http_status == 429 or exc.http_status >= 500
    return False


def is_rate_limited(exc: BaseException) -> bool:
    """The only retry safe for calls that create orders: a 429 was refused unprocessed."""
    return isinstance(exc, BrokerApiError) and exc.http_status == 429
