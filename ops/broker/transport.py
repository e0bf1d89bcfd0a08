"""How REST calls reach the broker: one `requests.Session` per Broker, real timeouts, no
hidden retries, a rate budget, and translation of HTTP / requests errors into
ops.broker.errors.

Why our own session and not alpaca-py's REST clients: what the adapter needs has no
public hook there. alpaca-py 0.44 (read in its source) passes no timeout to `requests`
(docs/broker-protocol.md 1.3); retries 429/504 itself with fixed 3 s sleeps, POST /v2/orders
included (1.5), and its `retry_attempts=0` means "the default" while TradingClient takes
no retry arguments at all; its session is private. All three could only be had by
patching private attributes. Its trading and data modules also import pandas and numpy
(~47 MB per process) for DataFrame views we never use. The calls we make are few and
documented (docs/broker-protocol.md 3, 3.8), and the adapter already converts the raw JSON itself
(convert.py), so `Http` issues them with the public API of `requests`: auth headers on
the session, a (connect, read) timeout on every request, redirects not followed (as
alpaca-py: a 3xx is an error, never a silent hop to another host), and no retries
(`requests` makes none by default): every retry goes through ops.runtime.retry, with our bounds
and our per-method policy (client.py).

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

import requests

from ops.broker.errors import BrokerApiError, BrokerDataError, BrokerError, BrokerUnavailable
from ops.runtime.errors import auth_hint, summarise_body

USER_AGENT = f"ops-pipeline requests/{requests.__version__}"


class HttpStatusError(Exception):
    """The broker answered with a status that is not 2xx; `body` is the response text."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class Http:
    """Blocking JSON-over-HTTP calls for one set of keys (run them in a worker thread).

    `request` returns the decoded JSON body, or None for an empty one (a 204). A status
    >= 300 raises HttpStatusError; no answer raises requests' own exceptions; a 2xx body
    that is not JSON raises ValueError. `translate` turns all of these into ours.
    """

    def __init__(self, api_key: str, api_secret: str, timeout_s: float,
                 session: requests.Session | None = None) -> None:
        self._timeout = (timeout_s, timeout_s)
        self._session = session or requests.Session()  # a test may mount its own adapter
        self._session.headers.update({
            "APCA-API-KEY-ID": api_key,
            "APCA-API-SECRET-KEY": api_secret,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        })

    def __repr__(self) -> str:
        return "Http()"  # never the session: its headers hold the keys

    def request(
        self, method: str, url: str, params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        resp = self._session.request(method, url, params=params, json=body,
                                     timeout=self._timeout, allow_redirects=False)
        if not 200 <= resp.status_code < 300:
            raise HttpStatusError(resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def close(self) -> None:
        """Close pooled connections (idempotent; a later request would open new ones)."""
        self._session.close()


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
    """Our error for an HTTP / requests / asyncio failure, or None if not ours."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, HttpStatusError):
        code, message = _error_fields(exc.status, exc.body)
        return BrokerApiError(what, message, http_status=exc.status, code=code)
    if isinstance(exc, ValueError):
        # A 2xx body that is not JSON (requests.JSONDecodeError is a ValueError). Inputs
        # are validated before the call, so a ValueError here is about the response.
        return BrokerDataError(what, f"unreadable response: {_short(exc)}")
    if isinstance(exc, requests.Timeout | TimeoutError):
        return BrokerUnavailable(what, f"no answer within {timeout_s:g}s (timeout)")
    if isinstance(exc, requests.ConnectionError):
        return BrokerUnavailable(what, f"connection failed: {_short(exc)}")
    if isinstance(exc, requests.RequestException):
        return BrokerUnavailable(what, f"request failed: {_short(exc)}")
    return None


def _short(exc: BaseException) -> str:
    # requests' messages name the URL and host (never headers, where the keys live).
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
