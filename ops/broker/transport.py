"""How REST calls reach the broker: real timeouts, no hidden SDK retries, a rate budget,
and translation of alpaca-py / requests errors into ops.broker.errors.

- alpaca-py passes no timeout to `requests` (alpaca-wire.md 1.3): `harden()` mounts an
  HTTPAdapter that injects our (connect, read) timeout into every request of the client's
  session. The Broker additionally bounds each call on the event loop.
- alpaca-py retries 429/504 three times with 3 s sleeps, POST /v2/orders included (1.5):
  `harden()` sets the client's `_retry` to 0 and `_retry_codes` to empty, so every
  retry goes through ops.retry with our bounds and our per-method policy.
- `TokenBucket` keeps one process under the broker's per-account request budget.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from ops.broker._sdk import APIError, RESTClient
from ops.broker.errors import BrokerApiError, BrokerDataError, BrokerError, BrokerUnavailable
from ops.errors import auth_hint, summarise_body


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request a timeout when the caller (alpaca-py) passes none."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(max_retries=0)
        self._timeout_s = timeout_s

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout_s
        return super().send(request, **kwargs)


def harden(client: RESTClient, timeout_s: float) -> None:
    """Make an alpaca-py REST client time out and never retry on its own."""
    client._retry = 0
    client._retry_codes = []
    adapter = _TimeoutAdapter(timeout_s)
    client._session.mount("http://", adapter)
    client._session.mount("https://", adapter)


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


def _api_error_fields(exc: APIError) -> tuple[int | None, int | None, str]:
    """(status, code, message) read defensively: the body may be empty, non-JSON or lack
    `code` (alpaca-wire.md 1.5)."""
    status = exc.status_code if isinstance(exc.status_code, int) else None
    body = str(exc)
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
    # protection, shares held by other orders: ops/refusals.py words it), not of the key.
    if (status == 401 or code is None) and (hint := auth_hint(status)) is not None:
        message = f"{message}: {hint}" if message else hint
    if len(message) > 500:
        message = message[:497] + "..."
    return status, code, message or "(empty response body)"


def translate(exc: BaseException, what: str, timeout_s: float) -> BrokerError | None:
    """Our error for an alpaca-py / requests / asyncio failure, or None if not ours."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, APIError):
        status, code, message = _api_error_fields(exc)
        return BrokerApiError(what, message, http_status=status, code=code)
    if isinstance(exc, ValueError):
        # A 2xx body that is not JSON (requests.JSONDecodeError) or that alpaca-py cannot
        # unpack (e.g. market data without its data key). Inputs are validated before the
        # call, so a ValueError here is about the response.
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
