"""Fault injection: each knob reproduces a real failure listed in docs/broker-protocol.md section 6.

`RestFaults` holds the REST-side state (hangs, forced error statuses, latency, per-key rate
limit) consulted by the server for every authenticated request; `FaultController` is the
public surface (`sim.faults.<method>` and `POST /_sim/faults {"action": <method>, ...}`).
The stream-side state lives in `ops.sim.stream` (`EventFaults`) and `ops.sim.chaos`.
Timed faults (`drop_every`, `mute(for_s=...)`) are tasks and timers owned by the
controller: `clear()` cancels them, and the Simulator's `stop()` calls `aclose()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ops.sim import corporate
from ops.sim.clock import SimClock
from ops.sim.engine import Engine
from ops.sim.orders import PDT_MESSAGE, OrderRefusal
from ops.sim.stream import StreamHub, check_drop_mode, frame
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
        "drop_streams", "drop_every", "mute", "unmute", "refuse_auth", "set_stream_chaos",
        "drop_next_events", "duplicate_next_events",
        "reorder_next_events", "reject_next_orders", "refuse_next_orders",
        "emit_unknown_event",
        "emit_malformed_frame", "hang_next",
        "release_hangs", "fail_next", "set_rest_latency", "set_stream_latency",
        "set_rate_limit", "set_clock", "set_reap_delay", "revoke_key", "restart", "clear",
        "state",
        # Position changes without a pipeline fill (ops.sim.corporate):
        "external_order", "split", "expire_options", "exercise", "assign",
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
        self._droppers: dict[str, tuple[asyncio.Task[None], float, str]] = {}
        # key -> (timer, time.monotonic() when it fires)
        self._unmute_timers: dict[str, tuple[asyncio.TimerHandle, float]] = {}

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

    def drop_every(self, seconds: float, account: str | None = None, mode: str = "1011") -> None:
        """Drop the stream connection(s) of `account` (None = every account) every `seconds`
        (close code or "reset" as `drop_streams`) until called again with 0."""
        seconds = _non_negative(seconds, "seconds")
        check_drop_mode(str(mode))
        key = self._account(account) or "*"
        # One schedule for every account replaces the per-account ones (and 0 stops all).
        for k in list(self._droppers) if account is None else [key]:
            self._stop_dropper(k)
        if seconds > 0:
            task = asyncio.create_task(self._drop_loop(account, seconds, str(mode)),
                                       name=f"sim-drop-every-{key}")
            self._droppers[key] = (task, seconds, str(mode))

    def _stop_dropper(self, key: str) -> None:
        entry = self._droppers.pop(key, None)
        if entry is not None:
            entry[0].cancel()

    async def _drop_loop(self, account: str | None, seconds: float, mode: str) -> None:
        # Deadlines from loop time (no drift); a failed drop is logged and the loop goes on.
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += seconds
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            try:
                n = await self._hub.drop(account, mode)
                log.info("fault: periodic drop of %d stream connection(s) (%s)", n, mode)
            except Exception:
                log.exception("fault: periodic stream drop failed; continuing")
            if loop.time() - deadline > seconds:  # overran: skip missed drops, don't burst
                deadline = loop.time()

    def mute(self, account: str | None = None, for_s: float | None = None) -> None:
        """Stop sending updates (pings are still answered): the silent stall of section 6.1.

        With `for_s`, the stall ends by itself after that many seconds and what was held
        meanwhile is dropped, as after a real stall (`unmute` can still end it sooner)."""
        key = self._account(account) or "*"
        delay = None if for_s is None else _non_negative(for_s, "for_s")
        self._hub.faults.muted.add(key)
        self._cancel_unmute(key)
        if delay is not None:
            handle = asyncio.get_running_loop().call_later(delay, self._auto_unmute, key)
            self._unmute_timers[key] = (handle, time.monotonic() + delay)

    def _auto_unmute(self, key: str) -> None:
        self._unmute_timers.pop(key, None)
        self._hub.end_mute(key)
        log.info("fault: mute of %s ended by itself; held events dropped", key)

    def _cancel_unmute(self, key: str | None) -> None:
        for k in list(self._unmute_timers) if key is None else [key]:
            entry = self._unmute_timers.pop(k, None)
            if entry is not None:
                entry[0].cancel()

    def unmute(self, account: str | None = None, deliver: bool = False) -> int:
        """Resume; events queued while mute are lost (default, like the real thing) or sent."""
        self._cancel_unmute(account)
        return self._hub.unmute(self._account(account), deliver)

    def refuse_auth(self, account: str | None = None, on: bool = True) -> None:
        """The stream answers `unauthorized` / "access key verification failed" to the
        account's (None = every account's) valid key and closes, while REST still accepts
        it. Connections already authenticated are left alone."""
        key = self._account(account) or "*"
        if on:
            self._hub.faults.refuse_auth.add(key)
        elif account is None:
            self._hub.faults.refuse_auth.clear()
        else:
            self._hub.faults.refuse_auth.discard(key)

    def set_stream_chaos(self, duplicate: float = 0.0, reorder: float = 0.0,
                         account: str | None = None, seed: int | None = None) -> int:
        """Persistent random chaos on trade updates (see `ops.sim.chaos`): each event is
        duplicated with probability `duplicate` (the copy after at least one other frame)
        and held back past the next event with probability `reorder` (never longer than
        0.5 s). 0/0 turns it off (held frames go out). Returns the RNG seed in use."""
        return self._hub.chaos.configure(duplicate, reorder, self._account(account),
                                         None if seed is None else int(seed))

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

    def refuse_next_orders(
        self, n: int = 1, status: int = 403, code: int | None = 40310100,
        message: str = PDT_MESSAGE, account: str | None = None, side: str | None = None,
        symbol: str | None = None, extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Refuse the next n matching orders at the REST level (nothing is created): POST
        /v2/orders and DELETE /v2/positions/{symbol} (also inside DELETE /v2/positions)
        answer `status` with `{"code": code, "message": message, **extra}` (section 5).
        The default is pattern-day-trading protection (403 40310100); e.g. status=401,
        code=40110000, message="request is not authorized" for a rejected key, or 403
        40310000 "insufficient qty available for order (...)". account/side/symbol narrow
        it (None = any); rules apply in the order armed. Returns the rule armed."""
        rule = OrderRefusal(int(n), int(status), None if code is None else int(code),
                            str(message), self._account(account),
                            None if side is None else str(side).lower(),
                            None if symbol is None else str(symbol), dict(extra or {}))
        self._engine.refuse_next.append(rule)
        return dict(vars(rule))

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

    def revoke_key(self, account: str, on: bool = True) -> None:
        """The account's API key is rejected from now on (a rotated or revoked key):
        REST answers 401 `request is not authorized`, stream authentication is refused.
        Connections already authenticated are left open (Alpaca documents nothing about
        them; the least convenient legal reading: the socket looks healthy)."""
        name = self._account(account)
        if name is None:
            raise ValueError("revoke_key needs an account")
        if on:
            self._engine.revoked.add(name)
        else:
            self._engine.revoked.discard(name)

    def set_rate_limit(self, per_minute: int) -> None:
        if int(per_minute) < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.rest.rate_limit_per_min = int(per_minute)
        self.rest._windows.clear()

    # -- broker events that change positions without a pipeline fill (ops.sim.corporate) ---
    def external_order(self, account: str, symbol: str, qty: Any, side: str = "buy",
                       client_order_id: str | None = None, type: str = "market",
                       limit_price: Any = None) -> dict[str, Any]:
        """An order "placed by hand" (not starting with the pipeline's "ops-" prefix),
        filled like any other; returns the order."""
        return corporate.external_order(self._engine, account, symbol, qty, side,
                                        client_order_id, type, limit_price)

    def split(self, symbol: str, ratio: Any) -> dict[str, Any]:
        """A forward ("2:1", 2) or reverse ("1:2", 0.5) split of `symbol`, effective now:
        positions x ratio (cost basis unchanged), prices re-based, a SPLIT activity per
        holder, the symbol's open orders canceled."""
        return corporate.split(self._engine, symbol, ratio)

    def expire_options(self, day: str | None = None) -> list[dict[str, Any]]:
        """Settle every held option expiring on or before `day` (default today): OTM ->
        OPEXP; ITM long -> OPEXC + OPTRD; ITM short -> OPASN + OPTRD."""
        return corporate.expire_options(self._engine, day)

    def exercise(self, account: str, contract: str, qty: Any = None) -> dict[str, Any]:
        """`account` exercises `qty` (default all) of its long `contract` now."""
        return corporate.exercise(self._engine, account, contract, qty)

    def assign(self, account: str, contract: str, qty: Any = None) -> dict[str, Any]:
        """`qty` (default all) of `account`'s short `contract` is assigned now."""
        return corporate.assign(self._engine, account, contract, qty)

    # -- clock and lifecycle ---------------------------------------------------------------
    def set_clock(self, mode: str) -> None:
        self._clock.set_mode(mode)
        self._engine.process()

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (state kept), stay down for down_s, start again on the same port."""
        await self._restart(_non_negative(down_s, "down_s"))

    def clear(self) -> None:
        """Lift every fault (queued muted events are dropped; frames held by stream chaos
        are sent: they are late, not lost)."""
        self._cancel_unmute(None)
        for key in list(self._droppers):
            self._stop_dropper(key)
        self._hub.faults.refuse_auth.clear()
        self._engine.revoked.clear()
        self._hub.chaos.off()
        self._hub.unmute(None, deliver=False)
        f = self._hub.faults
        for counters in (f.drop, f.duplicate, f.reorder, self._engine.reject_next):
            counters.clear()
        self._engine.refuse_next.clear()
        f.reorder_held.clear()
        f.latency_s = f.reap_delay_s = 0.0
        self.rest.hangs.clear()
        self.rest.fails.clear()
        self.rest.release()
        self.rest.latency_s = 0.0

    def state(self) -> dict[str, Any]:
        f = self._hub.faults
        now = time.monotonic()
        return {
            "clock": self._clock.mode,
            "revoked_keys": sorted(self._engine.revoked),
            "muted": sorted(f.muted),
            "drop_next": dict(f.drop), "duplicate_next": dict(f.duplicate),
            "reorder_next": dict(f.reorder),
            "reject_next_orders": dict(self._engine.reject_next),
            "refuse_next_orders": [dict(vars(r)) for r in self._engine.refuse_next],
            "stream_latency_s": f.latency_s, "reap_delay_s": f.reap_delay_s,
            "rest_latency_s": self.rest.latency_s,
            "rate_limit_per_min": self.rest.rate_limit_per_min,
            "hangs": [vars(r) for r in self.rest.hangs],
            "fails": [vars(r) for r in self.rest.fails],
            "hung_now": self.rest.hung_now,
            "streams": sorted(self._hub.conns),
            "refused_stream_connections": self._hub.refused_upgrades,
            "mute_for_s": {k: round(max(0.0, until - now), 3)
                           for k, (_, until) in self._unmute_timers.items()},
            "drop_every": {k: {"seconds": s, "mode": m}
                           for k, (_, s, m) in self._droppers.items()},
            "refuse_auth": sorted(f.refuse_auth),
            "refused_stream_auths": self._hub.refused_auths,
            "stream_chaos": self._hub.chaos.state(),
        }

    async def aclose(self) -> None:
        """Cancel the timed faults' tasks and timers (simulator shutdown)."""
        self._cancel_unmute(None)
        tasks = [entry[0] for entry in self._droppers.values()]
        self._droppers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._hub.chaos.close()


def _non_negative(value: float, name: str) -> float:
    v = float(value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return v
