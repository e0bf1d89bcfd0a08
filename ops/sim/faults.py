"""Fault injection: each knob reproduces a real failure listed in alpaca-wire.md section 6.

`RestFaults` holds the REST-side state (hangs, forced error statuses, latency, per-key rate
limit) consulted by the server for every authenticated request; `FaultController` is the
public surface (`sim.faults.<method>` and `POST /_sim/faults {"action": <method>, ...}`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ops.sim.clock import SimClock
from ops.sim.engine import Engine
from ops.sim.stream import StreamHub, frame
from ops.sim.wire import ApiError, iso_z

log = logging.getLogger(__name__)

FAIL_BODIES: dict[int, tuple[int | None, str]] = {
    429: (42910000, "rate limit exceeded"),
    500: (50010000, "internal server error"),
    502: (None, "bad gateway"),
    503: (None, "service unavailable"),
    504: (None, "gateway timeout"),
}


@dataclass
class RestRule:
    """Applies to the next `remaining` matching requests."""

    remaining: int
    path: str | None = None
    method: str | None = None
    after_processing: bool = False
    status: int = 500
    duration_s: float | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        return self.path is None or self.path in path


@dataclass
class RestFaults:
    hangs: list[RestRule] = field(default_factory=list)
    fails: list[RestRule] = field(default_factory=list)
    latency_s: float = 0.0
    rate_limit_per_min: int = 200
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)
    _release: asyncio.Event | None = None
    hung_now: int = 0

    def take(self, rules: list[RestRule], method: str, path: str) -> RestRule | None:
        for rule in rules:
            if rule.matches(method, path):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    rules.remove(rule)
                return rule
        return None

    def rate_headers(self, key: str) -> dict[str, str]:
        start, count = self._windows.get(key, (time.time(), 0))
        return {
            "X-Ratelimit-Limit": str(self.rate_limit_per_min),
            "X-Ratelimit-Remaining": str(max(0, self.rate_limit_per_min - count)),
            "X-Ratelimit-Reset": str(int(start + 60)),
        }

    def count(self, key: str) -> ApiError | None:
        """Count one request for `key`; the 429 to answer when over budget (fixed 60 s window)."""
        now = time.time()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if count > self.rate_limit_per_min:
            return fail_error(429, self.rate_headers(key))
        return None

    def release_event(self) -> asyncio.Event:
        if self._release is None:
            self._release = asyncio.Event()
        return self._release

    async def hang(self, rule: RestRule) -> None:
        """Block until released, or for the rule's duration (None = until released)."""
        event = self.release_event()
        self.hung_now += 1
        try:
            if rule.duration_s is None:
                await event.wait()
            else:
                try:
                    async with asyncio.timeout(rule.duration_s):
                        await event.wait()
                except TimeoutError:
                    pass
        finally:
            self.hung_now -= 1

    def release(self) -> None:
        if self._release is not None:
            self._release.set()
        self._release = None


def fail_error(status: int, headers: dict[str, str] | None = None) -> ApiError:
    code, message = FAIL_BODIES.get(status, (status * 100000, f"simulated error {status}"))
    return ApiError(status, code, message, headers=dict(headers or {}))


class FaultController:
    """Every fault knob; methods are also reachable as admin actions by name."""

    ACTIONS = (
        "drop_streams", "mute", "unmute", "drop_next_events", "duplicate_next_events",
        "reorder_next_events", "reject_next_orders", "emit_unknown_event",
        "emit_malformed_frame", "hang_next",
        "release_hangs", "fail_next", "set_rest_latency", "set_stream_latency",
        "set_rate_limit", "set_clock", "set_reap_delay", "restart", "clear", "state",
    )

    def __init__(
        self,
        engine: Engine,
        hub: StreamHub,
        clock: SimClock,
        rest: RestFaults,
        restart: Callable[[float], Awaitable[None]],
    ) -> None:
        self._engine = engine
        self._hub = hub
        self._clock = clock
        self.rest = rest
        self._restart = restart

    def _account(self, account: str | None) -> str | None:
        if account is not None and account not in self._engine.states:
            known = ", ".join(sorted(self._engine.states))
            raise ValueError(f"unknown simulator account {account!r} (known: {known})")
        return account

    # -- stream ----------------------------------------------------------------------------
    async def drop_streams(self, account: str | None = None, mode: str = "1011") -> int:
        """Close stream connections (all, or one account's): close code 1011 or a TCP reset."""
        n = await self._hub.drop(self._account(account), str(mode))
        log.info("fault: dropped %d stream connection(s) (%s)", n, mode)
        return n

    def mute(self, account: str | None = None) -> None:
        """Stop sending updates (pings are still answered): the silent stall of section 6.1."""
        self._hub.faults.muted.add(self._account(account) or "*")

    def unmute(self, account: str | None = None, deliver: bool = False) -> int:
        """Resume; events queued while mute are lost (default, like the real thing) or sent."""
        return self._hub.unmute(self._account(account), deliver)

    def _count(self, counters: dict[str, int], n: int, account: str | None) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        key = self._account(account) or "*"
        counters[key] = counters.get(key, 0) + n

    def drop_next_events(self, n: int = 1, account: str | None = None) -> None:
        self._count(self._hub.faults.drop, n, account)

    def duplicate_next_events(self, n: int = 1, account: str | None = None) -> None:
        self._count(self._hub.faults.duplicate, n, account)

    def reorder_next_events(self, n: int = 2, account: str | None = None) -> None:
        """Hold the next n events and then send them in reverse order."""
        self._count(self._hub.faults.reorder, n, account)

    def reject_next_orders(self, n: int = 1, account: str | None = None) -> None:
        """The next n accepted submits are rejected downstream: POST answers 200, then the
        next market step sends `rejected` (status rejected, failed_at set)."""
        self._count(self._engine.reject_next, n, account)

    def emit_unknown_event(
        self, account: str, event: str = "order_frozen", order_id: str | None = None
    ) -> None:
        """Send a trade update whose event name alpaca-py's enum does not know."""
        st = self._engine.states[self._account(account) or ""]
        if order_id is not None:
            order = self._engine.order(st, order_id)
        elif st.orders:
            order = max(st.orders.values(), key=lambda o: o.seq)
        else:
            raise ValueError(f"account {account!r} has no order to attach to the event")
        data = {"event": event, "timestamp": iso_z(self._engine.now()), "order": order.wire()}
        self._hub.deliver(st.spec.name, frame({"stream": "trade_updates", "data": data}),
                          faults=False)

    def emit_malformed_frame(
        self, account: str, payload: str = '{"stream":"trade_updates",'
    ) -> None:
        """Send a frame that is not valid JSON."""
        self._hub.deliver(self._account(account) or "", payload.encode(), faults=False)

    def set_stream_latency(self, seconds: float) -> None:
        self._hub.faults.latency_s = _non_negative(seconds, "seconds")

    def set_reap_delay(self, seconds: float) -> None:
        """How long a closed connection keeps its key's single slot (Alpaca: ~90 s)."""
        self._hub.faults.reap_delay_s = _non_negative(seconds, "seconds")

    # -- REST ------------------------------------------------------------------------------
    def hang_next(self, n: int = 1, duration_s: float | None = None, path: str | None = None,
                  method: str | None = None, after_processing: bool = False) -> None:
        """Never answer the next n matching REST calls until released (or for duration_s)."""
        self.rest.hangs.append(RestRule(int(n), path, method, after_processing,
                                        duration_s=duration_s))

    def release_hangs(self) -> int:
        n = self.rest.hung_now
        self.rest.release()
        return n

    def fail_next(self, n: int = 1, status: int = 500, path: str | None = None,
                  method: str | None = None, after_processing: bool = False) -> None:
        """Answer the next n matching REST calls with `status` (429 carries rate headers).

        after_processing=True performs the request first (e.g. creates the order) and then
        answers the error: the ambiguous submit of section 1.5.
        """
        if not 400 <= int(status) <= 599:
            raise ValueError(f"status must be 4xx or 5xx, got {status}")
        self.rest.fails.append(RestRule(int(n), path, method, after_processing, int(status)))

    def set_rest_latency(self, seconds: float) -> None:
        self.rest.latency_s = _non_negative(seconds, "seconds")

    def set_rate_limit(self, per_minute: int) -> None:
        if int(per_minute) < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.rest.rate_limit_per_min = int(per_minute)
        self.rest._windows.clear()

    # -- clock and lifecycle ---------------------------------------------------------------
    def set_clock(self, mode: str) -> None:
        self._clock.set_mode(mode)
        self._engine.process()

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (state kept), stay down for down_s, start again on the same port."""
        await self._restart(_non_negative(down_s, "down_s"))

    def clear(self) -> None:
        """Lift every fault (queued muted events are dropped)."""
        self._hub.unmute(None, deliver=False)
        f = self._hub.faults
        for counters in (f.drop, f.duplicate, f.reorder, self._engine.reject_next):
            counters.clear()
        f.reorder_held.clear()
        f.latency_s = f.reap_delay_s = 0.0
        self.rest.hangs.clear()
        self.rest.fails.clear()
        self.rest.release()
        self.rest.latency_s = 0.0

    def state(self) -> dict[str, Any]:
        f = self._hub.faults
        return {
            "clock": self._clock.mode,
            "muted": sorted(f.muted),
            "drop_next": dict(f.drop), "duplicate_next": dict(f.duplicate),
            "reorder_next": dict(f.reorder),
            "reject_next_orders": dict(self._engine.reject_next),
            "stream_latency_s": f.latency_s, "reap_delay_s": f.reap_delay_s,
            "rest_latency_s": self.rest.latency_s,
            "rate_limit_per_min": self.rest.rate_limit_per_min,
            "hangs": [vars(r) for r in self.rest.hangs],
            "fails": [vars(r) for r in self.rest.fails],
            "hung_now": self.rest.hung_now,
            "streams": sorted(self._hub.conns),
            "refused_stream_connections": self._hub.refused_upgrades,
        }


def _non_negative(value: float, name: str) -> float:
    v = float(value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return v
