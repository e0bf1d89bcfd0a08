"""MarketClockCache: cached broker clock, flips without a fetch, keeps the last known value."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from ops.core.models import Clock
from ops.runtime.ticker import MarketClockCache, MarketClockUnavailable, Ticker, clock_is_open
from tests.support import eventually
from tests.ticker.ledger import MemoryLedger
from tests.ticker.vclock import VirtualWall, on_virtual_clock

T = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # a Monday, 10:00 New York


class Broker:
    """A controllable clock source with a controllable 'now' for the cache."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.fetches = 0
        self.fail = False
        self.now = clock.timestamp
        self.mono = 0.0

    async def fetch(self) -> Clock:
        self.fetches += 1
        if self.fail:
            raise ConnectionError("clock endpoint down")
        return self.clock

    def cache(self, refresh_s: float = 60.0) -> MarketClockCache:
        return MarketClockCache(self.fetch, refresh_s, now=lambda: self.now,
                                monotonic=lambda: self.mono)


OPEN = Clock(T, True, next_open=T + timedelta(days=1), next_close=T + timedelta(hours=6))
CLOSED = Clock(T, False, next_open=T + timedelta(minutes=10),
               next_close=T + timedelta(hours=6, minutes=10))


def test_clock_is_open_flips_at_the_announced_times() -> None:
    assert clock_is_open(OPEN, T)
    assert not clock_is_open(OPEN, OPEN.next_close)
    assert not clock_is_open(CLOSED, T)
    assert clock_is_open(CLOSED, CLOSED.next_open)
    assert not clock_is_open(CLOSED, CLOSED.next_close)


async def test_flips_without_fetch_and_refreshes_on_schedule() -> None:
    b = Broker(OPEN)
    cache = b.cache(refresh_s=60)
    assert await cache.is_open() is True
    b.now = OPEN.next_close  # hours later on the wall clock, but no refresh due yet
    b.mono = 59
    assert await cache.is_open() is False
    assert b.fetches == 1
    b.mono = 60
    await cache.is_open()
    assert b.fetches == 2


async def test_closed_market_opens_at_next_open_without_fetch() -> None:
    b = Broker(CLOSED)
    cache = b.cache()
    assert await cache.is_open() is False
    b.now = CLOSED.next_open
    assert await cache.is_open() is True
    assert b.fetches == 1


async def test_fetch_failure_keeps_last_known_clock(caplog: pytest.LogCaptureFixture) -> None:
    b = Broker(OPEN)
    cache = b.cache(refresh_s=10)
    assert await cache.is_open() is True
    b.fail = True
    b.mono = 10
    with caplog.at_level(logging.WARNING, logger="ops.runtime.ticker"):
        assert await cache.is_open() is True
    assert "using last known clock from 2026-03-02T15:00:00+00:00" in caplog.text
    assert cache.fetch_failures == 1
    b.mono = 15  # no retry storm: the next attempt waits for the next refresh
    await cache.is_open()
    assert b.fetches == 2


@on_virtual_clock
async def test_no_clock_ever_is_an_error_not_a_closed_market() -> None:
    b = Broker(OPEN)
    b.fail = True
    cache = b.cache()
    with pytest.raises(MarketClockUnavailable, match="market hours unknown"):
        await cache.is_open()
    ledger = MemoryLedger()
    ticker = Ticker("t", 0.02, lambda s: asyncio.sleep(0), process="p", account="a",
                    role="r", ledger=ledger, market_gate=b.cache().is_open, clock=VirtualWall())
    task = asyncio.create_task(ticker.run())
    await eventually(lambda: ledger.finals(), "a final record")
    ticker.request_stop()
    await asyncio.wait_for(task, 10)
    rec = ledger.finals()[0]
    assert rec.outcome == "error"
    assert rec.error == (
        "gate: MarketClockUnavailable: broker clock never fetched; market hours unknown"
    )


def test_refresh_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refresh_s must be > 0"):
        MarketClockCache(Broker(OPEN).fetch, 0)
