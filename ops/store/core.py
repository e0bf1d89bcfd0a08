"""What every part of `Store` shares: its settings, its state, and the notes each part
takes of Postgres and the buffer (reachable or not, writable or not).

`Store` (ops/store/store.py) is put together from `StoreCore` and two parts built on it:
`Replay` (ops/store/replay.py: the drainer) and `Reads` (ops/store/reads.py). The state is
assigned by `Store.__init__` and declared here, so each part is checked against it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.core.backoff import Backoff
from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.runtime.errors import describe_db_error
from ops.store.buffer import PROBE_HEADROOM_BYTES, Buffer, BufferStatus
from ops.store.errors import BufferUnwritable
from ops.store.postgres import redact_url, unavailable_on_outage

# The Store's log lines keep the one logger name they always had, whichever module of
# the split holds the code that writes them.
log = logging.getLogger("ops.store.store")

T = TypeVar("T")
P = ParamSpec("P")


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


class StoreCore:
    """The state and shared behaviour of a `Store`; see ops/store/store.py."""

    url: str
    process: str
    settings: StoreSettings
    _buffer: Buffer
    _pool: asyncpg.Pool
    _reachable: bool  # whether the last attempt to reach Postgres succeeded
    _stop: asyncio.Event
    _wake: asyncio.Event
    _draining: asyncio.Lock
    _drainer: asyncio.Task[None] | None
    _closed: bool
    replayed: int  # rows this process replayed (a progress counter for heartbeats)
    refused: int  # writes stored nowhere (StorageUnavailable raised)
    _refused_at: float | None  # loop time of the last one
    _refused_logged_at: float | None
    _unwritable: str | None  # the buffer's last write error, None when fine
    _replayed_through: int  # highest seq replayed whose rows the buffer still holds
    _pg_retry_at: float  # loop time; see Store._write_unbuffered
    _reopen_at: float  # loop time; see _reopen_if_read_only
    _retired: list[Buffer]  # read-only buffers replaced by a writable one
    _mark_table: bool  # see Replay._has_marks
    _mark_warned: bool

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

    def _note_unwritable(self, exc: BufferUnwritable) -> None:
        if self._unwritable is None:
            log.error("%s; writes stay possible only while Postgres is up", exc)
        self._unwritable = str(exc)

    def _note_writable(self) -> None:
        if self._unwritable is not None:
            log.warning("outage buffer %s is writable again", self._buffer.path)
        self._unwritable = None

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

    async def buffer_status(self) -> BufferStatus:
        """Pending rows, age of the oldest, and quarantined rows."""
        return await self._buffer.status()
