"""Shared fixtures: real PostgreSQL (embedded via pgserver), never a mock.

Fixtures (use them from any test folder):
- `pg_server` (session): an embedded Postgres 16 in a tmp dir, unix socket only, with
  fsync off (tests never survive a power cut). Holds a migrated template database.
- `pg_url` (function): URL of a brand-new database cloned from the migrated template
  (`CREATE DATABASE ... TEMPLATE`): isolated per test, current schema, ~50 ms. Dropped after.
- `pg_empty_url` (function): URL of a brand-new database with no schema (migration tests).
- `pg_dedicated` (function): an `EmbeddedPostgres` of the test's own, started, its
  `postgres` database migrated; connect with `pg_dedicated.url()`. Stop/start/kill it freely
  (`.stop(mode="fast")`, `.start()`, `.kill()` = SIGKILL of the postmaster) for outage
  tests; it is stopped at teardown. Costs an initdb (about a second).
- `ops_env` (function): a `RuntimeEnv` with OPS_HOME in tmp and OPS_DATABASE_URL = `pg_url`.

`TEST_PG_OPTIONS` are the server flags used for every test cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.env import RuntimeEnv
from ops.store.embedded import EmbeddedPostgres
from ops.store.migrate import migrate
from ops.store.postgres import connect

TEST_PG_OPTIONS = (
    "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    "-c", "max_connections=200",
)
TEMPLATE_DB = "ops_template"
_counter = itertools.count()


async def _admin(url: str, *statements: str) -> None:
    conn = await connect(url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def _new_db_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pgsession") / "pg", options=TEST_PG_OPTIONS)
    server.start()
    try:
        asyncio.run(_admin(server.url(), f"CREATE DATABASE {TEMPLATE_DB}"))
        asyncio.run(migrate(server.url(TEMPLATE_DB)))
        yield server
    finally:
        server.stop(mode="immediate")


def _fresh_db(server: EmbeddedPostgres, template: str, prefix: str) -> Iterator[str]:
    name = _new_db_name(prefix)
    asyncio.run(_admin(server.url(), f"CREATE DATABASE {name} TEMPLATE {template}"))
    try:
        yield server.url(name)
    finally:
        asyncio.run(_admin(server.url(), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def pg_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    yield from _fresh_db(pg_server, TEMPLATE_DB, "t")


@pytest.fixture
def pg_empty_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    yield from _fresh_db(pg_server, "template0", "e")


@pytest.fixture
def pg_dedicated(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pgded", options=TEST_PG_OPTIONS)
    server.start()
    try:
        asyncio.run(migrate(server.url()))
        yield server
    finally:
        server.stop(mode="immediate")


@pytest.fixture
def ops_env(tmp_path: Path, pg_url: str) -> RuntimeEnv:
    home = tmp_path / "ops_home"
    home.mkdir()
    return RuntimeEnv(config_path=tmp_path / "ops.toml", home=home, database_url=pg_url)
