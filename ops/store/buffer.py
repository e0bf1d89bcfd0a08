"""The SQLite outage buffer: one WAL file per host, shared by every process.

Tables:
- `pending(seq, kind, payload, process, created_at)`: append-only writes awaiting replay
  into Postgres, in `seq` order (AUTOINCREMENT: a seq is never reused, and since SQLite
  serialises writers, every row committed later has a higher seq).
- `latest(kind, key, payload, ts)`: latest state per entity (heartbeat per process,
  positions and account summary per account, controls, open incidents, last completed run
  per process), upserts guarded by `ts`, so readers keep working through an outage.
- `dead(seq, kind, payload, process, created_at, error, failed_at)`: rows Postgres refused
  for a reason other than an outage (a bug or bad data); kept, never silently dropped.
- `meta(key, value)`: `buffer_id` (a uuid naming this file, so Postgres can record how far
  it was replayed: see Store) and `probe` (the last write probe's time).

Durability: journal_mode=WAL with synchronous=FULL, so a committed append survives a power
cut; busy_timeout lets several processes write without "database is locked" errors. Write
transactions use BEGIN IMMEDIATE so they queue for the write lock up front.

Cancellation: a write transaction always runs to its end (committed or rolled back), even
when the caller gives up (a heartbeat's 1 s timeout, say); the caller's cancellation is
delivered at once (`_transaction`). aiosqlite runs each statement in its own thread, where
a cancellation cannot stop it: a BEGIN IMMEDIATE waiting on another process's lock takes
the lock later anyway, and an abandoned transaction would keep the host-wide write lock
for good, stalling every process's writes (heartbeats included) busy_timeout at a time.

Full or read-only disk: every write raises `BufferUnwritable` (ops/store/errors.py) naming
the file and the cause; reads go on working. `probe()` tells whether the file system has
room for an outage, before one needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite

from ops.store.errors import BufferUnwritable, is_unwritable
from ops.store.ops import LatestEntry, Op, dumps

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
#: Free space the probe reserves (and gives back) beside the buffer: an outage must find
#: room for at least this much, or the buffer counts as unwritable already.
PROBE_HEADROOM_BYTES = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    process    TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS latest (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    payload TEXT NOT NULL,
    ts      TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS dead (
    seq        INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    process    TEXT NOT NULL,
    created_at REAL NOT NULL,
    error      TEXT NOT NULL,
    failed_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# ts strings are ISO-8601 with offsets from the same writers; compare them as instants.
_LATEST_UPSERT = """
INSERT INTO latest (kind, key, payload, ts) VALUES (?, ?, ?, ?)
ON CONFLICT (kind, key) DO UPDATE SET payload = excluded.payload, ts = excluded.ts
WHERE julianday(excluded.ts) >= julianday(latest.ts)
"""
_LATEST_DELETE = "DELETE FROM latest WHERE kind = ? AND key = ?"


@dataclass(frozen=True, slots=True)
class PendingRow:
    seq: int
    kind: str
    payload_text: str  # JSON, parsed only when needed (the replay hot path passes it as is)
    process: str
    created_at: float

    def op(self) -> Op:
        return Op(self.kind, json.loads(self.payload_text))


def decode_ops(rows: Sequence[PendingRow]) -> list[Op]:
    """The rows' ops, decoded as ONE JSON array (a replay batch decodes ~2x faster than
    row by row: json.loads has a fixed cost per call). Payloads are single JSON objects
    (`dumps` of a dict); should the joined text not decode to exactly one object per row,
    each row is decoded on its own, so a damaged row fails as itself."""
    if not rows:
        return []
    try:
        payloads = json.loads("[" + ",".join(r.payload_text for r in rows) + "]")
    except ValueError:
        payloads = None
    if (not isinstance(payloads, list) or len(payloads) != len(rows)
            or not all(type(p) is dict for p in payloads)):
        return [r.op() for r in rows]
    return [Op(r.kind, p) for r, p in zip(rows, payloads, strict=True)]


@dataclass(frozen=True, slots=True)
class LatestRow:
    key: str
    payload: dict[str, Any]
    ts: str


@dataclass(frozen=True, slots=True)
class BufferStatus:
    pending: int
    oldest_age_s: float | None  # age of the oldest pending row, None when empty
    dead: int


class Buffer:
    """Async access to the buffer file. One instance per Store; safe across processes."""

    def __init__(self, path: Path, conn: aiosqlite.Connection, buffer_id: str | None = None,
                 read_only: str | None = None):
        self.path = path
        self._conn = conn
        # Why this buffer was opened read-only (see `open(degrade=True)`); None: writable.
        self.read_only = read_only
        # None only for a pre-meta file opened on a full disk (the id could not be written).
        self.buffer_id = buffer_id
        # One connection is shared by the writer tasks and the drainer of a process; a
        # statement of one must never run inside another's transaction or open cursor.
        self._mutex = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, degrade: bool = False) -> Buffer:
        """Open (and create) the buffer. A full or read-only disk raises `BufferUnwritable`;
        with `degrade` it opens the file read-only instead (or an empty in-memory stand-in
        when there is no file), so a process can start and write to Postgres meanwhile."""
        try:
            return await cls._open(path)
        except (sqlite3.Error, OSError) as exc:
            if not is_unwritable(exc):
                raise
            err = BufferUnwritable.wrap(path, exc)
            if not degrade:
                raise err from exc
        log.error("%s; opened read-only until it can be written", err)
        return await cls._open_read_only(path, err.reason)

    @classmethod
    async def _open_read_only(cls, path: Path, reason: str) -> Buffer:
        if not await asyncio.to_thread(path.exists):
            conn = await aiosqlite.connect(":memory:", isolation_level=None)
            await conn.executescript(_SCHEMA)
            return cls(path, conn, None, reason)
        # immutable: no -shm/-wal needed (they cannot be created); nobody else holds the
        # file open, or the normal open would have worked. Rows in a crashed writer's
        # leftover WAL show once the file is reopened normally (Store retries that).
        conn = await aiosqlite.connect(f"file:{quote(str(path))}?mode=ro&immutable=1",
                                       uri=True, isolation_level=None)
        try:
            rows = list(await conn.execute_fetchall(
                "SELECT value FROM meta WHERE key = 'buffer_id'"))
        except sqlite3.Error:
            rows = []  # a file from before the meta table: no id, no shared replay mark
        except BaseException:
            await conn.close()
            raise
        return cls(path, conn, str(rows[0][0]) if rows else None, reason)

    @classmethod
    async def _open(cls, path: Path) -> Buffer:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.executescript(_SCHEMA)
            buffer_id = await _buffer_id(conn, path)
        except BaseException:
            await conn.close()
            raise
        return cls(path, conn, buffer_id)

    async def close(self) -> None:
        async with self._mutex:
            await self._conn.close()

    # --- writes -----------------------------------------------------------------------------

    async def append(
        self, ops: Sequence[Op], process: str, latest: Sequence[LatestEntry] = ()
    ) -> None:
        """Append ops (and their latest-state entries) in one durable transaction."""
        now = time.time()
        rows = [(op.kind, dumps(op.payload), process, now) for op in ops]
        await self._write(rows, latest)

    async def put_latest(self, latest: Sequence[LatestEntry]) -> None:
        if latest:
            await self._write([], latest)

    async def _write(
        self, rows: Sequence[tuple[str, str, str, float]], latest: Sequence[LatestEntry]
    ) -> None:
        await self._transaction(lambda: self._write_locked(rows, latest))

    async def _transaction(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` (one write transaction) under the mutex, to its end whatever happens
        to the caller (see the module docstring). A cancelled caller returns at once; the
        mutex is held until the transaction has ended, so the next operation never runs
        inside it, and its outcome is logged since nobody is left to raise it to."""
        await self._mutex.acquire()
        try:
            task = asyncio.ensure_future(body())
        except BaseException:
            self._mutex.release()
            raise
        task.add_done_callback(lambda _: self._mutex.release())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._abandoned_done)
            raise

    def _abandoned_done(self, task: asyncio.Future[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.warning("outage buffer %s: a write whose caller had given up failed: %s",
                        self.path, exc)

    async def _write_locked(
        self, rows: Sequence[tuple[str, str, str, float]], latest: Sequence[LatestEntry]
    ) -> None:
        c = self._conn
        await self._begin()
        try:
            if rows:
                await c.executemany(
                    "INSERT INTO pending (kind, payload, process, created_at) VALUES (?,?,?,?)",
                    rows,
                )
            upserts = [(e.kind, e.key, dumps(e.payload), e.ts) for e in latest if e.payload]
            deletes = [(e.kind, e.key) for e in latest if e.payload is None]
            if upserts:
                await c.executemany(_LATEST_UPSERT, upserts)
            if deletes:
                await c.executemany(_LATEST_DELETE, deletes)
            await c.execute("COMMIT")
        except BaseException as exc:
            await self._rollback()
            if is_unwritable(exc):
                raise BufferUnwritable.wrap(self.path, exc) from exc
            raise

    def _check_writable(self) -> None:
        if self.read_only is not None:
            raise BufferUnwritable(self.path, f"opened read-only ({self.read_only})")

    async def _begin(self) -> None:
        self._check_writable()
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if is_unwritable(exc):
                raise BufferUnwritable.wrap(self.path, exc) from exc
            raise

    async def _rollback(self) -> None:
        # SQLite rolls back by itself on SQLITE_FULL/IOERR; a second ROLLBACK would then fail
        # with "no transaction is active" and hide the error that matters.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await self._conn.execute("ROLLBACK")

    async def delete_through(self, seq: int) -> None:
        """Drop replayed rows: every pending row with seq <= `seq`."""
        self._check_writable()
        async with self._mutex:
            try:
                await self._conn.execute("DELETE FROM pending WHERE seq <= ?", (seq,))
            except sqlite3.Error as exc:
                await self._rollback()
                if is_unwritable(exc):
                    raise BufferUnwritable.wrap(self.path, exc) from exc
                raise

    async def quarantine(self, row: PendingRow, error: str) -> None:
        """Move a row Postgres refused into `dead`, atomically."""
        await self._transaction(lambda: self._quarantine_locked(row, error))

    async def _quarantine_locked(self, row: PendingRow, error: str) -> None:
        c = self._conn
        await self._begin()
        try:
            await c.execute(
                "INSERT OR REPLACE INTO dead (seq, kind, payload, process, created_at, "
                "error, failed_at) VALUES (?,?,?,?,?,?,?)",
                (row.seq, row.kind, row.payload_text, row.process, row.created_at,
                 error, time.time()),
            )
            await c.execute("DELETE FROM pending WHERE seq = ?", (row.seq,))
            await c.execute("COMMIT")
        except BaseException as exc:
            await self._rollback()
            if is_unwritable(exc):
                raise BufferUnwritable.wrap(self.path, exc) from exc
            raise

    async def probe(self, headroom_bytes: int = PROBE_HEADROOM_BYTES) -> str | None:
        """None when the buffer can take writes, else why not (one line, naming the file).

        Two checks: the file system can still allocate `headroom_bytes` beside the buffer
        (posix_fallocate on a scratch file, removed again: SQLite may keep committing into
        WAL space it already owns on a full disk, but the next outage needs new room), and a
        durable SQLite write commits (catches read-only mounts and I/O errors).
        """
        try:
            await asyncio.to_thread(_reserve, self.path.with_name(self.path.name + ".probe"),
                                    headroom_bytes)
            await self._transaction(self._write_probe_row)
        except BufferUnwritable as exc:
            return str(exc)
        except OSError as exc:
            if not is_unwritable(exc):
                raise
            return str(BufferUnwritable.wrap(self.path, exc))
        return None

    async def _write_probe_row(self) -> None:
        await self._begin()
        try:
            await self._conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?)",
                (str(time.time()),))
            await self._conn.execute("COMMIT")
        except BaseException as exc:
            await self._rollback()
            if is_unwritable(exc):
                raise BufferUnwritable.wrap(self.path, exc) from exc
            raise

    # --- reads ------------------------------------------------------------------------------

    async def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self._mutex:
            return list(await self._conn.execute_fetchall(sql, args))

    async def has_pending(self) -> bool:
        return bool(await self._fetchall("SELECT 1 FROM pending LIMIT 1"))

    async def last_seq(self) -> int:
        """The highest pending seq (0 when nothing is pending)."""
        (row,) = await self._fetchall("SELECT coalesce(max(seq), 0) FROM pending")
        return int(row[0])

    async def fetch(self, limit: int, after_seq: int = 0) -> list[PendingRow]:
        """The oldest `limit` pending rows with seq > `after_seq`, in seq order."""
        rows = await self._fetchall(
            "SELECT seq, kind, payload, process, created_at FROM pending WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [PendingRow(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def status(self) -> BufferStatus:
        (row,) = await self._fetchall(
            "SELECT count(*), min(created_at), (SELECT count(*) FROM dead) FROM pending"
        )
        count, oldest, dead = int(row[0]), row[1], int(row[2])
        age = None if oldest is None else max(0.0, time.time() - float(oldest))
        return BufferStatus(count, age, dead)

    async def latest(self, kind: str) -> list[LatestRow]:
        rows = await self._fetchall(
            "SELECT key, payload, ts FROM latest WHERE kind = ? ORDER BY key", (kind,)
        )
        return [LatestRow(r[0], json.loads(r[1]), r[2]) for r in rows]

    async def dead_rows(self) -> list[tuple[int, str, str]]:
        """(seq, kind, error) of quarantined rows, for operators."""
        rows = await self._fetchall("SELECT seq, kind, error FROM dead ORDER BY seq")
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


async def _buffer_id(conn: aiosqlite.Connection, path: Path) -> str | None:
    """This file's id, created on first open."""
    rows = list(await conn.execute_fetchall("SELECT value FROM meta WHERE key = 'buffer_id'"))
    if rows:
        return str(rows[0][0])
    new = uuid.uuid4().hex
    try:
        await conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('buffer_id', ?)",
                           (new,))
    except sqlite3.Error as exc:
        if not is_unwritable(exc):
            raise
        log.error("outage buffer %s: cannot record its id (%s); replay progress will not be "
                  "shared with other processes until it is writable", path, exc)
        return None
    rows = list(await conn.execute_fetchall("SELECT value FROM meta WHERE key = 'buffer_id'"))
    return str(rows[0][0])


def _reserve(path: Path, size: int) -> None:
    """Allocate `size` bytes at `path` (real blocks, not a sparse file), then remove it."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # A file system without fallocate: write the bytes instead.
            os.write(fd, b"\0" * size)
        os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
