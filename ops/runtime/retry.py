"""The one retry/back-off helper. Every component that retries uses it, with bounds from config.

Exponential back-off with "equal jitter" (delay in [cap/2, cap]), bounded by attempts and
by an overall deadline. `CancelledError` is never retried or swallowed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ops.core.backoff import Backoff

T = TypeVar("T")
log = logging.getLogger(__name__)


class RetryExhausted(Exception):
    """Raised from the last error when attempts or the deadline ran out."""


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: Backoff,
    retry_on: Callable[[BaseException], bool],
    what: str,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Await `fn()` until it succeeds, retrying errors for which `retry_on(exc)` is true.

    Non-retryable errors propagate at once. When attempts or the deadline run out, the
    last error propagates unchanged (callers classify it; no wrapping hides its type).
    """
    start = time.monotonic()
    attempt = 1
    delays = policy.delays()
    while True:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not retry_on(exc):
                raise
            delay = next(delays)
            out_of_attempts = policy.max_attempts and attempt >= policy.max_attempts
            elapsed = time.monotonic() - start
            past_deadline = (
                policy.deadline_s is not None and elapsed + delay > policy.deadline_s
            )
            if out_of_attempts or past_deadline:
                log.warning("%s: giving up after %d attempts: %s", what, attempt, exc)
                raise
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            log.info("%s: attempt %d failed (%s); retrying in %.2fs", what, attempt, exc, delay)
            await asyncio.sleep(delay)
            attempt += 1
