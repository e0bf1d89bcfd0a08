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

Also here, at the end: the test tiers (`unit`, `integration`, `system`), how each test
gets exactly one, and the guard that keeps the unit and integration tiers honest.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from ops.runtime.env import RuntimeEnv
from ops.sim import Simulator
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


# --- Test tiers ------------------------------------------------------------------------
# Every test gets exactly one of the markers `unit`, `integration`, `system` (pyproject
# declares them; scripts/test.sh --unit / --fast select them):
# - an explicit tier marker (on the module, class or function: one, not several);
# - else `system` for tests/e2e and tests/chaos (whole stacks);
# - else `integration` for a test using a Postgres or simulator fixture;
# - else `unit`.
# The tiers are kept honest while tests run: a unit test that starts a process, connects
# to Postgres or starts the simulator fails, and so does an integration test that starts
# supervisord, each saying which tier to mark it.

TIERS = ("unit", "integration", "system")
SYSTEM_DIRS = ("e2e", "chaos")
#: pg_url, ops_env, ops_store, ... all request pg_server.
INTEGRATION_FIXTURES = frozenset({"pg_server", "pg_dedicated", "pg_home", "sim"})
TIER = pytest.StashKey[str]()
_VIOLATIONS = pytest.StashKey[list[str]]()
_REPORTED = pytest.StashKey[int]()
_TESTS = Path(__file__).resolve().parent


def tier_of(item: pytest.Item) -> str:
    explicit = {m.name for m in item.iter_markers() if m.name in TIERS}
    if len(explicit) > 1:
        raise pytest.UsageError(f"{item.nodeid}: tier markers {sorted(explicit)}: one only")
    if explicit:
        return explicit.pop()
    if item.path.resolve().relative_to(_TESTS).parts[0] in SYSTEM_DIRS:
        return "system"
    if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return "integration"
    return "unit"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each test its tier marker (before `-m` selects on it), then order files
    longest first, their declared timeout standing in for their length (a system file
    without one counts as the ini timeout): on the suite's xdist workers (scripts/test.sh,
    --dist loadfile) a long file started last is the whole run's tail, while short files
    fill the gaps at the end. The sort is stable, so the shuffled order pytest-randomly
    made within a file, and among files of equal weight, is kept."""
    default = float(config.getini("timeout") or 0)
    for item in items:
        item.stash[TIER] = tier_of(item)
        item.add_marker(item.stash[TIER])

    def weight(item: pytest.Item) -> float:
        marker = item.get_closest_marker("timeout")
        if marker is not None and marker.args:
            return float(marker.args[0])
        return default if item.stash[TIER] == "system" else 0.0

    per_file: dict[Path, float] = {}
    for item in items:
        per_file[item.path] = max(per_file.get(item.path, 0.0), weight(item))
    items.sort(key=lambda item: -per_file[item.path])


def _starts_supervisord(args: object) -> bool:
    argv = [str(a) for a in args] if isinstance(args, list | tuple) else [str(args)]
    return any(Path(a).name.startswith("supervisord") or a == "supervisor.supervisord"
               for a in argv)


def _guard(item: pytest.Item, mp: pytest.MonkeyPatch) -> None:
    """Patch process start, Postgres connect and simulator start to refuse what the
    item's tier excludes; refusals are also recorded, in case the code swallows them."""
    tier = item.stash.get(TIER, "unit")
    if tier == "system":
        return
    violations = item.stash.setdefault(_VIOLATIONS, [])

    def refuse(what: str, mark: str) -> NoReturn:
        message = f"this {tier} test {what}: mark it {mark} (pytest.mark.{mark}, tests/conftest.py)"
        violations.append(message)
        pytest.fail(message, pytrace=False)

    execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def checked_execute_child(self: subprocess.Popen[Any], args: object,
                              *rest: Any, **kw: Any) -> None:
        if tier == "unit":
            refuse(f"starts a process ({args!r})", "integration")
        if _starts_supervisord(args):
            refuse(f"starts supervisord ({args!r})", "system")
        execute_child(self, args, *rest, **kw)

    mp.setattr(subprocess.Popen, "_execute_child", checked_execute_child)
    if tier != "unit":
        return

    def no_fork() -> int:
        refuse("forks", "integration")

    connect_ = socket.socket.connect

    def checked_connect(self: socket.socket, address: Any) -> None:
        if (self.family == socket.AF_UNIX and ".s.PGSQL." in str(address)
                and os.path.exists(address)):
            refuse(f"connects to Postgres ({address})", "integration")
        connect_(self, address)

    async def no_simulator(self: Simulator, *args: Any, **kw: Any) -> None:
        refuse("starts the simulator (a server)", "integration")

    mp.setattr(os, "fork", no_fork)
    mp.setattr(socket.socket, "connect", checked_connect)
    mp.setattr(Simulator, "start", no_simulator)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """A test's fixtures (wider-scoped ones it is the first to need included) are set up
    under its tier's guard. Teardown is not guarded: the last test of a worker or module
    tears down what earlier tests of any tier set up (the session's Postgres, say)."""
    with pytest.MonkeyPatch.context() as mp:
        _guard(item, mp)
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """The test itself runs under its tier's guard."""
    with pytest.MonkeyPatch.context() as mp:
        _guard(item, mp)
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A phase that passed although the tier guard refused something in it (the code
    under test caught the refusal) fails, with the guard's message."""
    report: pytest.TestReport = yield
    violations = item.stash.get(_VIOLATIONS, [])
    seen = item.stash.get(_REPORTED, 0)
    if len(violations) > seen:
        item.stash[_REPORTED] = len(violations)
        if report.passed:
            report.outcome = "failed"
            report.longrepr = "\n".join(violations[seen:])
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    """The shuffle's seed, also under -q (the header that names it is not shown there)."""
    seed = config.getoption("randomly_seed", None) if config.pluginmanager.hasplugin(
        "randomly") else None
    if seed is not None:
        terminalreporter.write_line(
            f"tests ran shuffled: reproduce the order with --randomly-seed={seed}"
            " (-p no:randomly: file order)")
