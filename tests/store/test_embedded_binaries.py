"""Which PostgreSQL binaries the embedded server runs: pgserver's where it is installed
(CPython <= 3.12), else the system's (PATH, then /usr/lib/postgresql/<newest>/bin), else a
clear error; a cluster made by another major version is refused in words."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.store import embedded
from ops.store.embedded import Binaries, EmbeddedPostgres, EmbeddedPostgresError
from ops.store.migrate import migrate
from ops.store.postgres import connect
from tests.conftest import TEST_PG_OPTIONS


def _fake_install(bin_dir: Path, *, version: str = "15.4",
                  exes: tuple[str, ...] = ("initdb", "pg_ctl", "postgres")) -> Path:
    bin_dir.mkdir(parents=True)
    for exe in exes:
        script = bin_dir / exe
        script.write_text(f"#!/bin/sh\necho '{exe} (PostgreSQL) {version}'\n")
        script.chmod(0o755)
    return bin_dir


@pytest.fixture
def no_binaries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """As on Python 3.13 without PostgreSQL: no pgserver, nothing on PATH or in the lib root."""
    monkeypatch.setattr(embedded, "_pgserver_bin", lambda: None)
    monkeypatch.setattr(embedded, "SYSTEM_LIB_ROOT", tmp_path / "no-lib")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    embedded.find_binaries.cache_clear()
    yield
    embedded.find_binaries.cache_clear()


def test_system_binaries_prefer_path_then_the_newest_complete_version(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _fake_install(lib / "14" / "bin")
    _fake_install(lib / "16" / "bin")
    _fake_install(lib / "17" / "bin", exes=("initdb", "pg_ctl"))  # no postgres: skipped
    found = embedded.system_binaries(search_path=str(tmp_path / "empty"), lib_root=lib)
    assert found == Binaries(lib / "16" / "bin", bundled=False)
    # PATH first, through its symlink to the install it belongs to.
    own = _fake_install(tmp_path / "opt" / "pg" / "bin")
    links = tmp_path / "links"
    links.mkdir()
    (links / "pg_ctl").symlink_to(own / "pg_ctl")
    found = embedded.system_binaries(search_path=str(links), lib_root=lib)
    assert found == Binaries(own, bundled=False)
    assert embedded.system_binaries(search_path=str(tmp_path / "empty"),
                                    lib_root=tmp_path / "none") is None


def test_pgserver_first_then_the_system(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    own = _fake_install(tmp_path / "sys" / "bin")
    monkeypatch.setenv("PATH", str(own))
    monkeypatch.setattr(embedded, "_pgserver_bin", lambda: tmp_path / "pgserver" / "bin")
    embedded.find_binaries.cache_clear()
    try:
        assert embedded.find_binaries() == Binaries(tmp_path / "pgserver" / "bin", bundled=True)
        monkeypatch.setattr(embedded, "_pgserver_bin", lambda: None)
        embedded.find_binaries.cache_clear()
        assert embedded.find_binaries() == Binaries(own, bundled=False)
    finally:
        embedded.find_binaries.cache_clear()


@pytest.mark.usefixtures("no_binaries")
def test_no_binaries_says_what_is_missing(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    assert server.url().startswith("postgresql://postgres@/postgres?host=")  # needs none
    assert server.postmaster_pid() is None
    with pytest.raises(EmbeddedPostgresError) as info:
        server.start()
    message = str(info.value)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert message.startswith("no embedded PostgreSQL: ")
    assert f"pgserver is not installed for Python {version}" in message
    assert "initdb/pg_ctl" in message and "install postgresql or set OPS_DATABASE_URL" in message
    assert not (tmp_path / "pg" / "data" / "PG_VERSION").exists()


def test_a_cluster_of_another_major_version_is_refused(pg_home: Path) -> None:
    server = EmbeddedPostgres(pg_home / "pg",
                              binaries=Binaries(_fake_install(pg_home / "bin"), bundled=False))
    server.pgdata.mkdir(parents=True)
    (server.pgdata / "PG_VERSION").write_text("16\n")
    with pytest.raises(EmbeddedPostgresError) as info:
        server.start()
    assert str(info.value) == (
        f"{server.pgdata} was initialised by PostgreSQL 16, but the binaries in "
        f"{pg_home / 'bin'} are PostgreSQL 15: run it with PostgreSQL 16, or move "
        f"{server.root} away to start an empty cluster")


async def _server_version(url: str) -> str:
    conn = await connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def test_the_system_binaries_run_a_cluster(pg_home: Path) -> None:
    system = embedded.system_binaries()
    if system is None:
        pytest.skip("no system PostgreSQL (initdb, pg_ctl, postgres) on this host")
    server = EmbeddedPostgres(pg_home / "pg", options=TEST_PG_OPTIONS, binaries=system)
    try:
        url = server.start()
        assert url == server.url() and server.is_running()
        assert asyncio.run(_server_version(url)).split(".")[0] == system.major
        assert asyncio.run(migrate(url)).applied[0] == "0001_initial"
        assert server.foreground_command()[0] == str(system.bin_dir / "postgres")
        assert (server.pgdata / "PG_VERSION").read_text().strip() == system.major
    finally:
        server.stop()
    assert not server.is_running()
