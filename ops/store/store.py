"""`Store`: the one API for every write that must survive, and the reads roles need.

Writes are `Op`s (ops/store/ops.py). `write_many` applies them to Postgres in one
transaction; when Postgres is away (`is_outage`) they go to the SQLite buffer instead.
Ordering rule: while the buffer holds pending rows (from any process on the host), new
writes go to the buffer too, so a later write never overtakes an earlier buffered one.

A drainer task runs in every process that opens a Store; an exclusive `flock` on
`<buffer>.drain.lock` makes exactly one of them replay at a time (the kernel releases it if
that process dies). It replays pending rows in seq order, a batch per Postgres
transaction, and deletes them from SQLite after the commit. A crash between commit and
delete replays the batch again, which the natural keys turn into a no-op: exactly once.

Full or read-only disk (the buffer raises `BufferUnwritable`):
- Postgres up, nothing pending: writes go to Postgres as always; `probe_buffer()` (run by
  the watchdog, see ops/store/bufferwatch.py) tells that the safety net is gone.
- Postgres down: the write is stored nowhere, so it raises `StorageUnavailable` (the
  outage type callers catch: they keep the write and retry) and the process logs it loudly.
- Rows pending: the drainer still replays them (reading works on a full disk) and records
  how far in `buffer_replay` (Postgres, same transaction as the batch), because it may be
  unable to delete them. Once every pending row is in Postgres, writes skip the buffer;
  the replayed rows are deleted when the disk has room again.

Reads come from Postgres; during an outage they come from the buffer's latest-state table
and say so (`Snapshot.source == "buffer"`); while replay is still catching up the two are
merged, newest timestamp per entity winning (`"postgres+buffer"`).

What has no buffered copy (claiming signals, exit states, an incident in full, the
history panes) is read and written through `direct(query, ...)` with a query function of
ops/store (signals.py, positions.py, incidents.py, ...): Postgres only, and an outage
raises `StorageUnavailable`. Nothing outside ops/store touches the pool or classifies a
driver error.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.config import Config
from ops.env import RuntimeEnv
from ops.errors import describe_db_error
from ops.models import AccountInfo, Heartbeat, Order, Position, RunRecord, TradeUpdate
from ops.retry import Backoff
from ops.store import embedded, history
from ops.store.buffer import (
    PROBE_HEADROOM_BYTES,
    Buffer,
    BufferStatus,
    LatestRow,
    PendingRow,
    decode_ops,
)
from ops.store.errors import BufferUnwritable, StorageUnavailable
from ops.store.ops import (
    Op,
    Payload,
    Step,
    control_key,
    dumps,
    enc,
    latest_entries,
    new_op_id,
    plan,
    run_steps,
)
from ops.store.postgres import (
    close_pool,
    create_pool,
    is_outage,
    redact_url,
    unavailable_on_outage,
)
from ops.store.signal_records import SignalRecord, find_signal, list_signals

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
Source = Literal["postgres", "buffer", "postgres+buffer"]


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Tunables; the defaults suit a role process. `from_config` maps `ops.toml`."""

    drain_batch: int = 5000  # pending rows replayed per Postgres transaction
    drain_poll_s: float = 0.25  # how often an idle drainer looks at the buffer
    drain_backoff: Backoff = Backoff(initial_s=0.2, max_s=2.0, max_attempts=0, deadline_s=None)
    close_grace_s: float = 5.0  # close() lets an in-flight replay batch finish this long
    pool_max_size: int = 4
    connect_timeout_s: float = 3.0
    command_timeout_s: float = 15.0
    buffer_path: Path | None = None  # None: RuntimeEnv.buffer_path
    probe_headroom_bytes: int = PROBE_HEADROOM_BYTES  # free space probe_buffer() demands
    refused_log_every_s: float = 10.0  # repeat the "stored nowhere" error at most this often
    pg_retry_s: float = 1.0  # buffer unwritable, Postgres away: ask it again this often
    catch_up_wait_s: float = 3.0  # a write waits this long for another process's replay

    @classmethod
    def from_config(cls, config: Config, env: RuntimeEnv) -> StoreSettings:
        db, buf = config.database, config.buffer
        return cls(
            drain_batch=buf.drain_batch,
            drain_poll_s=buf.drain_interval_s,
            # database.pool_min is not used: the pool connects lazily (min 0), so a process
            # can open its Store while Postgres is down.
            pool_max_size=db.pool_max,
            connect_timeout_s=db.connect_timeout_s,
            command_timeout_s=db.command_timeout_s,
            buffer_path=buf.resolved_path(env),
        )


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[T]):
    """Rows read for a caller, and where they came from."""

    rows: list[T]
    source: Source
    as_of: datetime  # when Postgres was read, or the newest buffered timestamp

    @property
    def buffered(self) -> bool:
        return self.source != "postgres"


@dataclass(frozen=True, slots=True)
class StoredPosition:
    account: str
    synced_at: datetime
    opened_at: datetime | None
    position: Position


@dataclass(frozen=True, slots=True)
class AccountState:
    name: str
    account_number: str | None
    equity: Decimal | None
    cash: Decimal | None
    buying_power: Decimal | None
    last_equity: Decimal | None
    as_of: datetime


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    kind: str
    process: str | None
    account: str | None
    detail: str
    opened_at: datetime
    restarts: int
    dedupe_key: str | None
    # Acknowledged by an operator (`ops incidents ack`, the dashboard): still open, but no
    # longer degrading the report. Payloads buffered during an outage carry neither (an
    # acknowledgement goes straight to Postgres), so they read as not acknowledged.
    acked_by: str | None = None
    acked_at: datetime | None = None

    @property
    def acked(self) -> bool:
        return self.acked_at is not None


@dataclass(frozen=True, slots=True)
class Control:
    account: str
    key: str
    value: Any
    updated_at: datetime
    updated_by: str


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


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _now() -> datetime:
    return datetime.now(UTC)


def _pg_payload(row: asyncpg.Record) -> Payload:
    """A Postgres row in the buffer's payload form (JSON-safe strings)."""
    return {k: enc(v) for k, v in row.items()}


class Store:
    """Open with `await Store.open(env, process=...)`; close with `await store.close()`."""

    def __init__(
        self,
        *,
        url: str,
        buffer: Buffer,
        pool: asyncpg.Pool,
        process: str,
        settings: StoreSettings,
    ):
        self.url = url
        self.process = process
        self.settings = settings
        self._buffer = buffer
        self._pool = pool
        self._lock = DrainLock(buffer.path.with_name(buffer.path.name + ".drain.lock"),
                               fallback=buffer.path)
        self._reachable = True
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._draining = asyncio.Lock()
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self.replayed = 0  # rows this process replayed (a progress counter for heartbeats)
        self.refused = 0  # writes stored nowhere (StorageUnavailable raised)
        self._refused_at: float | None = None  # loop time of the last one
        self._refused_logged_at: float | None = None
        self._unwritable: str | None = None  # the buffer's last write error, None when fine
        # Highest seq this process replayed whose rows the buffer could not delete yet.
        self._replayed_through = 0
        self._pg_retry_at = 0.0  # loop time; see _write_unbuffered
        self._reopen_at = 0.0  # loop time; see _reopen_if_read_only
        self._retired: list[Buffer] = []  # read-only buffers replaced by a writable one
        self._mark_table = False  # see _has_marks
        self._mark_warned = False

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        env: RuntimeEnv,
        *,
        process: str,
        config: Config | StoreSettings | None = None,
        url: str | None = None,
        buffer_path: Path | None = None,
        start_embedded: bool = False,
    ) -> Store:
        """Open the pool (lazily: works during an outage), the buffer, and the drainer.

        `config` is the loaded `ops.toml` (its [database] and [buffer] tables) or explicit
        StoreSettings. The URL is `url`, else OPS_DATABASE_URL, else the embedded server's
        (started only when `start_embedded`: under supervisord, postgres is its own program).
        """
        if isinstance(config, Config):
            settings = StoreSettings.from_config(config, env)
        else:
            settings = config or StoreSettings()
        buffer_path = buffer_path or settings.buffer_path or env.buffer_path
        if url is None:
            if start_embedded:
                url = await asyncio.to_thread(embedded.database_url, env)
            else:
                url = embedded.database_url(env, start=False)
        # degrade: on a full/read-only disk the process still starts (writes go to Postgres
        # while it is up); the buffer is reopened normally once that works.
        buffer = await Buffer.open(buffer_path, degrade=True)
        try:
            pool = await create_pool(
                url,
                max_size=settings.pool_max_size,
                connect_timeout=settings.connect_timeout_s,
                command_timeout=settings.command_timeout_s,
            )
        except BaseException:
            await buffer.close()
            raise
        store = cls(url=url, buffer=buffer, pool=pool, process=process, settings=settings)
        store._drainer = asyncio.create_task(store._drain_loop(), name=f"store-drainer-{process}")
        return store

    async def close(self) -> None:
        """Stop the drainer (an in-flight batch gets `close_grace_s`), close pool and buffer."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._drainer is not None:
            done, _ = await asyncio.wait({self._drainer}, timeout=self.settings.close_grace_s)
            if not done:
                self._drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._drainer
        self._lock.release()
        await close_pool(self._pool)
        for old in self._retired:
            await old.close()
        await self._buffer.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pool(self) -> asyncpg.Pool:
        """The raw pool, for ops/store and tests only: code outside ops/store goes
        through `direct()` (tests/store/test_boundary.py holds it to that)."""
        return self._pool

    async def direct(self, query: Callable[Concatenate[Any, P], Awaitable[T]], /,
                     *args: P.args, **kwargs: P.kwargs) -> T:
        """`query(pool, *args, **kwargs)` straight against Postgres, never buffered:
        `query` is one of ops/store's query functions (claiming signals, exit states,
        incidents by id, ...). Raises `StorageUnavailable` when Postgres is away."""
        with unavailable_on_outage():
            return await query(self._pool, *args, **kwargs)

    @property
    def database_reachable(self) -> bool:
        """Whether the last attempt to reach Postgres succeeded."""
        return self._reachable

    @property
    def buffer(self) -> Buffer:
        return self._buffer

    # --- the write path ---------------------------------------------------------------------

    async def write(self, op: Op) -> int:
        return await self.write_many([op])

    async def write_many(self, ops: Sequence[Op]) -> int:
        """Apply ops in one Postgres transaction, or buffer them all during an outage.

        Returns the rows newly stored/changed in Postgres, or len(ops) when buffered
        (duplicates among buffered rows are dropped at replay).
        """
        if not ops:
            return 0
        latest = latest_entries(ops)
        if not await self._buffer.has_pending():
            try:
                async with self._pool.acquire() as conn:
                    n = await _apply_atomically(conn, ops)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._note_outage(exc)
            else:
                self._reachable = True
                await self._mirror(latest)
                return n
        try:
            await self._buffer.append(ops, self.process, latest)
        except BufferUnwritable as exc:
            self._note_unwritable(exc)
            return await self._write_unbuffered(ops, exc)
        self._note_writable()
        self._wake.set()
        return len(ops)

    async def _write_unbuffered(self, ops: Sequence[Op], why: BufferUnwritable) -> int:
        """The buffer refused `ops`. Postgres may take them only if it is reachable and
        already holds every pending row (else a later write would overtake an earlier one).
        Otherwise they are stored nowhere: raise, so the caller keeps and retries them."""
        loop = asyncio.get_running_loop()
        reason = "Postgres unreachable"
        # `_reachable` may be stale (nothing read or replayed since Postgres returned), so
        # ask Postgres again, though at most every pg_retry_s while it stays away.
        if self._reachable or loop.time() >= self._pg_retry_at:
            self._pg_retry_at = loop.time() + self.settings.pg_retry_s
            try:
                deadline = loop.time() + self.settings.catch_up_wait_s
                while not await self._caught_up():
                    # Replay now rather than wait for the drainer's back-off; "busy":
                    # another process replays, so wait for its mark.
                    try:
                        outcome = await self.drain_once()
                    except Exception as exc:
                        if is_outage(exc):
                            raise
                        # Not this write's fault (the drainer logs and retries it): the
                        # write must read as "not stored yet", never as a bad row.
                        log.warning("replay from the write path failed (%s: %s)",
                                    type(exc).__name__, exc)
                        break
                    if outcome == "outage" or loop.time() >= deadline:
                        break
                    if outcome == "busy":
                        await asyncio.sleep(0.05)
                else:
                    async with self._pool.acquire() as conn:
                        n = await _apply_atomically(conn, ops)
                    self._reachable = True
                    return n
                reason = ("Postgres does not hold every buffered row yet" if self._reachable
                          else "Postgres unreachable")
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._note_outage(exc)
                reason = f"Postgres unreachable ({type(exc).__name__}: {exc})"
        self.refused += 1
        loop_now = self._refused_at = loop.time()
        if (self._refused_logged_at is None
                or loop_now - self._refused_logged_at >= self.settings.refused_log_every_s):
            self._refused_logged_at = loop_now
            log.error("STORAGE UNAVAILABLE: %d write(s) of %s stored nowhere so far (%s, and "
                      "%s); the writer keeps them and retries", self.refused,
                      ", ".join(sorted({op.kind for op in ops})), reason, why)
        raise StorageUnavailable(
            f"{len(ops)} write(s) ({', '.join(sorted({op.kind for op in ops}))}) not stored: "
            f"{reason}, and {why}") from None  # the message says it all; no chain

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

    def _note_unwritable(self, exc: BufferUnwritable) -> None:
        if self._unwritable is None:
            log.error("%s; writes stay possible only while Postgres is up", exc)
        self._unwritable = str(exc)

    def _note_writable(self) -> None:
        if self._unwritable is not None:
            log.warning("outage buffer %s is writable again", self._buffer.path)
        self._unwritable = None

    async def _mirror(self, latest: Sequence[Any]) -> None:
        """Keep the buffer's latest-state current so outage reads start from fresh data."""
        if not latest:
            return
        try:
            await self._buffer.put_latest(latest)
        except BufferUnwritable as exc:
            # The write itself succeeded; a stale mirror is not data loss. Said once.
            self._note_unwritable(exc)
        except Exception:  # the write itself succeeded; a stale mirror is not data loss
            log.exception("could not mirror latest state into the buffer")
        else:
            self._note_writable()

    def refused_within(self, seconds: float) -> bool:
        """Whether this process had a write stored nowhere in the last `seconds`."""
        return (self._refused_at is not None
                and asyncio.get_running_loop().time() - self._refused_at <= seconds)

    @property
    def buffer_unwritable(self) -> str | None:
        """Why the buffer refused this process's last write to it (None: it did not)."""
        return self._unwritable

    async def probe_buffer(self) -> str | None:
        """None when the buffer can take an outage's writes, else why not (one line)."""
        await self._reopen_if_read_only(force=True)
        return await self._buffer.probe(self.settings.probe_headroom_bytes)

    async def _reopen_if_read_only(self, *, force: bool = False) -> None:
        """A buffer opened read-only (the disk was full or read-only at start) is reopened
        normally as soon as that works: at most every pg_retry_s, unless `force`."""
        old = self._buffer
        loop = asyncio.get_running_loop()
        if old.read_only is None or (loop.time() < self._reopen_at and not force):
            return
        self._reopen_at = loop.time() + self.settings.pg_retry_s
        try:
            new = await Buffer.open(old.path)
        except BufferUnwritable:
            return
        # The old one stays open until close(): a call already waiting on it must not
        # find its connection closed (that error would read as a bad row, not an outage).
        self._retired.append(old)
        self._buffer = new
        self._note_writable()
        log.warning("outage buffer %s can be written again: reopened", old.path)

    def _note_outage(self, exc: BaseException) -> None:
        if self._reachable:
            log.warning("postgres unreachable at %s (%s); buffering writes",
                        redact_url(self.url), describe_db_error(exc))
        self._reachable = False

    # --- the drainer ------------------------------------------------------------------------

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

    async def buffer_status(self) -> BufferStatus:
        """Pending rows, age of the oldest, and quarantined rows."""
        return await self._buffer.status()

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

    # --- typed writes -----------------------------------------------------------------------

    async def record_trade_updates(self, account: str, updates: Iterable[TradeUpdate]) -> int:
        """Store each event exactly once; returns how many were new (see write_many).

        To keep `orders` current in the same transaction, combine ops yourself:
        `write_many([trade_update_op(a, u) for u in us] + [order_op(a, u.order) for u in us])`.
        """
        return await self.write_many([trade_update_op(account, u) for u in updates])

    async def upsert_orders(
        self,
        account: str,
        orders: Iterable[Order],
        signal_ids: Mapping[str, int] | None = None,
    ) -> int:
        """Upsert orders; an older snapshot never overwrites a newer one (updated_at).

        `signal_ids` maps client_order_id -> signals.id to link an order to its signal.
        """
        links = signal_ids or {}
        return await self.write_many(
            [order_op(account, o, links.get(o.client_order_id)) for o in orders]
        )

    async def heartbeat(self, hb: Heartbeat) -> None:
        await self.write(Op("heartbeat", enc({
            "process": hb.process, "account": hb.account, "role": hb.role, "pid": hb.pid,
            "ts": hb.ts, "started_at": hb.started_at, "counters": dict(hb.counters),
        })))

    async def record_run(self, rec: RunRecord) -> None:
        await self.write(Op("run", run_payload(rec)))

    async def sync_positions(
        self, account: str, positions: Sequence[Position], as_of: datetime
    ) -> None:
        """Replace the account's current set (unless a newer sync is stored); add history."""
        await self.write(Op("positions", enc({
            "account": account, "synced_at": as_of,
            "positions": [position_payload(p) for p in positions],
        })))

    async def record_account(self, account: str, info: AccountInfo, as_of: datetime) -> None:
        await self.write(Op("account", enc({
            "account": account, "account_number": info.account_number, "equity": info.equity,
            "cash": info.cash, "buying_power": info.buying_power,
            "last_equity": info.last_equity, "as_of": as_of,
        })))

    async def set_control(
        self, account: str, key: str, value: Any, by: str, at: datetime | None = None
    ) -> None:
        """Set a control (e.g. key 'kill_switch', value {"mode": "halt"}); newest wins."""
        await self.write(Op("control", enc({
            "account": account, "key": key, "value": value, "updated_at": at or _now(),
            "updated_by": by,
        })))

    async def open_incident(
        self,
        kind: str,
        *,
        detail: str,
        process: str | None = None,
        account: str | None = None,
        dedupe_key: str | None = None,
        at: datetime | None = None,
    ) -> str:
        """Open an incident; with a dedupe_key already open, returns the open one's id.

        During an outage the new id is returned; the replay keeps the older open incident
        if one exists, so prefer closing/bumping by dedupe_key.
        """
        new_id = str(uuid.uuid4())
        await self.write(Op("incident_open", enc({
            "id": new_id, "kind": kind, "process": process, "account": account,
            "detail": detail, "opened_at": at or _now(), "restarts": 0,
            "dedupe_key": dedupe_key, "opened_pid": os.getpid(),
            "opened_host": socket.gethostname(),
            # supervisord sets this in its children's environment: an incident raised by
            # a process it does not supervise (a hand-run `ops run`) is closed by the
            # watchdog once that process is gone (ops/incidents.py).
            "supervised": os.environ.get("SUPERVISOR_ENABLED") == "1",
        })))
        if dedupe_key is None or not self._reachable:
            return new_id
        try:
            existing = await self._pool.fetchval(
                "SELECT id::text FROM incidents WHERE dedupe_key = $1 AND closed_at IS NULL",
                dedupe_key,
            )
        except Exception as exc:
            if not is_outage(exc):
                raise
            return new_id
        return str(existing or new_id)

    async def bump_incident(
        self,
        *,
        incident_id: str | None = None,
        dedupe_key: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Count one more restart on an open incident (exactly once, even when replayed)."""
        if incident_id is None and dedupe_key is None:
            raise ValueError("bump_incident needs incident_id or dedupe_key")
        await self.write(Op("incident_bump", {
            "op_id": new_op_id(), "id": incident_id, "dedupe_key": dedupe_key, "detail": detail,
        }))

    async def close_incident(
        self,
        *,
        incident_id: str | None = None,
        dedupe_key: str | None = None,
        at: datetime | None = None,
        reason: str | None = None,
        by: str | None = None,
    ) -> None:
        """Close the open incident; `reason` says why (its condition cleared, an operator
        closed it), `by` who (default: this store's process)."""
        if incident_id is None and dedupe_key is None:
            raise ValueError("close_incident needs incident_id or dedupe_key")
        await self.write(Op("incident_close", enc({
            "id": incident_id, "dedupe_key": dedupe_key, "closed_at": at or _now(),
            "reason": reason, "closed_by": by or self.process,
        })))

    async def insert_signal(
        self,
        *,
        account: str,
        symbol: str,
        side: str,
        qty: Decimal | None = None,
        notional: Decimal | None = None,
        order_type: str = "market",
        limit_price: Decimal | None = None,
        time_in_force: str = "day",
        strategy: str | None = None,
        idempotency_key: str | None = None,
        created_at: datetime | None = None,
        expires_at: datetime | None = None,
    ) -> int | None:
        """Insert a signal once per idempotency_key; its id, or None while buffered."""
        if (qty is None) == (notional is None):
            raise ValueError(f"signal for {symbol}: exactly one of qty or notional is needed")
        key = idempotency_key or f"auto:{uuid.uuid4().hex}"
        await self.write(Op("signal", enc({
            "idempotency_key": key, "account": account, "symbol": symbol, "side": side,
            "qty": qty, "notional": notional, "order_type": order_type,
            "limit_price": limit_price, "time_in_force": time_in_force, "strategy": strategy,
            "created_at": created_at or _now(), "expires_at": expires_at,
        })))
        if not self._reachable:
            return None
        try:
            sid = await self._pool.fetchval(
                "SELECT id FROM signals WHERE idempotency_key = $1", key
            )
        except Exception as exc:
            if not is_outage(exc):
                raise
            return None
        return None if sid is None else int(sid)

    async def record_signal_decision(
        self,
        signal_id: int,
        status: str,
        *,
        reason: str | None = None,
        client_order_id: str | None = None,
        broker_order_id: str | None = None,
        attempts: int | None = None,
        decided_at: datetime | None = None,
    ) -> None:
        """Record what the dispatcher decided; an older decision never overwrites a newer."""
        await self.write(Op("signal_decision", enc({
            "signal_id": signal_id, "status": status, "reason": reason,
            "client_order_id": client_order_id, "broker_order_id": broker_order_id,
            "decided_at": decided_at or _now(), "attempts": attempts,
        })))

    # --- reads ------------------------------------------------------------------------------

    async def _read(
        self,
        kind: str,
        query: str | Callable[[asyncpg.Connection], Awaitable[list[Payload]]],
        args: Sequence[Any],
        key: Callable[[Payload], str],
        ts_field: str,
        decode: Callable[[Payload], T],
        keep: Callable[[Payload], bool] = lambda p: True,
    ) -> Snapshot[T]:
        """Postgres first; the buffer's latest-state during an outage; merged while draining."""
        pg: list[Payload] | None
        try:
            async with self._pool.acquire() as conn:
                if isinstance(query, str):
                    pg = [_pg_payload(r) for r in await conn.fetch(query, *args)]
                else:
                    pg = await query(conn)
            self._reachable = True
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._note_outage(exc)
            pg = None
        pending = pg is None or await self._buffer.has_pending()
        if pg is not None and not pending:
            return Snapshot([decode(p) for p in pg], "postgres", _now())
        buffered: list[LatestRow] = [r for r in await self._buffer.latest(kind) if keep(r.payload)]
        merged: dict[str, Payload] = {}
        for p in pg or []:
            merged[key(p)] = p
        newest: datetime | None = None
        for row in buffered:
            ts = datetime.fromisoformat(row.ts)
            newest = ts if newest is None or ts > newest else newest
            have = merged.get(row.key)
            if have is None or datetime.fromisoformat(str(have[ts_field])) <= ts:
                merged[row.key] = row.payload
        rows = [decode(p) for _, p in sorted(merged.items())]
        if pg is None:
            return Snapshot(rows, "buffer", newest or datetime.fromtimestamp(0, UTC))
        return Snapshot(rows, "postgres+buffer", _now())

    async def heartbeats(self) -> Snapshot[Heartbeat]:
        return await self._read(
            "heartbeat", "SELECT * FROM heartbeats ORDER BY process", (),
            lambda p: str(p["process"]), "ts", decode_heartbeat,
        )

    async def latest_runs(self) -> Snapshot[RunRecord]:
        """The last completed run per process.

        The ledger only grows (~200k rows a day for the demo stack), and status, the
        dashboard and the watchdog ask every second: so no DISTINCT ON over the table, but
        a loose index scan over runs_process_finished_idx (skip from one process to the
        next) and one index probe per process: O(processes), not O(rows).
        """
        sql = """
            WITH RECURSIVE procs(process) AS (
                -- "finished_at IS NOT NULL" matches the partial index's predicate.
                (SELECT process FROM runs WHERE finished_at IS NOT NULL
                 ORDER BY process LIMIT 1)
                UNION ALL
                SELECT (SELECT r.process FROM runs r
                        WHERE r.process > procs.process AND r.finished_at IS NOT NULL
                        ORDER BY r.process LIMIT 1)
                FROM procs WHERE procs.process IS NOT NULL
            )
            SELECT last.* FROM procs
            CROSS JOIN LATERAL (
                SELECT * FROM runs
                WHERE runs.process = procs.process
                  AND finished_at IS NOT NULL AND outcome <> 'running'
                ORDER BY finished_at DESC LIMIT 1
            ) last
            WHERE procs.process IS NOT NULL
        """
        return await self._read(
            "run", sql, (), lambda p: str(p["process"]), "finished_at", decode_run,
        )

    async def latest_runs_of(self, names: Sequence[str], *, timeout_s: float,
                             ) -> Snapshot[RunRecord]:
        """The last completed run of each of `names` (the watchdog's every pass).

        `latest_runs()` walks every process of the ledger; here one index probe per named
        process, in Postgres (within `timeout_s`) while it answers and the buffer holds
        nothing; during an outage, or while replay catches up, `latest_runs()`'s merged
        read is the truth."""
        if self._reachable and not await self._buffer.has_pending():
            try:
                rows = await self._pool.fetch(_LATEST_RUNS_OF_SQL, list(names),
                                              timeout=timeout_s)
            except Exception as exc:
                if not is_outage(exc):
                    raise
            else:
                return Snapshot([decode_run(_pg_payload(r)) for r in rows], "postgres",
                                _now())
        return await self.latest_runs()

    async def positions(self, account: str | None = None) -> Snapshot[StoredPosition]:

        async def fetch(conn: asyncpg.Connection) -> list[Payload]:
            syncs = await conn.fetch(
                "SELECT account, synced_at FROM position_syncs"
                " WHERE $1::text IS NULL OR account = $1 ORDER BY account", account)
            rows = await conn.fetch(
                "SELECT * FROM positions WHERE $1::text IS NULL OR account = $1"
                " ORDER BY account, symbol", account)
            by_account: dict[str, list[Payload]] = {s["account"]: [] for s in syncs}
            for r in rows:
                by_account.setdefault(r["account"], []).append(_pg_payload(r))
            return [{"account": s["account"], "synced_at": enc(s["synced_at"]),
                     "positions": by_account[s["account"]]} for s in syncs]

        snap = await self._read(
            "positions", fetch, (), lambda p: str(p["account"]), "synced_at",
            lambda p: p, keep=lambda p: account is None or p["account"] == account,
        )
        rows = [pos for sync in snap.rows for pos in decode_positions(sync)]
        return Snapshot(rows, snap.source, snap.as_of)

    async def account_states(self) -> Snapshot[AccountState]:
        sql = "SELECT name AS account, * FROM account_state ORDER BY name"
        return await self._read(
            "account", sql, (), lambda p: str(p["account"]), "as_of", decode_account,
        )

    async def open_incidents(self) -> Snapshot[Incident]:
        sql = """
            SELECT id, kind, process, account, detail, opened_at, restarts, dedupe_key,
                   acked_by, acked_at
            FROM incidents WHERE closed_at IS NULL ORDER BY opened_at
        """
        return await self._read(
            "incident", sql, (), lambda p: str(p.get("dedupe_key") or p["id"]), "opened_at",
            decode_incident,
        )

    async def controls(self, account: str) -> Snapshot[Control]:
        sql = "SELECT * FROM controls WHERE account = $1 ORDER BY key"
        return await self._read(
            "control", sql, (account,), lambda p: control_key(p["account"], p["key"]),
            "updated_at", decode_control, keep=lambda p: p["account"] == account,
        )

    # --- history reads (ops/store/history.py): Postgres only, StorageUnavailable on outage -

    async def account_history(self, start: datetime, end: datetime,
                              ) -> list[history.AccountPoint]:
        return await self.direct(history.account_points, start, end)

    async def run_ledger_window(self, start: datetime, end: datetime, bucket_s: float,
                                processes: Sequence[str], min_hole_s: float,
                                ) -> history.RunLedgerWindow:
        return await self.direct(history.run_ledger_window, start, end, bucket_s, processes,
                                 min_hole_s)

    async def fills_after(self, after_id: int) -> list[history.FillRecord]:
        return await self.direct(history.fills_after, after_id)

    async def incident_spans(self, start: datetime, end: datetime,
                             ) -> list[history.IncidentSpan]:
        return await self.direct(history.incident_spans, start, end)

    async def signals(self, *, account: str | None = None,
                      states: Sequence[str] | None = None, since: datetime | None = None,
                      limit: int = 200) -> list[SignalRecord]:
        """Signals newest first, each with the order it became (`ops signal list`, the
        dashboard's pane). Postgres only: raises `StorageUnavailable` on an outage."""
        return await self.direct(list_signals, account=account, states=states, since=since,
                                 limit=limit)

    async def signal(self, signal_id: int) -> SignalRecord | None:
        """One signal in full, with its order (`ops signal show`, `ops signal add`'s wait).
        Postgres only: raises `StorageUnavailable` on an outage."""
        return await self.direct(find_signal, signal_id)


_LATEST_RUNS_OF_SQL = """
SELECT r.* FROM unnest($1::text[]) AS p(name)
CROSS JOIN LATERAL (
    SELECT * FROM runs
    WHERE process = p.name AND finished_at IS NOT NULL AND outcome <> 'running'
    ORDER BY finished_at DESC LIMIT 1
) r
"""


# --- payload <-> model ------------------------------------------------------------------------


async def _apply_atomically(conn: asyncpg.Connection, ops: Sequence[Op]) -> int:
    """Apply `ops` all or nothing. A batch that plans to ONE statement (a stream batch, a
    run of events) is atomic by itself: sent without BEGIN/COMMIT, one round trip."""
    steps = plan(ops)
    if len(steps) == 1 and steps[0].statement is not None:
        return await run_steps(conn, steps)
    async with conn.transaction():
        return await run_steps(conn, steps)


def trade_update_op(account: str, u: TradeUpdate) -> Op:
    """The write storing one trade update exactly once (a fill by its identity, account +
    order + cumulative quantity; any other event by account + event_key)."""
    return Op("order_event", {
        "account": account, "event_key": u.event_key, "order_id": u.order.id,
        "client_order_id": u.order.client_order_id, "symbol": u.order.symbol,
        "event": u.event, "ts": enc(u.timestamp), "execution_id": u.execution_id,
        "price": enc(u.price), "qty": enc(u.qty), "position_qty": enc(u.position_qty),
        "cum_qty": enc(u.fill_cum),
        # JSON text, encoded once: the frame as received when there is one. A replay then
        # decodes one string, not the whole nested object (rows buffered before this was
        # text hold an object; `_event_statement` takes both).
        "raw": u.raw_json if u.raw_json is not None else dumps(enc(dict(u.raw))),
    })


def order_op(account: str, o: Order, signal_id: int | None = None) -> Op:
    """The forward-only upsert of one order snapshot."""
    return Op("order", dict(enc({
        "id": o.id, "account": account, "client_order_id": o.client_order_id,
        "symbol": o.symbol, "side": o.side, "order_type": o.order_type,
        "time_in_force": o.time_in_force, "qty": o.qty, "notional": o.notional,
        "filled_qty": o.filled_qty, "filled_avg_price": o.filled_avg_price,
        "limit_price": o.limit_price, "stop_price": o.stop_price, "status": o.status,
        "asset_class": o.asset_class, "created_at": o.created_at, "updated_at": o.updated_at,
        "submitted_at": o.submitted_at, "filled_at": o.filled_at,
        "canceled_at": o.canceled_at, "raw": dict(o.raw), "signal_id": signal_id,
    })))


def run_payload(rec: RunRecord) -> Payload:
    return dict(enc({
        "slot_id": rec.slot_id, "process": rec.process, "account": rec.account,
        "role": rec.role, "slot_time": rec.slot_time, "scheduled_at": rec.scheduled_at,
        "started_at": rec.started_at, "finished_at": rec.finished_at, "outcome": rec.outcome,
        "lateness_s": rec.lateness_s, "skipped_before": rec.skipped_before, "error": rec.error,
    }))


def position_payload(p: Position) -> Payload:
    return dict(enc({
        "symbol": p.symbol, "qty": p.qty, "avg_entry_price": p.avg_entry_price,
        "cost_basis": p.cost_basis, "market_value": p.market_value,
        "current_price": p.current_price, "lastday_price": p.lastday_price,
        "unrealized_pl": p.unrealized_pl, "unrealized_plpc": p.unrealized_plpc,
        "side": p.side, "asset_class": p.asset_class,
    }))


def _req_ts(value: Any) -> datetime:
    ts = _ts(None if value is None else str(value))
    if ts is None:
        raise ValueError("missing timestamp")
    return ts


def decode_heartbeat(p: Payload) -> Heartbeat:
    counters = p.get("counters") or {}
    if isinstance(counters, str):
        counters = json.loads(counters)
    return Heartbeat(
        process=p["process"], account=p.get("account"), role=p["role"], pid=int(p["pid"]),
        ts=_req_ts(p["ts"]), started_at=_req_ts(p["started_at"]), counters=counters,
    )


def decode_run(p: Payload) -> RunRecord:
    return RunRecord(
        slot_id=p["slot_id"], process=p["process"], account=p.get("account"), role=p["role"],
        slot_time=_req_ts(p["slot_time"]), scheduled_at=_req_ts(p["scheduled_at"]),
        started_at=_ts(p.get("started_at")), finished_at=_ts(p.get("finished_at")),
        outcome=p["outcome"], lateness_s=float(p.get("lateness_s") or 0.0),
        skipped_before=int(p.get("skipped_before") or 0), error=p.get("error"),
    )


def decode_positions(sync: Payload) -> list[StoredPosition]:
    synced_at = _req_ts(sync["synced_at"])
    items = sync["positions"]
    if isinstance(items, str):
        items = json.loads(items)
    out = []
    for p in items:
        pos = Position(
            symbol=p["symbol"], qty=Decimal(str(p["qty"])),
            avg_entry_price=Decimal(str(p.get("avg_entry_price") or 0)),
            cost_basis=Decimal(str(p.get("cost_basis") or 0)),
            asset_class=p.get("asset_class") or "us_equity", side=p.get("side") or "long",
            market_value=_dec(p.get("market_value")), current_price=_dec(p.get("current_price")),
            lastday_price=_dec(p.get("lastday_price")),
            unrealized_pl=_dec(p.get("unrealized_pl")),
            unrealized_plpc=_dec(p.get("unrealized_plpc")),
        )
        opened = p.get("opened_at")
        out.append(StoredPosition(sync["account"], synced_at,
                                  None if opened is None else _req_ts(opened), pos))
    return out


def decode_account(p: Payload) -> AccountState:
    return AccountState(
        name=p["account"], account_number=p.get("account_number"), equity=_dec(p.get("equity")),
        cash=_dec(p.get("cash")), buying_power=_dec(p.get("buying_power")),
        last_equity=_dec(p.get("last_equity")), as_of=_req_ts(p["as_of"]),
    )


def decode_incident(p: Payload) -> Incident:
    return Incident(
        id=str(p["id"]), kind=p["kind"], process=p.get("process"), account=p.get("account"),
        detail=p.get("detail") or "", opened_at=_req_ts(p["opened_at"]),
        restarts=int(p.get("restarts") or 0), dedupe_key=p.get("dedupe_key"),
        acked_by=p.get("acked_by"), acked_at=_ts(p.get("acked_at")),
    )


def decode_control(p: Payload) -> Control:
    value = p["value"]
    return Control(
        account=p["account"], key=p["key"], value=value, updated_at=_req_ts(p["updated_at"]),
        updated_by=p["updated_by"],
    )


__all__ = [
    "AccountState", "Control", "Incident", "Snapshot", "Store", "StoreSettings",
    "StoredPosition", "order_op", "trade_update_op",
]
