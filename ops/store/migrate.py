"""Versioned schema migrations (ops/store/migrations/NNNN_name.sql) and `ops db migrate`.

Each file is applied once, in version order, in its own transaction, and recorded in
`schema_migrations(version, name, checksum, applied_at)`. The whole run holds a Postgres
advisory lock, so concurrent migrators (several processes starting at once) serialise and
the later ones find nothing to do. Editing a migration that was already applied is an
error naming the file: ship a new migration instead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import re
import sys
from dataclasses import dataclass, field
from importlib import resources

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.runtime.errors import underlying
from ops.store.errors import StorageUnavailable
from ops.store.postgres import connect, redact_url, unavailable_on_outage

log = logging.getLogger(__name__)

# Arbitrary constant, unique to this project: the key of the migration advisory lock.
MIGRATION_LOCK_KEY = 0x6F70735F6D6967  # "ops_mig"
_NAME = re.compile(r"^(?P<version>\d{4})_(?P<slug>[a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, or an applied one was edited."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # file stem, e.g. "0001_initial"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationResult:
    applied: list[str]
    version: int
    # What the applied migrations reported (RAISE NOTICE), "<migration>: <message>", e.g.
    # how many duplicate rows a clean-up removed.
    notes: list[str] = field(default_factory=list)


def load_migrations() -> list[Migration]:
    """Every bundled migration, sorted by version; malformed names are an error."""
    found: list[Migration] = []
    root = resources.files("ops.store") / "migrations"
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _NAME.match(entry.name)
        if m is None:
            raise MigrationError(
                f"migration file {entry.name!r} does not match NNNN_lower_snake.sql"
            )
        found.append(Migration(int(m["version"]), entry.name[:-4], entry.read_text()))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {sorted(versions)}")
    return found


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def apply_migrations(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> MigrationResult:
    """Apply what is missing under the advisory lock; a no-op when up to date."""
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_LEDGER)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: (r["name"], r["checksum"]) for r in rows}
        done: list[str] = []
        notes: list[str] = []
        current: list[str] = []

        def listen(_conn: object, message: object) -> None:
            text = getattr(message, "message", None)
            if isinstance(text, str) and current:
                notes.append(f"{current[0]}: {text}")

        conn.add_log_listener(listen)
        for mig in migrations:
            if mig.version in applied:
                name, checksum = applied[mig.version]
                if checksum != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.name}.sql was changed after it was applied "
                        f"(recorded checksum {checksum[:12]}..., file {mig.checksum[:12]}...); "
                        "never edit an applied migration, add a new one"
                    )
                continue
            current[:] = [mig.name]
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version, mig.name, mig.checksum,
                )
            current.clear()
            log.info("applied migration %s", mig.name)
            done.append(mig.name)
        conn.remove_log_listener(listen)
        for note in notes:
            log.warning("migration %s", note)
        version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return MigrationResult(applied=done, version=int(version), notes=notes)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def migrate(url: str) -> MigrationResult:
    """Apply what is pending to the database at `url`; `StorageUnavailable` when it is
    away, the driver's error for anything else (a wrong database or role, a failing
    migration)."""
    with unavailable_on_outage():
        conn = await connect(url)
        try:
            return await apply_migrations(conn)
        finally:
            await conn.close()


async def schema_version(url: str, *, connect_timeout: float, command_timeout: float) -> int:
    """The highest migration applied to the database at `url` (0: none, or none readable).
    `StorageUnavailable` when the server is away, the driver's error for any other
    failure to connect (`ops doctor`)."""
    with unavailable_on_outage():
        conn = await connect(url, connect_timeout=connect_timeout,
                             command_timeout=command_timeout)
    try:
        try:
            return int(await conn.fetchval(
                "SELECT coalesce(max(version), 0) FROM schema_migrations"))
        except Exception:
            return 0
    finally:
        await conn.close()


def cli_migrate(args: argparse.Namespace) -> int:
    """`ops db migrate`: 0 applied/up to date, 1 migration error, 2 database unreachable."""
    from ops.runtime.env import runtime_env
    from ops.store import embedded

    env = runtime_env()
    try:
        url = embedded.database_url(env)
    except embedded.EmbeddedPostgresError as exc:
        print(f"error: cannot start the embedded Postgres under {env.embedded_pg_dir}: {exc}",
              file=sys.stderr)
        return 2
    try:
        result = asyncio.run(migrate(url))
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StorageUnavailable as exc:
        cause = underlying(exc)
        print(f"error: database unreachable at {redact_url(url)}: "
              f"{type(cause).__name__}: {cause}", file=sys.stderr)
        return 2
    except Exception as exc:
        # e.g. a wrong database name or role, or a migration's SQL failing: say where.
        print(f"error: migration failed against {redact_url(url)}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for name in result.applied:
        print(f"applied {name}")
    for note in result.notes:
        print(f"  {note}")
    if not result.applied:
        print(f"schema up to date (version {result.version})")
    return 0
