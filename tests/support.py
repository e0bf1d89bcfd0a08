"""Small helpers every test folder may use: a free loopback port and "poll until true,
with a deadline" (the suite's rule: never a bare sleep where a condition can be polled).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(pred: Callable[[], bool | Awaitable[bool]], what: str,
                     timeout_s: float = 20.0, interval_s: float = 0.05) -> None:
    """Poll `pred` (sync or async) until true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = pred()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for: {what}")
        await asyncio.sleep(interval_s)


def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = 60.0,
               interval_s: float = 0.02) -> None:
    """The blocking form of `eventually`, for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for: {what}")
        time.sleep(interval_s)
