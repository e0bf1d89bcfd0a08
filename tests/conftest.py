"""Shared fixtures: real PostgreSQL (ops.store.embedded), never a mock.

The servers run pgserver's PostgreSQL 16 where pgserver is installed (CPython <= 3.12),
else the system's (e.g. Debian's 15 under /usr/lib/postgresql on 3.13): the same fallback as
`ops up` (`embedded.find_binaries`). Neither: the fixtures fail with what to install.

Fixtures (use them from any test folder):
- `pg_server` (session): an embedded Postgres in a tmp dir, unix socket only, with
  fsync off (tests never survive a power cut). Holds a migrated template database.
- `pg_url` (function): URL of a brand-new database cloned from the migrated template
  (`CREATE DATABASE ... TEMPLATE`): isolated per test, current schema, ~50 ms. Dropped after.
- `pg_empty_url` (function): URL of a brand-new database with no schema (migration tests).
- `pg_dedicated` (function): an `EmbeddedPostgres` of the test's own, started, its
  `postgres` database migrated; connect with `pg_dedicated.url()`. Stop/start/kill it freely
  (`.stop(mode="fast")`, `.start()`, `.kill()` = SIGKILL of the postmaster) for outage
  tests; it is stopped at teardown. Costs an initdb (about a second).
- `ops_env` (function): a `RuntimeEnv` with OPS_HOME in tmp and OPS_DATABASE_URL = `pg_url`.
- `ops_store` (function, async): `Store.open(ops_env, process="test")`, closed after.

- `pg_home` (function): an empty directory for a Postgres-running OPS_HOME, outside
  pytest's tmp tree (see below), removed after the test.

`TEST_PG_OPTIONS` are the server flags used for every test cluster.

Why clusters live under /tmp/ops-test-* and not in `tmp_path`: as root, postgres runs as
user `pgserver`, which must traverse every parent directory. pytest resets
/tmp/pytest-of-root to mode 0700 whenever *any* pytest session starts on the host, which
would lock a running test cluster out of its own data directory.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ops.env import RuntimeEnv
from ops.store import Store
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


def _outside_pytest_tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="ops-test-", dir="/tmp"))


@pytest.fixture
def pg_home() -> Iterator[Path]:
    home = _outside_pytest_tmp()
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    base = _outside_pytest_tmp()
    server = EmbeddedPostgres(base / "pg", options=TEST_PG_OPTIONS)
    try:
        server.start()
        asyncio.run(_admin(server.url(), f"CREATE DATABASE {TEMPLATE_DB}"))
        asyncio.run(migrate(server.url(TEMPLATE_DB)))
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


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
def pg_dedicated(pg_home: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(pg_home / "pg", options=TEST_PG_OPTIONS)
    try:
        server.start()
        asyncio.run(migrate(server.url()))
        yield server
    finally:
        server.stop(mode="immediate")


@pytest.fixture
def ops_env(tmp_path: Path, pg_url: str) -> RuntimeEnv:
    home = tmp_path / "ops_home"
    home.mkdir()
    return RuntimeEnv(config_path=tmp_path / "ops.toml", home=home, database_url=pg_url)


@pytest.fixture
async def ops_store(ops_env: RuntimeEnv) -> AsyncIterator[Store]:
    store = await Store.open(ops_env, process="test")
    try:
        yield store
    finally:
        await store.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first, their declared timeout standing in for their length (a file
    marked slow without one counts as the ini timeout): on the suite's xdist workers
    (scripts/test.sh, --dist loadfile) a long file started last is the whole run's tail,
    while short files fill the gaps at the end. Stable: the order within a file, and of
    files of equal weight, is kept (no test may depend on it anyway)."""
    default = float(config.getini("timeout") or 0)

    def weight(item: pytest.Item) -> float:
        marker = item.get_closest_marker("timeout")
        if marker is not None and marker.args:
            return float(marker.args[0])
        return default if item.get_closest_marker("slow") is not None else 0.0

    per_file: dict[Path, float] = {}
    for item in items:
        per_file[item.path] = max(per_file.get(item.path, 0.0), weight(item))
    items.sort(key=lambda item: -per_file[item.path])
