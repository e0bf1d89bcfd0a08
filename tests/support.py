"""Small helpers every test folder may use: a free loopback port and "poll until true,
with a deadline" (the suite's rule: never a bare sleep where a condition can be polled).

`eventually` (async) and `eventually_sync` (blocking, for tests that drive subprocesses)
are the suite's one poll helper; a folder may wrap them to add what it knows (a stack's
state, a process that must stay alive), not write its own loop. Both:
- call `pred()` until it returns something truthy and return that value (so a poll can
  hand back what it found: a row, a pid, a page; typed without `None`, so a predicate
  `lambda: row if ready(row := read()) else None` returns the row);
- on timeout raise AssertionError naming `what` and the last value seen (or what
  `explain()` says about the state, when given);
- let an exception from `pred` propagate: a predicate that may fail while the system comes
  up catches what it expects itself.
The deadline is on the real monotonic clock, so a test on a virtual event loop clock
(tests/ticker/vclock.py) is still bounded in real time.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed_out(what: str, timeout_s: float, last: object,
               explain: Callable[[], object] | None) -> AssertionError:
    seen = explain() if explain is not None else repr(last)
    return AssertionError(f"timed out after {timeout_s:g}s waiting for: {what} (last: {seen})")


@overload
async def eventually(pred: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = ...,
                     interval_s: float = ...,
                     explain: Callable[[], object] | None = ...) -> T: ...


@overload
async def eventually(pred: Callable[[], T | None], what: str, timeout_s: float = ...,
                     interval_s: float = ...,
                     explain: Callable[[], object] | None = ...) -> T: ...


async def eventually(pred: Callable[[], object], what: str, timeout_s: float = 20.0,
                     interval_s: float = 0.05,
                     explain: Callable[[], object] | None = None) -> object:
    """Poll `pred` (sync or async) until truthy and return its value; fail naming `what`
    and the last value after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = pred()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s, last, explain)
        await asyncio.sleep(interval_s)


def eventually_sync(pred: Callable[[], T | None], what: str, timeout_s: float = 60.0,
                    interval_s: float = 0.02,
                    explain: Callable[[], object] | None = None) -> T:
    """The blocking form of `eventually`, for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout_s, last, explain)
        time.sleep(interval_s)
