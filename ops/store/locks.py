"""One active instance per (account, role): a Postgres session advisory lock (invariant 7).

`SingletonLock` holds `pg_try_advisory_lock(key)` on a dedicated connection (never a pool
connection: a session lock lives exactly as long as its connection, and a pool would hand
that connection to other work). A second copy of the role, on this host or another, polls
the same key, logs that it waits and who holds the lock, and takes over as soon as the
holder's session ends (process killed, host gone: Postgres drops the session and with it
the lock). The connection's `application_name` names the holder for `pg_stat_activity`.

While held, `check()` pings the connection. If the connection is lost, the lock may be
lost with it: `check()` reconnects and tries to take it again at once. Re-taken -> the
role goes on. Held by someone else -> `LockLost` (the role must stop: another instance is
active). Postgres unreachable -> the role goes on: nobody else can take the lock while
Postgres is away either, and the stream must keep recording through an outage (the store
buffers); the first successful reconnect settles who holds it. The window in which two
copies may both act is one check interval after Postgres returns; both the stream (events
keyed) and the dispatcher (deterministic client_order_id) are idempotent within it.

What does not live here: what a role does while waiting (ops.roles.runtime decides).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.store.postgres import is_outage, redact_url

log = logging.getLogger(__name__)

_HOLDER_SQL = """
SELECT a.application_name, a.pid, coalesce(a.client_addr::text, 'local') AS addr
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1
LIMIT 1
"""


def lock_key(account: str | None, role: str) -> int:
    """The advisory lock key of (account, role): a stable signed 64-bit hash."""
    digest = hashlib.sha256(f"ops-pipeline:{account or '-'}:{role}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LockLost(RuntimeError):
    """The lock was lost and another instance now holds it: this one must stop."""


@dataclass(slots=True)
class LockStatus:
    """For heartbeats and logs."""

    state: str = "idle"  # idle | waiting | db-unreachable | held | released
    holder: str | None = None  # who holds it while we wait (application_name, pid, addr)
    attempts: int = 0
    reacquired: int = 0  # times the lock was re-taken after a lost connection
    acquired_at: float | None = None  # time.time()


class SingletonLock:
    """`await acquire()` (waits), `await check()` while running, `await release()`."""

    def __init__(
        self,
        url: str,
        account: str | None,
        role: str,
        process: str,
        *,
        poll_s: float = 1.0,
        connect_timeout_s: float = 5.0,
        log_every_s: float = 30.0,
    ) -> None:
        if not poll_s > 0:
            raise ValueError(f"SingletonLock poll_s must be > 0, got {poll_s!r}")
        self.url = url
        self.key = lock_key(account, role)
        self.name = f"{account or '-'}:{role}"
        self.process = process
        self.poll_s = poll_s
        self.connect_timeout_s = connect_timeout_s
        self.log_every_s = log_every_s
        self.status = LockStatus()
        self.app_name = f"ops-lock {process} pid={os.getpid()} host={socket.gethostname()}"[:63]
        self._conn: asyncpg.Connection | None = None
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        self._classid, self._objid = unsigned >> 32, unsigned & 0xFFFF_FFFF

    @property
    def held(self) -> bool:
        return self.status.state == "held"

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.url,
            timeout=self.connect_timeout_s,
            command_timeout=self.connect_timeout_s,
            server_settings={"application_name": self.app_name},
        )

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
            # Also after a failed close: a connection the server dropped keeps its
            # transport open until aborted.
            with contextlib.suppress(Exception):
                conn.terminate()

    async def _try_once(self) -> bool:
        """One attempt; raises on connection problems (caller decides)."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        self.status.attempts += 1
        got = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))
        if got:
            self.status.state = "held"
            self.status.holder = None
            self.status.acquired_at = time.time()
        return got

    async def _holder(self) -> str | None:
        if self._conn is None:
            return None
        try:
            row = await self._conn.fetchrow(_HOLDER_SQL, self._classid, self._objid)
        except Exception:
            return None
        if row is None:
            return None
        return f"{row['application_name'] or '?'} (backend pid {row['pid']}, {row['addr']})"

    async def acquire(
        self,
        stop: asyncio.Event | None = None,
        on_state: Callable[[LockStatus], None] | None = None,
    ) -> bool:
        """Wait until the lock is ours (True) or `stop` is set (False).

        Logs when it starts waiting (naming the holder) and every `log_every_s` after.
        """
        last_log = -1e9
        last_state = ""
        err = ""
        while True:
            if stop is not None and stop.is_set():
                return False
            try:
                if await self._try_once():
                    log.info("singleton lock %s acquired (%s)", self.name, self.app_name)
                    if on_state:
                        on_state(self.status)
                    return True
                self.status.state = "waiting"
                self.status.holder = await self._holder()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_outage(exc) and not isinstance(exc, OSError | asyncpg.PostgresError):
                    raise
                await self._close()
                self.status.state = "db-unreachable"
                self.status.holder = None
                err = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            if self.status.state != last_state or now - last_log >= self.log_every_s:
                if self.status.state == "waiting":
                    log.warning(
                        "singleton lock %s is held by %s: another instance is active; "
                        "this one waits and takes over when it ends",
                        self.name, self.status.holder or "another session",
                    )
                else:
                    log.warning(
                        "singleton lock %s: Postgres unreachable at %s (%s); waiting and "
                        "retrying", self.name, redact_url(self.url), err,
                    )
                last_log, last_state = now, self.status.state
            if on_state:
                on_state(self.status)
            await self._sleep(stop)

    async def _sleep(self, stop: asyncio.Event | None) -> None:
        if stop is None:
            await asyncio.sleep(self.poll_s)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_s):
                await stop.wait()

    async def check(self) -> None:
        """While held: ping; after a lost connection re-take the lock or raise LockLost."""
        if not self.held and self.status.state != "db-unreachable":
            raise RuntimeError(f"singleton lock {self.name}: check() before acquire()")
        try:
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.fetchval("SELECT 1")
                return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("singleton lock %s: lock connection lost (%s: %s); re-taking it",
                      self.name, type(exc).__name__, exc)
        await self._close()
        try:
            got = await self._try_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Nobody can take the lock while Postgres is unreachable: go on, retry next check.
            self.status.state = "db-unreachable"
            log.warning("singleton lock %s: Postgres unreachable (%s); still running, "
                        "will re-take the lock when it answers", self.name, type(exc).__name__)
            return
        if got:
            self.status.reacquired += 1
            log.warning("singleton lock %s re-taken after a lost connection", self.name)
            return
        holder = await self._holder()
        await self._close()
        self.status.state = "lost"
        raise LockLost(f"singleton lock {self.name} lost: now held by "
                       f"{holder or 'another session'}; this instance must stop")

    async def release(self) -> None:
        """Unlock and close (idempotent)."""
        conn = self._conn
        if conn is not None and not conn.is_closed() and self.held:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    conn.fetchval("SELECT pg_advisory_unlock($1)", self.key), 2.0
                )
        await self._close()
        if self.status.state != "lost":
            self.status.state = "released"


class LockKeeper:
    """A daemon service: `check()` the held lock every `interval_s`; LockLost ends it
    with an error, so the daemon stops the role (exit 1)."""

    def __init__(self, lock: SingletonLock, interval_s: float = 2.0) -> None:
        self.name = f"lock:{lock.name}"
        self.lock = lock
        self.interval_s = interval_s
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            await self.lock.check()
