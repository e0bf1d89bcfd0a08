"""Replay: the drainer that moves the outage buffer's pending writes into Postgres.

A drainer task runs in every process that opens a Store; an exclusive `flock` on
`<buffer>.drain.lock` (`DrainLock`) makes exactly one of them replay at a time (the kernel
releases it if that process dies). It replays pending rows in seq order, a batch per
Postgres transaction, and deletes them from SQLite after the commit; a crash between
commit and delete replays the batch again, which the natural keys turn into a no-op. A
batch Postgres refuses for one row's data is replayed row by row and the bad row
quarantined. How far replay got is also recorded in Postgres (`buffer_replay`, same
transaction), for a buffer on a full disk that cannot delete what it replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.store.buffer import PendingRow, decode_ops
from ops.store.core import StoreCore
from ops.store.errors import BufferUnwritable
from ops.store.ops import Step, plan, run_steps
from ops.store.postgres import is_outage

# The Store's log lines keep the one logger name they always had (see ops/store/core.py).
log = logging.getLogger("ops.store.store")


class DrainLock:
    """Host-wide "one drainer at a time": a non-blocking flock on a file beside the buffer."""

    def __init__(self, path: Path, fallback: Path | None = None):
        self.path = path
        # Locked instead when `path` cannot be created (read-only file system): every
        # process of the host sees the same missing file, so they all agree on it.
        self.fallback = fallback
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        # Unbuffered: a pid left in a Python buffer would fail again at close on a full disk.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # open while held
        except OSError:
            # Read-only file system: flock works on a read-only descriptor just as well.
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                if self.fallback is None:
                    raise
                fd = os.open(self.fallback, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # The holder's pid, for operators (and tests) asking "who is draining?". Only a
        # hint: on a full or read-only disk it cannot be written, and draining (which only
        # reads the buffer) must go on all the same.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            log.debug("drain lock %s: pid not recorded: %s", self.path, exc)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _row_specific(exc: BaseException) -> bool:
    """Errors caused by one row's data (quarantine it), as opposed to a missing table or
    privilege (class 42 and the like: keep every row pending until someone fixes it)."""
    return isinstance(exc, (
        asyncpg.exceptions.DataError,  # class 22: bad value for a column
        asyncpg.exceptions.IntegrityConstraintViolationError,  # class 23
        ValueError, KeyError, TypeError,  # a payload our own code cannot read
    ))


class Replay(StoreCore):
    """The drainer part of `Store` (ops/store/store.py)."""

    _lock: DrainLock

    async def _caught_up(self) -> bool:
        """Whether Postgres holds every pending row of the buffer."""
        last = await self._buffer.last_seq()
        if last <= self._replayed_through:
            return True
        mark = await self._replay_mark(self._pool)
        self._replayed_through = max(self._replayed_through, mark)
        return last <= mark

    async def _has_marks(self, conn: asyncpg.Connection | asyncpg.Pool) -> bool:
        """Whether Postgres has the buffer_replay table (migration 0008). A database not
        migrated yet (`ops run` does not migrate) replays as before, just without marks."""
        if self._mark_table:
            return True
        self._mark_table = bool(await conn.fetchval(
            "SELECT to_regclass('buffer_replay') IS NOT NULL"))
        if not self._mark_table and not self._mark_warned:
            self._mark_warned = True
            log.warning("table buffer_replay missing (run `ops db migrate`): replay progress "
                        "is not shared; on a full buffer disk writes wait for it to clear")
        return self._mark_table

    async def _replay_mark(self, conn: asyncpg.Connection | asyncpg.Pool) -> int:
        """How far Postgres says this buffer file was replayed (0: unknown)."""
        if self._buffer.buffer_id is None or not await self._has_marks(conn):
            return 0
        mark = await conn.fetchval(
            "SELECT through_seq FROM buffer_replay WHERE buffer_id = $1", self._buffer.buffer_id)
        return 0 if mark is None else int(mark)

    async def _drain_loop(self) -> None:
        delays = self.settings.drain_backoff.delays()
        wait_s = self.settings.drain_poll_s
        outage = False
        last_error: str | None = None
        while not self._stop.is_set():
            # During an outage, new buffered writes must not cut the back-off short.
            event = self._stop if outage else self._wake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=wait_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                await self._reopen_if_read_only()
                outcome = await self.drain_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not an outage and not one bad row (e.g. the schema is missing): keep the
                # rows, say why (once per distinct error, not every retry), back off, retry.
                text = f"{type(exc).__name__}: {exc}"
                if text != last_error:
                    log.exception("buffer replay failed; rows stay pending, retrying")
                last_error = text
                outcome = "outage"
            else:
                last_error = None
            outage = outcome == "outage"
            if outage:
                wait_s = next(delays)
            else:
                delays = self.settings.drain_backoff.delays()
                wait_s = self.settings.drain_poll_s

    async def drain_once(self) -> Literal["empty", "busy", "drained", "outage"]:
        """Replay everything pending if this process wins the drain lock."""
        if self._draining.locked():
            return "busy"  # another task of this process is draining right now
        async with self._draining:
            return await self._drain_locked()

    async def _drain_locked(self) -> Literal["empty", "busy", "drained", "outage"]:
        if not await self._buffer.has_pending():
            return "empty"
        if not self._lock.try_acquire():
            return "busy"
        try:
            # Probe with a connection first: during an outage, nothing is read or decoded.
            async with self._pool.acquire() as conn:
                return await self._drain_with(conn)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._note_outage(exc)
            return "outage"
        finally:
            self._lock.release()

    async def _drain_with(self, conn: asyncpg.Connection) -> Literal["drained"]:
        # Rows up to the mark are in Postgres already (their delete failed, or this
        # process crashed before it): drop them if the disk allows, never replay them again.
        self._reachable = True
        mark = max(self._replayed_through, await self._replay_mark(conn))
        if mark:
            await self._forget_through(mark)
        batch = await self._fetch_ops(after_seq=mark)
        # Pipelined: while Postgres applies batch k, this process reads and decodes batch
        # k+1 and deletes batch k-1 from the buffer (both off the critical path).
        forgetting: asyncio.Task[None] | None = None
        try:
            while batch[0] and not self._stop.is_set():
                rows, steps = batch
                upcoming = asyncio.create_task(self._fetch_ops(after_seq=rows[-1].seq))
                try:
                    replayed = await self._replay(conn, rows, steps)
                    if forgetting is not None:
                        done, forgetting = forgetting, None
                        await done
                except BaseException:
                    upcoming.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await upcoming
                    raise
                self._reachable = True
                forgetting = (asyncio.create_task(self._forget_through(replayed))
                              if replayed is not None else None)
                batch = await upcoming
        finally:
            if forgetting is not None:
                await forgetting
        return "drained"

    async def _fetch_ops(self, after_seq: int) -> tuple[list[PendingRow], list[Step] | None]:
        """The next replay batch, decoded and encoded for Postgres; steps None when a row
        cannot be read (damaged JSON, unknown kind): `_replay` then isolates it."""
        rows = await self._buffer.fetch(self.settings.drain_batch, after_seq=after_seq)
        try:
            return rows, plan(decode_ops(rows))
        except Exception as exc:
            if not _row_specific(exc):
                raise
            return rows, None

    async def _replay(
        self, conn: asyncpg.Connection, rows: Sequence[PendingRow],
        steps: Sequence[Step] | None,
    ) -> int | None:
        """Apply one batch; returns the seq through which the caller should now delete
        (None: already deleted row by row)."""
        if steps is None:
            log.error("replay batch of %d rows has a row that cannot be read; isolating it",
                      len(rows))
            await self._replay_one_by_one(conn, rows)
            return None
        try:
            await self._apply_marked(conn, steps, rows[-1].seq)
        except Exception as exc:
            if is_outage(exc) or not _row_specific(exc):
                raise  # the drain loop backs off; the rows stay pending
            log.error("replay batch of %d rows refused (%s: %s); isolating the bad row",
                      len(rows), type(exc).__name__, exc)
            await self._replay_one_by_one(conn, rows)
            return None
        # Committed; a crash before the delete replays this batch again, harmlessly (the
        # replay mark, committed with it, even skips it).
        self.replayed += len(rows)
        return rows[-1].seq

    async def _apply_marked(
        self, conn: asyncpg.Connection, steps: Sequence[Step], through_seq: int
    ) -> None:
        """Apply replayed ops and advance this buffer's replay mark, in one transaction."""
        async with conn.transaction():
            await run_steps(conn, steps)
            if self._buffer.buffer_id is not None and self._mark_table:
                await conn.execute(
                    "INSERT INTO buffer_replay (buffer_id, through_seq) VALUES ($1, $2) "
                    "ON CONFLICT (buffer_id) DO UPDATE SET updated_at = now(), "
                    "through_seq = greatest(buffer_replay.through_seq, excluded.through_seq)",
                    self._buffer.buffer_id, through_seq)

    async def _forget_through(self, seq: int) -> None:
        """Delete replayed rows; on a full/read-only disk keep them and remember the seq."""
        self._replayed_through = max(self._replayed_through, seq)
        try:
            await self._buffer.delete_through(seq)
        except BufferUnwritable as exc:
            self._note_unwritable(exc)
            return
        self._note_writable()

    async def _replay_one_by_one(
        self, conn: asyncpg.Connection, rows: Sequence[PendingRow]
    ) -> None:
        """Apply rows singly; quarantine those Postgres refuses for a non-outage reason."""
        for row in rows:
            try:
                await self._apply_marked(conn, plan([row.op()]), row.seq)
            except Exception as exc:
                if is_outage(exc) or not _row_specific(exc):
                    raise
                error = f"{type(exc).__name__}: {exc}"
                log.error("quarantining buffered %s row seq=%d: %s", row.kind, row.seq, error)
                await self._buffer.quarantine(row, error)
                continue
            self.replayed += 1
            await self._forget_through(row.seq)

    async def wait_drained(self, within_s: float) -> bool:
        """Poll until the buffer holds no pending rows (True) or `within_s` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while await self._buffer.has_pending():
            if loop.time() >= deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.05)
        return True
