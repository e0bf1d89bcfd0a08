"""asyncpg connections and pools with timeouts and JSON codecs, and outage classification.

`is_outage(exc)` is the one place that decides whether a failed write goes to the SQLite
buffer (the database is away or unusable right now) or propagates (the write itself is
wrong: constraint violation, bad SQL, bad data). Getting this wrong either loses data
(buffering a write that can never apply would be retried forever) or stops the pipeline
(raising on a transient outage), so it is deliberately explicit.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.store.errors import StorageUnavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0

# Interface errors that mean "this connection is gone", as opposed to API misuse such as
# "another operation is in progress" (a bug, which must propagate).
_CLOSED_MARKERS = ("connection is closed", "connection was closed", "pool is closing",
                   "pool is closed", "cannot connect", "connection lost")


def is_outage(exc: BaseException) -> bool:
    """True when `exc` means the database is unreachable or unusable right now."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return True
    if isinstance(exc, StorageUnavailable):
        # Postgres unreachable and the buffer full: keep the write and retry it later.
        return True
    if isinstance(exc, OSError):
        # ConnectionRefusedError, FileNotFoundError (unix socket gone), resets, broken pipes.
        return True
    if isinstance(
        exc,
        (
            asyncpg.exceptions.PostgresConnectionError,  # class 08
            asyncpg.exceptions.OperatorInterventionError,  # 57: shutdowns, cannot connect now
            asyncpg.exceptions.TooManyConnectionsError,  # 53300
            asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a failed-over old primary
        ),
    ):
        return True
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # Seen (tests/store/test_is_outage.py) when the server terminated the connection
        # while it was idle: asyncpg's protocol state is confused, the connection is dead.
        # Buffering is the safe side: a write that can never apply is quarantined at replay.
        return "another operation" in str(exc) or "cannot switch to state" in str(exc)
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        text = str(exc).lower()
        return any(marker in text for marker in _CLOSED_MARKERS)
    return False


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


async def connect(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    command_timeout: float = COMMAND_TIMEOUT_S,
) -> asyncpg.Connection:
    """One connection with the project's codecs and timeouts."""
    conn: asyncpg.Connection = await asyncpg.connect(
        url, timeout=connect_timeout, command_timeout=command_timeout
    )
    await _init_connection(conn)
    return conn


# Sent at connect (no extra round trip). A batch of trade updates sorts ~1 kB rows (batch
# order, newest state per order): at the default 4MB, a 5,000-update batch sorted on disk.
# work_mem is a per-sort ceiling, taken only by the sorts that need it.
SERVER_SETTINGS = {"work_mem": "32MB"}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (a round trip per write, under load a loop
    turn too). Pool connections carry no session state to reset: LISTEN and advisory locks
    live on dedicated connections (signals.py, locks.py), settings are set at connect, and
    asyncpg itself still rolls back a transaction left open before calling this."""


async def create_pool(
    url: str,
    *,
    min_size: int = 0,
    max_size: int = 4,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    command_timeout: float = COMMAND_TIMEOUT_S,
) -> asyncpg.Pool:
    """A pool that connects lazily (min_size=0), so it can be created during an outage."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        init=_init_connection,
        # Recycle idle connections so a restarted server is not met with a stale socket.
        max_inactive_connection_lifetime=60.0,
        server_settings=SERVER_SETTINGS,
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, grace_s: float = 2.0) -> None:
    """Close gracefully within `grace_s`, then terminate whatever is still busy."""
    try:
        await asyncio.wait_for(pool.close(), timeout=grace_s)
    except Exception as exc:  # closing must never raise
        log.debug("pool close did not finish cleanly (%s); terminating", exc)
        pool.terminate()
