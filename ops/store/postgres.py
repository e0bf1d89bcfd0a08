"""asyncpg connections and pools with timeouts and JSON codecs, and outage classification.

`is_outage(exc)` is the one place that decides whether a failed call means "the database
is away or unusable right now" (a write goes to the SQLite buffer, a read falls back to
it, a caller outside ops/store gets `StorageUnavailable`) or "this call is wrong"
(constraint violation, bad SQL, bad data: the error propagates as it is). Getting this
wrong either loses data (buffering a write that can never apply would be retried
forever) or stops the pipeline (raising on a transient outage), so it is deliberately
explicit. `unavailable_on_outage()` turns the outages of the calls it wraps into
`StorageUnavailable`: every Postgres call the store makes on a caller's behalf runs in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.store.errors import StorageUnavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0

#: SQLSTATE classes meaning the server is away: 08 connection exception (refused, lost,
#: "connection does not exist"); 57 operator intervention (57P01 admin shutdown, 57P02
#: crash shutdown, 57P03 cannot connect now, and 57014 query canceled: a server-side
#: statement timeout, the twin of the client's command timeout).
_OUTAGE_CLASSES = frozenset({"08", "57"})
#: Single codes: 53300 too many connections; 25006 read-only transaction (a failed-over
#: old primary).
_OUTAGE_STATES = frozenset({"53300", "25006"})
# The last resort, by message: asyncpg raises these as plain InterfaceError (no subclass,
# no SQLSTATE), where "another operation is in progress" (API misuse, a bug) must
# propagate instead.
_CLOSED_MARKERS = ("connection is closed", "connection was closed", "pool is closing",
                   "pool is closed", "cannot connect", "connection lost")
# ... and InternalClientError, seen (tests/store/test_is_outage.py) when the server
# terminated a connection while it was idle: the protocol's state is confused, the
# connection dead. Buffering is the safe side: a write that can never apply is
# quarantined at replay.
_CONFUSED_MARKERS = ("another operation", "cannot switch to state")


def is_outage(exc: BaseException) -> bool:
    """True when `exc` means the database is unreachable or unusable right now: by type
    (timeouts, OSError and ConnectionError, StorageUnavailable), by SQLSTATE for server
    errors, and by message only for the two asyncpg client errors without either."""
    if isinstance(exc, TimeoutError | OSError | StorageUnavailable):
        # Command/connect timeouts; refused, reset, broken pipe, the unix socket gone;
        # StorageUnavailable: already classified (or Postgres away and the buffer full).
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", None) or "")
        return state[:2] in _OUTAGE_CLASSES or state in _OUTAGE_STATES
    if isinstance(exc, asyncpg.InternalClientError):
        return any(marker in str(exc) for marker in _CONFUSED_MARKERS)
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc).lower()
        return any(marker in text for marker in _CLOSED_MARKERS)
    return False


@contextlib.contextmanager
def unavailable_on_outage() -> Iterator[None]:
    """Inside it, an error meaning an outage leaves as `StorageUnavailable` (the driver's
    error its cause, its message the driver's); any other error leaves as it is."""
    try:
        yield
    except StorageUnavailable:
        raise
    except Exception as exc:
        if is_outage(exc):
            raise StorageUnavailable(str(exc)) from exc
        raise


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


async def check_connect(url: str, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Connect once and close: returns when the server accepts connections, raises
    `StorageUnavailable` when it is away (any other error, a bad password or database,
    as it is)."""
    with unavailable_on_outage():
        conn = await connect(url, connect_timeout=connect_timeout)
    await conn.close()


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
