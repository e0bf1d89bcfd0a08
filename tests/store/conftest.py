"""Store-test fixtures (the Postgres ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from ops.store.postgres import connect


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for assertions."""
    conn = await connect(pg_url)
    try:
        yield conn
    finally:
        await conn.close()
