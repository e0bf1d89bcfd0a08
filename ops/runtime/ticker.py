"""The internal scheduler every periodic role uses, its run ledger records and heartbeats.

What lives here:
- `Ticker`: fixed-rate slots aligned to wall-clock multiples of the interval, run on the
  event loop's monotonic clock; one run at a time; every slot outcome goes to the run
  ledger (`RunLedger.record_run`).
- `MarketClockCache`: a cached broker clock usable as a ticker's `market_gate`.
- `HeartbeatTask`: a separate task that proves the event loop itself is alive.

What does not: storage (the store implements `RunLedger` / `HeartbeatSink`), process
lifecycle (`ops.runtime.daemon`), and the decisions the jobs make.

Timing model. At start the ticker measures once `offset = wall - loop.time()`. Slot `n`
has the wall time `n * interval` (integer microseconds, so slot times are exact
multiples) and the monotonic deadline `n * interval - offset`: deadline k is always
t0 + k*interval computed afresh, never by adding intervals, so error cannot accumulate.

Overruns. The job runs inside the ticker's own task, so two runs of one job can never
overlap. When a run ends after later deadlines have passed, the ticker runs the most
recent due slot at once (late by less than one interval) and skips the older ones; the
run's record carries `skipped_before` = how many slots were skipped just before it.

Why skipped slots are not written as rows of their own: a slot id is a pure function of
(account, role, slot time) on a grid aligned to the wall clock, so a reader can list the
slots a role should have run and see every missing one as a hole, whatever the cause
(overrun, crash, restart, Postgres outage, host down). `skipped_before` then tells
"skipped by a live process because the previous run overran" apart from "nobody was
running"; a row per skipped slot would only add the former, and an hour-long overrun of a
1 s ticker would write 3,600 rows that say nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ops.core.models import Clock, Heartbeat, RunRecord

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ERROR_MAX = 500

OUTCOME_RUNNING = "running"
OUTCOME_OK = "ok"
OUTCOME_ERROR = "error"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_IDLE = "idle-market-closed"
OUTCOME_PAUSED = "paused"

CounterValue = int | float | str


class RunLedger(Protocol):
    """Where run records go (the store implements it; writes are upserts by slot_id)."""

    async def record_run(self, rec: RunRecord) -> None: ...


class HeartbeatSink(Protocol):
    """Where heartbeats go (the store implements it)."""

    async def heartbeat(self, hb: Heartbeat) -> None: ...


class TickerClock(Protocol):
    """The wall clock a ticker aligns its slots to. Deadlines always use `loop.time()`."""

    def wall(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    """`time.time()`: the default wall clock."""

    def wall(self) -> float:
        return time.time()


@dataclass(frozen=True, slots=True)
class Slot:
    """What a job is told about the run it is doing."""

    slot_id: str
    slot_time: datetime
    scheduled_at: datetime
    manual: bool = False
    skipped_before: int = 0


#: Runs that did work (ok or failed) kept for the failure share (ops.core.health).
RECENT_RUNS = 20


@dataclass(frozen=True, slots=True)
class TickerStats:
    """Progress counters for heartbeats and the dashboard."""

    runs_ok: int = 0
    runs_error: int = 0  # outcome "error" or "timeout"
    runs_idle: int = 0  # outcome "idle-market-closed" or "paused"
    runs_skipped: int = 0  # slots skipped because a run overran
    runs_manual: int = 0
    last_started: datetime | None = None
    last_finished: datetime | None = None
    last_outcome: str | None = None
    last_lateness_s: float | None = None
    in_flight: bool = False
    # Outcome health (ops.core.health): failed runs in a row (ok resets it; idle and paused
    # runs do no work and leave it), the last RECENT_RUNS runs that did work and how many
    # of them failed, and the last failure's text.
    errors_in_row: int = 0
    recent: tuple[bool, ...] = ()  # True = failed, oldest first
    last_error: str | None = None

    def counters(self, prefix: str) -> dict[str, CounterValue]:
        """Flat `{prefix.key: value}` for `Heartbeat.counters` (datetimes as ISO text)."""
        out: dict[str, CounterValue] = {
            "runs_ok": self.runs_ok,
            "runs_error": self.runs_error,
            "runs_idle": self.runs_idle,
            "runs_skipped": self.runs_skipped,
            "runs_manual": self.runs_manual,
            "last_started": self.last_started.isoformat() if self.last_started else "",
            "last_finished": self.last_finished.isoformat() if self.last_finished else "",
            "last_outcome": self.last_outcome or "",
            "last_lateness_s": -1.0 if self.last_lateness_s is None else self.last_lateness_s,
            "in_flight": int(self.in_flight),
            "errors_in_row": self.errors_in_row,
            "recent_runs": len(self.recent),
            "recent_errors": sum(self.recent),
            "last_error": (self.last_error or "")[:300],
        }
        return {f"{prefix}.{k}": v for k, v in out.items()}


def _validate_interval(interval_s: float) -> int:
    if not (isinstance(interval_s, int | float) and math.isfinite(interval_s)):
        raise ValueError(f"ticker interval_s must be a finite number, got {interval_s!r}")
    interval_us = round(interval_s * 1_000_000)
    if interval_us < 1000:
        raise ValueError(f"ticker interval_s must be at least 0.001 s, got {interval_s!r}")
    return interval_us


def _describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_MAX else text[: _ERROR_MAX - 1] + "…"


def _wall_dt(wall_s: float) -> datetime:
    return datetime.fromtimestamp(wall_s, UTC)


class Ticker:
    """Runs `job` once per slot of a fixed-rate grid aligned to the wall clock.

    Use it as a daemon service: `await ticker.run()` until `request_stop()`. The job gets
    the `Slot` it runs for. Gates are checked before each scheduled run, in this order:
    `paused()` true -> outcome "paused"; `market_gate()` false -> "idle-market-closed";
    a gate that raises -> "error" (the job does not run in any of these cases).
    """

    def __init__(
        self,
        name: str,
        interval_s: float,
        job: Callable[[Slot], Awaitable[None]],
        *,
        process: str,
        account: str | None,
        role: str,
        ledger: RunLedger,
        market_gate: Callable[[], Awaitable[bool]] | None = None,
        paused: Callable[[], Awaitable[bool]] | None = None,
        job_timeout_s: float | None = None,
        ledger_timeout_s: float = 10.0,
        clock: TickerClock | None = None,
    ) -> None:
        if job_timeout_s is not None and not job_timeout_s > 0:
            raise ValueError(f"ticker {name}: job_timeout_s must be > 0, got {job_timeout_s!r}")
        self.name = name
        self._interval_us = _validate_interval(interval_s)
        self._job = job
        self.process = process
        self.account = account
        self.role = role
        self._ledger = ledger
        self._market_gate = market_gate
        self._paused = paused
        self._job_timeout_s = job_timeout_s
        self._ledger_timeout_s = ledger_timeout_s
        self._ledger_failing = False  # a run of failed ledger writes: traceback logged once
        self._clock: TickerClock = clock or SystemClock()
        self._stats = TickerStats()
        self._offset: float | None = None  # wall - loop.time(), measured once in run()
        self._last_us: int | None = None  # slots at or before this wall time are consumed
        self._wake = asyncio.Event()
        self._stop_requested = False
        self._manual_pending = False
        self._started = False

    # -- public control ---------------------------------------------------------------

    @property
    def interval_s(self) -> float:
        return self._interval_us / 1_000_000

    def stats(self) -> TickerStats:
        return self._stats

    def counters(self) -> dict[str, CounterValue]:
        return self._stats.counters(self.name)

    def set_interval(self, interval_s: float) -> None:
        """Hot reload: the new interval applies from the next slot, on the new grid."""
        new_us = _validate_interval(interval_s)
        if new_us == self._interval_us:
            return
        log.info("ticker %s: interval %.3fs -> %.3fs", self.name, self.interval_s, new_us / 1e6)
        self._interval_us = new_us
        if self._offset is not None:
            # Only slots of the new grid after this moment count: a shorter interval must
            # not report the old grid's gap as skipped slots.
            now_us = math.floor(self._now_wall_us(asyncio.get_running_loop().time()))
            self._last_us = max(self._last_us or now_us, now_us)
        self._wake.set()

    def trigger(self) -> bool:
        """Ask for an immediate run ("run now"); False if a run is in flight or queued.

        The manual run gets its own slot id (suffix ":manual") and leaves the fixed-rate
        grid untouched: a slot that falls due meanwhile runs right after it, late.
        """
        if self._stats.in_flight or self._manual_pending or self._stop_requested:
            log.info("ticker %s: run-now ignored (a run is in flight or queued)", self.name)
            return False
        self._manual_pending = True
        self._wake.set()
        return True

    def request_stop(self) -> None:
        """Stop after the run in flight (if any) ends; `run()` then returns."""
        self._stop_requested = True
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        if self._started:
            raise RuntimeError(f"ticker {self.name} is already running")
        self._started = True
        loop = asyncio.get_running_loop()
        self._offset = self._clock.wall() - loop.time()
        if self._last_us is None:
            # The first slot is the first grid point at or after now.
            self._last_us = math.ceil(self._now_wall_us(loop.time())) - 1
        log.info("ticker %s: started, interval %.3fs", self.name, self.interval_s)
        while not self._stop_requested:
            if self._manual_pending:
                self._manual_pending = False
                await self._run_manual(loop.time())
                continue
            now = loop.time()
            n, skipped = self._plan(now)
            deadline = self._deadline(n)
            if deadline > now:
                await self._wait_until(deadline)
                continue  # re-plan: woken by the deadline, a trigger, a reload or stop
            await self._run_scheduled(n, skipped, deadline, now)
        log.info("ticker %s: stopped", self.name)

    def _now_wall_us(self, mono: float) -> float:
        assert self._offset is not None
        return (mono + self._offset) * 1_000_000

    def _deadline(self, n: int) -> float:
        assert self._offset is not None
        return n * self._interval_us / 1_000_000 - self._offset

    def _plan(self, now: float) -> tuple[int, int]:
        """The slot to run next and how many slots before it are skipped."""
        assert self._last_us is not None
        step = self._interval_us
        candidate = self._last_us // step + 1
        if self._deadline(candidate) > now:
            return candidate, 0
        due = max(candidate, math.floor(self._now_wall_us(now) / step))
        while self._deadline(due) > now and due > candidate:  # float rounding guard
            due -= 1
        return due, due - candidate

    async def _wait_until(self, deadline: float) -> None:
        self._wake.clear()
        try:
            async with asyncio.timeout_at(deadline):
                await self._wake.wait()
        except TimeoutError:
            pass

    # -- one run ----------------------------------------------------------------------

    async def _run_scheduled(self, n: int, skipped: int, deadline: float, now: float) -> None:
        slot_us = n * self._interval_us
        self._last_us = max(self._last_us or slot_us, slot_us)
        slot_time = _EPOCH + timedelta(microseconds=slot_us)
        if skipped:
            log.warning(
                "ticker %s: previous run overran, skipped %d slot(s) before %s",
                self.name, skipped, slot_time.isoformat(),
            )
            self._stats = replace(self._stats, runs_skipped=self._stats.runs_skipped + skipped)
        slot = Slot(
            slot_id=RunRecord.make_slot_id(self.account, self.role, slot_time),
            slot_time=slot_time,
            scheduled_at=slot_time,
            skipped_before=skipped,
        )
        idle = await self._check_gates(slot, deadline)
        if idle is not None:
            await self._write(idle)
            return
        await self._execute(slot, deadline)

    async def _run_manual(self, now: float) -> None:
        wall = _wall_dt(now + (self._offset or 0.0))
        slot = Slot(
            slot_id=RunRecord.make_slot_id(self.account, self.role, wall) + ":manual",
            slot_time=wall,
            scheduled_at=wall,
            manual=True,
        )
        self._stats = replace(self._stats, runs_manual=self._stats.runs_manual + 1)
        log.info("ticker %s: manual run %s", self.name, slot.slot_id)
        await self._execute(slot, now)

    async def _check_gates(self, slot: Slot, deadline: float) -> RunRecord | None:
        """A final record when a gate says not to run, else None."""
        outcome: str | None = None
        error: str | None = None
        try:
            if self._paused is not None and await self._paused():
                outcome = OUTCOME_PAUSED
            elif self._market_gate is not None and not await self._market_gate():
                outcome = OUTCOME_IDLE
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("ticker %s: gate check failed for %s", self.name, slot.slot_id)
            outcome, error = OUTCOME_ERROR, "gate: " + _describe_error(exc)
        if outcome is None:
            return None
        now = asyncio.get_running_loop().time()
        rec = self._record(slot, deadline, None, now, outcome, error)
        self._account_outcome(rec)
        return rec

    async def _execute(self, slot: Slot, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._stats = replace(
            self._stats,
            in_flight=True,
            last_started=self._to_dt(started),
            last_lateness_s=max(0.0, started - deadline),  # timers may fire a hair early
        )
        await self._write(self._record(slot, deadline, started, None, OUTCOME_RUNNING, None))
        outcome, error = OUTCOME_OK, None
        try:
            async with asyncio.timeout(self._job_timeout_s) as cm:
                await self._job(slot)
        except asyncio.CancelledError:
            # Shutdown past the grace period: leave an honest final record, then propagate.
            rec = self._record(
                slot, deadline, started, loop.time(), OUTCOME_ERROR,
                "CancelledError: job cancelled (shutdown)",
            )
            self._account_outcome(rec)
            try:
                await asyncio.wait_for(asyncio.shield(self._ledger.record_run(rec)), 1.0)
            except Exception:
                log.exception("ticker %s: could not record cancelled run", self.name)
            raise
        except TimeoutError as exc:
            if cm.expired():
                outcome = OUTCOME_TIMEOUT
                error = f"job exceeded job_timeout_s={self._job_timeout_s}"
                log.error("ticker %s: %s timed out after %ss", self.name, slot.slot_id,
                          self._job_timeout_s)
            else:
                outcome, error = OUTCOME_ERROR, _describe_error(exc)
                log.exception("ticker %s: job failed in %s", self.name, slot.slot_id)
        except Exception as exc:
            outcome, error = OUTCOME_ERROR, _describe_error(exc)
            log.exception("ticker %s: job failed in %s", self.name, slot.slot_id)
        rec = self._record(slot, deadline, started, loop.time(), outcome, error)
        self._account_outcome(rec)
        await self._write(rec)

    def _account_outcome(self, rec: RunRecord) -> None:
        s = self._stats
        failed = rec.outcome in (OUTCOME_ERROR, OUTCOME_TIMEOUT)
        worked = failed or rec.outcome == OUTCOME_OK
        self._stats = replace(
            s,
            in_flight=False,
            last_finished=rec.finished_at,
            last_outcome=rec.outcome,
            runs_ok=s.runs_ok + (rec.outcome == OUTCOME_OK),
            runs_error=s.runs_error + failed,
            runs_idle=s.runs_idle + (rec.outcome in (OUTCOME_IDLE, OUTCOME_PAUSED)),
            errors_in_row=(s.errors_in_row + 1 if failed
                           else 0 if worked else s.errors_in_row),
            recent=(s.recent + (failed,))[-RECENT_RUNS:] if worked else s.recent,
            last_error=rec.error if failed else s.last_error,
        )

    def _to_dt(self, mono: float) -> datetime:
        return _wall_dt(mono + (self._offset or 0.0))

    def _record(
        self,
        slot: Slot,
        deadline: float,
        started: float | None,
        finished: float | None,
        outcome: str,
        error: str | None,
    ) -> RunRecord:
        begin = started if started is not None else finished
        lateness = 0.0 if begin is None else max(0.0, begin - deadline)
        return RunRecord(
            slot_id=slot.slot_id,
            process=self.process,
            account=self.account,
            role=self.role,
            slot_time=slot.slot_time,
            scheduled_at=slot.scheduled_at,
            started_at=None if started is None else self._to_dt(started),
            finished_at=None if finished is None else self._to_dt(finished),
            outcome=outcome,
            lateness_s=lateness,
            skipped_before=slot.skipped_before,
            error=error,
        )

    async def _write(self, rec: RunRecord) -> None:
        """Ledger write that can never stop the schedule (the store buffers on its side)."""
        try:
            async with asyncio.timeout(self._ledger_timeout_s):
                await self._ledger.record_run(rec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log_write_failure(self._ledger_failing, exc,
                               "ticker %s: run ledger write failed for %s (%s); schedule "
                               "goes on", self.name, rec.slot_id, rec.outcome)
            self._ledger_failing = True
        else:
            if self._ledger_failing:
                log.info("ticker %s: run ledger writes work again", self.name)
            self._ledger_failing = False


def _log_write_failure(again: bool, exc: BaseException, msg: str, *args: object) -> None:
    """A failed ledger/heartbeat write. During a long fault every write fails the same way:
    the first failure of a run gets the traceback, the rest (`again`) one line each."""
    log.log(logging.WARNING if again else logging.ERROR, msg + ": %s: %s", *args,
            type(exc).__name__, exc, exc_info=not again)


class MarketClockUnavailable(RuntimeError):
    """The broker clock was never fetched successfully, so market hours are unknown."""


def clock_is_open(clock: Clock, now: datetime) -> bool:
    """Whether the market is open at `now`, judged from an older clock snapshot.

    An open market closes at `next_close`; a closed one opens at `next_open` and (per the
    broker) closes again at `next_close`, which is then the close of that next session.
    """
    if clock.is_open:
        return now < clock.next_close
    return clock.next_open <= now < clock.next_close


class MarketClockCache:
    """Caches the broker clock; `is_open()` is a ready-made `market_gate`.

    The clock is refetched every `refresh_s`; in between, `next_open`/`next_close` flip
    the answer without a fetch. A failed fetch keeps the last known clock (logged as
    such); with no clock ever fetched, `is_open()` raises `MarketClockUnavailable`, which
    the ticker records as an error rather than pretending the market is closed.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Clock]],
        refresh_s: float = 60.0,
        *,
        now: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not refresh_s > 0:
            raise ValueError(f"MarketClockCache refresh_s must be > 0, got {refresh_s!r}")
        self._fetch = fetch
        self._refresh_s = refresh_s
        self._now = now or (lambda: datetime.now(UTC))
        self._monotonic = monotonic
        self._clock: Clock | None = None
        self._fetched_mono: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_failures = 0

    @property
    def clock(self) -> Clock | None:
        return self._clock

    async def is_open(self) -> bool:
        async with self._lock:
            due = (
                self._fetched_mono is None
                or self._monotonic() - self._fetched_mono >= self._refresh_s
            )
            if due:
                await self._refresh()
        if self._clock is None:
            raise MarketClockUnavailable("broker clock never fetched; market hours unknown")
        return clock_is_open(self._clock, self._now())

    async def _refresh(self) -> None:
        try:
            self._clock = await self._fetch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fetch_failures += 1
            if self._clock is None:
                log.error("broker clock fetch failed and no clock known yet: %s",
                          _describe_error(exc))
            else:
                log.warning(
                    "broker clock fetch failed (%s); using last known clock from %s",
                    _describe_error(exc), self._clock.timestamp.isoformat(),
                )
            # Try again at the next refresh, not on every call: a down broker API must
            # not be hammered by every ticker slot.
        self._fetched_mono = self._monotonic()


class HeartbeatTask:
    """Writes a `Heartbeat` every `interval_s`, with progress counters, until stopped.

    It runs in its own task, so it keeps beating while a job hangs: the heartbeat proves
    the loop is alive; the counters (and the run ledger) show whether work completes.
    Deadlines are fixed-rate on loop time, like the ticker's; a failing or slow sink or
    counters callable is logged and the next beat still happens.
    """

    def __init__(
        self,
        process: str,
        account: str | None,
        role: str,
        sink: HeartbeatSink,
        interval_s: float,
        counters: Callable[[], Mapping[str, CounterValue]] | None = None,
        *,
        sink_timeout_s: float | None = None,
    ) -> None:
        self._interval_s = _validate_interval(interval_s) / 1_000_000
        self.name = f"heartbeat:{process}"
        self.process = process
        self.account = account
        self.role = role
        self._sink = sink
        self._counters = counters or dict
        self._sink_timeout_s = sink_timeout_s if sink_timeout_s is not None else self._interval_s
        self._stop = asyncio.Event()
        self.started_at = datetime.now(UTC)
        self.beats = 0
        self.failures = 0
        self._failing = False  # the previous beat's write failed too

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        while not self._stop.is_set():
            await self.beat()
            # Next deadline strictly in the future; a stalled loop skips beats, not drifts.
            k = max(k + 1, math.floor((loop.time() - t0) / self._interval_s) + 1)
            try:
                async with asyncio.timeout_at(t0 + k * self._interval_s):
                    await self._stop.wait()
            except TimeoutError:
                pass

    async def beat(self) -> None:
        """Write one heartbeat now (failures are logged, never raised)."""
        try:
            counters = dict(self._counters())
        except Exception as exc:
            log.exception("heartbeat %s: counters failed", self.process)
            counters = {"counters_error": _describe_error(exc)}
        hb = Heartbeat(
            process=self.process,
            account=self.account,
            role=self.role,
            pid=os.getpid(),
            ts=datetime.now(UTC),
            started_at=self.started_at,
            counters=counters,
        )
        try:
            async with asyncio.timeout(self._sink_timeout_s):
                await self._sink.heartbeat(hb)
            self.beats += 1
            if self._failing:
                log.info("heartbeat %s: sink writes work again", self.process)
            self._failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            _log_write_failure(self._failing, exc,
                               "heartbeat %s: sink write failed; will beat again", self.process)
            self._failing = True
