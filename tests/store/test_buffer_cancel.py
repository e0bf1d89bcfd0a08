"""The outage buffer when a writer gives up: a write cancelled while it waits for another
process's lock (a heartbeat's timeout during someone's slow fsync) must not leave this
connection holding the host-wide write lock, nor break its next write.

The other process is a plain sqlite3 connection on the same file holding BEGIN IMMEDIATE.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ops.store.buffer import Buffer
from ops.store.ops import LatestEntry
from tests.support import eventually


def _beat(n: int) -> list[LatestEntry]:
    return [LatestEntry("heartbeat", "large-dispatcher", datetime.now(UTC).isoformat(),
                        {"process": "large-dispatcher", "n": n})]


@pytest.fixture
def other(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection to the buffer file (it never waits for a lock)."""
    conn = sqlite3.connect(tmp_path / "buffer.sqlite3", isolation_level=None, timeout=0)
    try:
        yield conn
    finally:
        conn.close()


def _can_take_write_lock(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc), exc
        return False
    conn.execute("ROLLBACK")
    return True


async def test_a_cancelled_write_gives_the_lock_back_and_the_next_write_works(
    tmp_path: Path, other: sqlite3.Connection,
) -> None:
    buf = await Buffer.open(tmp_path / "buffer.sqlite3")
    try:
        await buf.put_latest(_beat(0))
        other.execute("BEGIN IMMEDIATE")  # another process, in a slow commit
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(buf.put_latest(_beat(1)), 0.3)
        assert time.monotonic() - t0 < 2.0, "the caller's timeout was not honoured"
        other.execute("COMMIT")

        async def landed() -> bool:
            return [r.payload["n"] for r in await buf.latest("heartbeat")] == [1]

        # The abandoned write ends by itself (here: it commits) and gives the lock back.
        await eventually(landed, "the abandoned write committed", timeout_s=10)
        assert _can_take_write_lock(other)
        await buf.put_latest(_beat(2))  # not "cannot start a transaction within a transaction"
        assert [r.payload["n"] for r in await buf.latest("heartbeat")] == [2]
        assert _can_take_write_lock(other)
    finally:
        await buf.close()


async def test_a_cancelled_write_that_fails_is_logged_not_lost_in_silence(
    tmp_path: Path, other: sqlite3.Connection, caplog: pytest.LogCaptureFixture,
) -> None:
    buf = await Buffer.open(tmp_path / "buffer.sqlite3")
    try:
        await buf.put_latest(_beat(0))
        other.execute("BEGIN IMMEDIATE")
        await buf._conn.execute("PRAGMA busy_timeout = 500")  # gives up waiting soon
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(buf.put_latest(_beat(1)), 0.1)
        await eventually(lambda: "a write whose caller had given up failed" in caplog.text,
                         "the abandoned write's failure logged", timeout_s=10)
        other.execute("ROLLBACK")
        await buf.put_latest(_beat(2))
        assert [r.payload["n"] for r in await buf.latest("heartbeat")] == [2]
    finally:
        await buf.close()
