"""`is_outage` on errors produced by a real server: outages buffer, real errors propagate."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from ops.runtime.errors import describe_db_error
from ops.store.embedded import EmbeddedPostgres
from ops.store.errors import StorageUnavailable
from ops.store.postgres import connect, is_outage, redact_url, unavailable_on_outage


async def _error_of(coro: object) -> BaseException:
    assert asyncio.iscoroutine(coro)
    try:
        await coro
    except Exception as exc:  # the error under test
        return exc
    raise AssertionError("expected an error")


async def test_missing_socket_is_outage(tmp_path: Path) -> None:
    exc = await _error_of(connect(f"postgresql://postgres@/postgres?host={tmp_path}"))
    assert isinstance(exc, OSError) and is_outage(exc)


async def test_stopped_and_killed_server_are_outages(pg_dedicated: EmbeddedPostgres) -> None:
    held = await connect(pg_dedicated.url())
    try:
        pg_dedicated.stop(mode="fast")
        in_flight = await _error_of(held.fetchval("SELECT 1"))
        assert is_outage(in_flight), repr(in_flight)
        closed = await _error_of(held.fetchval("SELECT 1"))
        assert is_outage(closed), repr(closed)
        refused = await _error_of(connect(pg_dedicated.url()))
        assert is_outage(refused), repr(refused)
    finally:
        await held.close()
    pg_dedicated.start()
    pg_dedicated.kill()  # SIGKILL: the socket file stays, nobody accepts
    crashed = await _error_of(connect(pg_dedicated.url(), connect_timeout=2))
    assert is_outage(crashed), repr(crashed)


async def test_terminated_backend_is_outage(pg_url: str) -> None:
    victim = await connect(pg_url)
    admin = await connect(pg_url)
    try:
        pid = victim.get_server_pid()
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        exc = await _error_of(victim.fetchval("SELECT 1"))
        # Which one depends on when asyncpg reads the FATAL the server sent the idle socket.
        assert isinstance(exc, (asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError,
                                asyncpg.InterfaceError, asyncpg.InternalClientError)), repr(exc)
        assert is_outage(exc)
    finally:
        await victim.close()
        await admin.close()


async def test_too_many_connections_is_outage(pg_url: str) -> None:
    role = f"limited_{os.getpid()}"
    admin = await connect(pg_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
        url = pg_url.replace("postgresql://postgres@", f"postgresql://{role}@")
        first = await connect(url)
        try:
            exc = await _error_of(connect(url))
        finally:
            await first.close()
        assert isinstance(exc, asyncpg.TooManyConnectionsError) and is_outage(exc)
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_command_timeout_is_outage(pg_url: str) -> None:
    conn = await connect(pg_url, command_timeout=0.2)
    try:
        exc = await _error_of(conn.execute("SELECT pg_sleep(10)"))
        assert isinstance(exc, TimeoutError) and is_outage(exc)
    finally:
        await conn.close()


async def test_real_errors_are_not_outages(pg_url: str) -> None:
    conn = await connect(pg_url)
    try:
        await conn.execute("INSERT INTO heartbeats (process, role, pid, ts, started_at) "
                           "VALUES ('p', 'r', 1, now(), now())")
        errors = [
            await _error_of(conn.execute(
                "INSERT INTO heartbeats (process, role, pid, ts, started_at) "
                "VALUES ('p', 'r', 1, now(), now())")),
            await _error_of(conn.execute("SELEC 1")),
            await _error_of(conn.execute("SELECT * FROM no_such_table")),
            await _error_of(conn.execute(
                "INSERT INTO signals (account, symbol, side, qty) VALUES ('a', 'b', 'up', 1)")),
            await _error_of(conn.execute("SELECT 'x'::numeric")),
        ]
        # Two commands at once on one connection: API misuse, a bug, not an outage.
        results = await asyncio.gather(conn.execute("SELECT pg_sleep(0.2)"),
                                       conn.execute("SELECT 1"), return_exceptions=True)
        errors += [r for r in results if isinstance(r, BaseException)]
    finally:
        await conn.close()
    assert [type(e).__name__ for e in errors] == [
        "UniqueViolationError", "PostgresSyntaxError", "UndefinedTableError",
        "CheckViolationError", "InvalidTextRepresentationError", "InterfaceError"]
    assert not any(is_outage(e) for e in errors)
    base, query = pg_url.split("?", 1)
    missing_db = await _error_of(connect(f"{base.rsplit('/', 1)[0]}/no_such_db?{query}"))
    assert isinstance(missing_db, asyncpg.InvalidCatalogNameError)
    assert not is_outage(missing_db)


@pytest.mark.parametrize("cls", [asyncpg.CannotConnectNowError, asyncpg.CrashShutdownError,
                                 asyncpg.ReadOnlySQLTransactionError])
def test_server_states_we_cannot_cheaply_provoke(cls: type[Exception]) -> None:
    # "the database system is starting up" / crash recovery / a failed-over old primary.
    assert is_outage(cls("x"))


def test_redact_url_hides_password() -> None:
    assert redact_url("postgresql://ops:s3cret@db:5432/ops") == "postgresql://ops:***@db:5432/ops"
    assert redact_url("postgresql://postgres@/x?host=/tmp") == "postgresql://postgres@/x?host=/tmp"


def test_an_outage_leaves_the_store_as_storage_unavailable_with_its_cause() -> None:
    cause = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(StorageUnavailable) as caught, unavailable_on_outage():
        raise cause
    assert caught.value.__cause__ is cause and str(caught.value) == str(cause)
    # Messages name the driver's error, as they did before the store wrapped it.
    assert describe_db_error(caught.value) == \
        "ConnectionRefusedError: [Errno 111] Connection refused"
    # Anything else is the caller's to see as it is.
    with pytest.raises(asyncpg.UniqueViolationError), unavailable_on_outage():
        raise asyncpg.UniqueViolationError("duplicate key")
