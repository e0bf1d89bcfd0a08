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

Durability: journal_mode=WAL with synchronous=FULL, so a committed append survives a power
cut; busy_timeout lets several processes write without "database is locked" errors. Write
transactions use BEGIN IMMEDIATE so they queue for the write lock up front.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from ops.store.ops import LatestEntry, Op, dumps

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000

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

    def __init__(self, path: Path, conn: aiosqlite.Connection):
        self.path = path
        self._conn = conn
        # One connection is shared by the writer tasks and the drainer of a process; a
        # statement of one must never run inside another's transaction or open cursor.
        self._mutex = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Buffer:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.executescript(_SCHEMA)
        except BaseException:
            await conn.close()
            raise
        return cls(path, conn)

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
        async with self._mutex:
            await self._write_locked(rows, latest)

    async def _write_locked(
        self, rows: Sequence[tuple[str, str, str, float]], latest: Sequence[LatestEntry]
    ) -> None:
        c = self._conn
        await c.execute("BEGIN IMMEDIATE")
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
        except BaseException:
            await c.execute("ROLLBACK")
            raise

    async def delete_through(self, seq: int) -> None:
        """Drop replayed rows: every pending row with seq <= `seq`."""
        async with self._mutex:
            await self._conn.execute("DELETE FROM pending WHERE seq <= ?", (seq,))

    async def quarantine(self, row: PendingRow, error: str) -> None:
        """Move a row Postgres refused into `dead`, atomically."""
        async with self._mutex:
            c = self._conn
            await c.execute("BEGIN IMMEDIATE")
            try:
                await c.execute(
                    "INSERT OR REPLACE INTO dead (seq, kind, payload, process, created_at, "
                    "error, failed_at) VALUES (?,?,?,?,?,?,?)",
                    (row.seq, row.kind, row.payload_text, row.process, row.created_at,
                     error, time.time()),
                )
                await c.execute("DELETE FROM pending WHERE seq = ?", (row.seq,))
                await c.execute("COMMIT")
            except BaseException:
                await c.execute("ROLLBACK")
                raise

    # --- reads ------------------------------------------------------------------------------

    async def _fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self._mutex:
            return list(await self._conn.execute_fetchall(sql, args))

    async def has_pending(self) -> bool:
        return bool(await self._fetchall("SELECT 1 FROM pending LIMIT 1"))

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
