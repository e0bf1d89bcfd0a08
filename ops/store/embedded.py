"""Embedded PostgreSQL living under `$OPS_HOME/pg`.

The binaries (initdb, pg_ctl, postgres) are the `pgserver` package's where it is installed
(its wheels stop at CPython 3.12), else the system's PostgreSQL: the first directory holding
all three, from PATH, then /usr/lib/postgresql/<newest>/bin (`find_binaries`). Everything
else (layout, socket, locking, the user it runs as) is the same either way.

Layout of `RuntimeEnv.embedded_pg_dir`:
    data/          PGDATA (initdb'd on first use)
    postgres.log   server log when started with `pg_ctl` (the CLI path)
    .s.PGSQL.5432  the unix socket (no TCP listener at all), or under /tmp/ops-pg-<hash>
                   when the path would exceed the unix socket length limit
    ../run/pg.lock file lock serialising init/start/stop between processes

Two ways to run it:
- `ensure_running(env)` starts it detached with `pg_ctl` (CLI use: `ops db migrate`, `ops up`
  before supervisord owns it). Idempotent and safe when several processes call it at once.
- Under supervisord: call `prepare(env)` (initdb only), then run `foreground_command(env)`
  as the user `run_as_user()` (None = the current user). The command keeps postgres in the
  foreground, logging to stderr, so supervisord owns its lifecycle; `stopsignal=INT` gives a
  fast shutdown. `stop(env)` works whichever way it was started.

pgserver's own `PostgresServer` class is not used: it registers an atexit hook that stops
the server when the *last Python handle* exits, keeps a global lock in the user runtime dir,
and offers no foreground mode. Only its binaries are reused.
When we are root, postgres refuses to run as root, so it runs as system user `pgserver`
(created on demand, exactly as pgserver does), whichever binaries are used.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import platform
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ops.runtime.env import RuntimeEnv

log = logging.getLogger(__name__)

SYSTEM_USER = "pgserver"
_SOCKET_NAME = ".s.PGSQL.5432"
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
DEFAULT_DATABASE = "postgres"
DEFAULT_USER = "postgres"


class EmbeddedPostgresError(RuntimeError):
    """initdb or pg_ctl failed (the message carries the tail of the server log), or there
    are no PostgreSQL binaries to run."""


_EXECUTABLES = ("initdb", "pg_ctl", "postgres")
SYSTEM_LIB_ROOT = Path("/usr/lib/postgresql")


@dataclass(frozen=True)
class Binaries:
    """Where initdb/pg_ctl/postgres live. `bundled`: pgserver's copy, which we may chmod so
    the `pgserver` user can run it; the system's is never touched."""

    bin_dir: Path
    bundled: bool

    @functools.cached_property
    def major(self) -> str:
        """The PostgreSQL major version, e.g. "16" (as PGDATA/PG_VERSION records it)."""
        out = subprocess.run([str(self.bin_dir / "pg_ctl"), "--version"], capture_output=True,
                             text=True, check=True, stdin=subprocess.DEVNULL).stdout
        found = re.search(r"(\d+)(?:\.\d+)?", out)
        if found is None:
            raise EmbeddedPostgresError(f"cannot read the version of {self.bin_dir}: {out!r}")
        return found.group(1)


def _pgserver_bin() -> Path | None:
    try:
        with warnings.catch_warnings():
            # Importing pgserver computes a runtime dir at class-definition time and warns
            # when XDG_RUNTIME_DIR is unset; we never use that dir, so the warning is noise.
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


def _complete(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / exe, os.X_OK) for exe in _EXECUTABLES)


def system_binaries(
    search_path: str | None = None, lib_root: Path | None = None
) -> Binaries | None:
    """The system's PostgreSQL: the first directory with initdb, pg_ctl and postgres, from
    `search_path` (default $PATH; symlinks followed, so all three come from one install),
    then `lib_root/<version>/bin` (default /usr/lib/postgresql), newest version first."""
    lib_root = SYSTEM_LIB_ROOT if lib_root is None else lib_root
    candidates: list[Path] = []
    found = shutil.which("pg_ctl", path=search_path)
    if found is not None:
        candidates.append(Path(found).resolve().parent)
    candidates += sorted(lib_root.glob("*/bin"), key=lambda b: _version_key(b.parent.name),
                         reverse=True)
    for bin_dir in candidates:
        if _complete(bin_dir):
            return Binaries(bin_dir, bundled=False)
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))


@functools.cache
def find_binaries() -> Binaries:
    """pgserver's binaries when it is installed, else the system's; raise when neither."""
    bundled = _pgserver_bin()
    if bundled is not None:
        return Binaries(bundled, bundled=True)
    system = system_binaries()
    if system is not None:
        return system
    raise EmbeddedPostgresError(
        f"no embedded PostgreSQL: pgserver is not installed for Python "
        f"{sys.version_info.major}.{sys.version_info.minor} and no initdb/pg_ctl/postgres "
        f"found on PATH or in {SYSTEM_LIB_ROOT}/*/bin; install postgresql or set "
        f"OPS_DATABASE_URL"
    )


def run_as_user() -> str | None:
    """The system user postgres must run as: `pgserver` when we are root, else ourselves."""
    return SYSTEM_USER if os.geteuid() == 0 else None


class EmbeddedPostgres:
    """One embedded cluster rooted at `root` (PGDATA is `root/data`).

    `options` are extra `postgres` command-line settings, e.g. ("-c", "fsync=off") for tests.
    `binaries`: default `find_binaries()`, looked up on first use (reading the URL or the
    postmaster pid needs none).
    """

    def __init__(self, root: Path, *, options: Sequence[str] = (), lock_path: Path | None = None,
                 binaries: Binaries | None = None):
        self.root = root.absolute()
        self.pgdata = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.options = tuple(options)
        self.lock_path = lock_path or self.root.parent / "run" / "pg.lock"
        self.user = run_as_user()
        self._binaries = binaries

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    # --- paths and URLs -------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        """Deterministic socket directory: the root itself unless that path is too long."""
        if len(str(self.root / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
            return self.root
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path("/tmp") / f"ops-pg-{digest}"

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        return f"postgresql://{DEFAULT_USER}@/{database}?host={self.socket_dir}"

    # --- state ----------------------------------------------------------------------------

    def is_initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def postmaster_pid(self) -> int | None:
        """The pid of a live postmaster for this PGDATA, or None."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first.strip())
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None and (self.socket_dir / _SOCKET_NAME).exists()

    # --- lifecycle ------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Host-wide lock so two processes never initdb or start the same cluster at once."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        sock = self.socket_dir
        sock.mkdir(parents=True, exist_ok=True)
        if self.user is None:
            return
        entry = _ensure_user(self.user)
        # The postgres user must traverse every ancestor and read the binaries (the
        # system's are readable already: never chmod them).
        _ensure_traversable(self.pgdata)
        bins = self.binaries
        if bins.bundled:
            _ensure_traversable(bins.bin_dir)
            _ensure_readable(bins.bin_dir, 0o055)
            _ensure_readable(bins.bin_dir.parent / "lib", 0o044)
        for path in (self.root, self.pgdata, sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if sock != self.root:
            _ensure_traversable(sock)
        self.pgdata.chmod(0o700)

    def _run(self, exe: str, args: Sequence[str], timeout: float) -> str:
        cmd = [str(self.binaries.bin_dir / exe), *args]
        try:
            out = subprocess.run(
                cmd, user=self.user, capture_output=True, text=True, timeout=timeout, check=True,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedPostgresError(
                f"{exe} failed (exit {exc.returncode}) for {self.pgdata}: "
                f"{(exc.stderr or exc.stdout or '').strip()[-2000:]}{self._log_tail()}"
            ) from None
        except subprocess.TimeoutExpired:
            raise EmbeddedPostgresError(
                f"{exe} timed out after {timeout}s for {self.pgdata}{self._log_tail()}"
            ) from None
        return out.stdout

    def _log_tail(self) -> str:
        try:
            tail = self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""
        return f"\n--- tail of {self.log_path} ---\n{tail}"

    def _init_unlocked(self) -> None:
        self._prepare_dirs()
        if self.is_initialized():
            self._check_version()
            return
        log.info("initialising embedded postgres in %s", self.pgdata)
        self._run(
            "initdb",
            ["-D", str(self.pgdata), "--auth=trust", "--encoding=utf8", "-U", DEFAULT_USER],
            timeout=120,
        )

    def _check_version(self) -> None:
        """A cluster only runs under its own major version (e.g. an OPS_HOME first used
        with pgserver's 16, now on Python 3.13 with a system 15): say so before starting."""
        made_by = (self.pgdata / "PG_VERSION").read_text().strip()
        bins = self.binaries
        if made_by != bins.major:
            raise EmbeddedPostgresError(
                f"{self.pgdata} was initialised by PostgreSQL {made_by}, but the binaries in "
                f"{bins.bin_dir} are PostgreSQL {bins.major}: run it with PostgreSQL "
                f"{made_by}, or move {self.root} away to start an empty cluster"
            )

    def init(self) -> None:
        """initdb if needed (idempotent)."""
        with self._locked():
            self._init_unlocked()

    def _server_args(self) -> list[str]:
        # No TCP listener at all: the unix socket is the only way in.
        return ["-h", "", "-k", str(self.socket_dir), *self.options]

    def start(self, timeout: float = 60) -> str:
        """Init if needed and start with pg_ctl unless already running; returns the URL."""
        with self._locked():
            self._init_unlocked()
            if self.is_running():
                return self.url()
            if self.user is not None and not self.log_path.exists():
                self.log_path.touch()
                entry = pwd.getpwnam(self.user)
                os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
            opts = " ".join(_quote(a) for a in self._server_args())
            log.info("starting embedded postgres in %s", self.pgdata)
            self._run(
                "pg_ctl",
                ["-D", str(self.pgdata), "-w", "-t", str(int(timeout)), "-l", str(self.log_path),
                 "-o", opts, "start"],
                timeout=timeout + 10,
            )
            return self.url()

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server if it runs (any start method); a no-op otherwise."""
        with self._locked():
            if self.postmaster_pid() is None:
                return
            self._run(
                "pg_ctl",
                ["-D", str(self.pgdata), "-w", "-t", str(int(timeout)), "-m", mode, "stop"],
                timeout=timeout + 10,
            )

    def kill(self) -> None:
        """SIGKILL the postmaster (crash simulation); children exit on their own."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.postmaster_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.05)

    def foreground_command(self) -> list[str]:
        """argv running postgres in the foreground (for supervisord), logging to stderr."""
        return [str(self.binaries.bin_dir / "postgres"), "-D", str(self.pgdata),
                *self._server_args()]


def _ensure_traversable(path: Path) -> None:
    """Give group/others search (x) permission on every ancestor of `path`.

    Only x, never r: pgserver's own helper also makes them listable (e.g. /root), which
    postgres does not need.
    """
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def _ensure_readable(tree: Path, file_bits: int) -> None:
    """Give group/others r+x on every directory under `tree` and `file_bits` on its files."""
    if not tree.is_dir():
        return
    for dirpath, _, files in os.walk(tree):
        folder = Path(dirpath)
        folder.chmod(folder.stat().st_mode | 0o055)
        for name in files:
            path = folder / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | file_bits)


def _ensure_user(name: str) -> pwd.struct_passwd:
    """The system user `name`, created with `useradd` (as root) when it does not exist."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    try:
        subprocess.run(["useradd", "-s", "/bin/bash", name], check=True, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise EmbeddedPostgresError(
            f"postgres refuses to run as root and user {name!r} could not be created: "
            f"{str(detail).strip()}"
        ) from None
    return pwd.getpwnam(name)


def _quote(arg: str) -> str:
    """Quote one argument for the `-o` string pg_ctl hands to a shell."""
    if arg == "":
        return '""'
    if any(c in arg for c in " \t'\"\\$`"):
        return "'" + arg.replace("'", "'\\''") + "'"
    return arg


def for_env(env: RuntimeEnv) -> EmbeddedPostgres:
    return EmbeddedPostgres(env.embedded_pg_dir, lock_path=env.run_dir / "pg.lock")


def ensure_running(env: RuntimeEnv) -> str:
    """Init and start the embedded server if needed; returns its connection URL."""
    if platform.system() == "Windows":  # pragma: no cover - the project targets Linux
        raise EmbeddedPostgresError("embedded postgres needs unix sockets")
    return for_env(env).start()


def stop(env: RuntimeEnv) -> None:
    for_env(env).stop()


def prepare(env: RuntimeEnv) -> None:
    """initdb only, for a supervisord-managed foreground server."""
    for_env(env).init()


def foreground_command(env: RuntimeEnv) -> list[str]:
    """argv for supervisord's `[program:postgres]`; run it as `run_as_user()`."""
    return for_env(env).foreground_command()


def embedded_url(env: RuntimeEnv) -> str:
    """The embedded server's URL, whether or not it is running (it never starts it)."""
    return for_env(env).url()


def database_url(env: RuntimeEnv, *, start: bool = True) -> str:
    """OPS_DATABASE_URL when set, else the embedded server's URL (started on demand)."""
    if env.database_url:
        return env.database_url
    return ensure_running(env) if start else embedded_url(env)
