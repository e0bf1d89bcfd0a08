"""Embedded PostgreSQL (the `pgserver` package's binaries) living under `$OPS_HOME/pg`.

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
and offers no foreground mode. Its binaries and permission helpers are reused as they are.
When we are root, postgres refuses to run as root, so it runs as system user `pgserver`
(created on demand, exactly as pgserver does).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import platform
import pwd
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ops.env import RuntimeEnv

with warnings.catch_warnings():
    # Importing pgserver computes a runtime dir at class-definition time and warns when
    # XDG_RUNTIME_DIR is unset; we never use that dir, so the warning is noise.
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_folder_permissions, ensure_user_exists

log = logging.getLogger(__name__)

SYSTEM_USER = "pgserver"
_SOCKET_NAME = ".s.PGSQL.5432"
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
DEFAULT_DATABASE = "postgres"
DEFAULT_USER = "postgres"


class EmbeddedPostgresError(RuntimeError):
    """initdb or pg_ctl failed; the message carries the tail of the server log."""


def run_as_user() -> str | None:
    """The system user postgres must run as: `pgserver` when we are root, else ourselves."""
    return SYSTEM_USER if os.geteuid() == 0 else None


class EmbeddedPostgres:
    """One embedded cluster rooted at `root` (PGDATA is `root/data`).

    `options` are extra `postgres` command-line settings, e.g. ("-c", "fsync=off") for tests.
    """

    def __init__(self, root: Path, *, options: Sequence[str] = (), lock_path: Path | None = None):
        self.root = root.absolute()
        self.pgdata = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.options = tuple(options)
        self.lock_path = lock_path or self.root.parent / "run" / "pg.lock"
        self.user = run_as_user()

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
        ensure_user_exists(self.user)
        # The postgres user must traverse every ancestor and read the binaries.
        _ensure_traversable(self.pgdata)
        _ensure_traversable(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        entry = pwd.getpwnam(self.user)
        for path in (self.root, self.pgdata, sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if sock != self.root:
            _ensure_traversable(sock)
        self.pgdata.chmod(0o700)

    def _run(self, exe: str, args: Sequence[str], timeout: float) -> str:
        cmd = [str(POSTGRES_BIN_PATH / exe), *args]
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
            return
        log.info("initialising embedded postgres in %s", self.pgdata)
        self._run(
            "initdb",
            ["-D", str(self.pgdata), "--auth=trust", "--encoding=utf8", "-U", DEFAULT_USER],
            timeout=120,
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
        return [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.pgdata),
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
