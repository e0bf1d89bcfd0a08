"""A virtual clock for scheduling tests: an event loop whose time only moves when every task
waits on a timer, and then jumps straight to the next one.

The ticker takes its deadlines from `loop.time()` and its slot grid from an injected wall
clock (`ops.runtime.ticker.TickerClock`), so on `VirtualClockLoop` with `VirtualWall` it runs its
real code with no sleeping and no dependence on the host's load: a job that "takes"
0.125 s takes 0.125 virtual seconds exactly, and `await asyncio.sleep(4)` lets exactly four
seconds of schedule happen. What does not live here: tests whose point is real timing
(signals, a loaded host's drift), which stay on the real loop.

I/O still works (the selector is polled without blocking); when no timer is set at all the
loop blocks for real, so a thread or a signal can still wake it.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

P = ParamSpec("P")

#: Wall time at virtual loop time 0: 2026-03-02 15:00:00 UTC, a whole second, so slot
#: grids line up with loop time 0 and slot times are the same in every run.
WALL0 = 1_772_463_600.0


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; when nothing is ready, moves the loop's clock on by the
    timeout the loop asked for (the time to its next timer) instead of waiting it out."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O, a thread or a signal can wake us
            return super().select(None)
        self._loop.now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """`asyncio.SelectorEventLoop` on virtual time starting at 0.0 (see the module doc)."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


class VirtualWall:
    """A ticker wall clock that follows the running loop's (virtual) time from `WALL0`."""

    def __init__(self, shift_s: float = 0.0) -> None:
        self.shift_s = shift_s

    def wall(self) -> float:
        return WALL0 + self.shift_s + asyncio.get_running_loop().time()


def on_virtual_clock(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh `VirtualClockLoop` (as `asyncio.run` would: remaining
    tasks cancelled, async generators closed). The test becomes a plain function, so
    pytest-asyncio leaves it alone; its fixtures are passed through."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
            runner.run(test(*args, **kwargs))

    return run
