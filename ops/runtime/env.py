"""The three environment variables other tools rely on, and where config and home are found.

`OPS_HOME`: the runtime dir (buffer, logs, sockets, embedded Postgres); unset =
`$XDG_STATE_HOME/ops-pipeline`, else `~/.local/state/ops-pipeline` — never the current
directory. `OPS_CONFIG`: the config file; unset = `$OPS_HOME/ops.toml` if that exists, else
the default shipped inside the package (`ops/defaults/ops.toml`, which `conf/ops.toml`
links to): an `ops` run from any directory finds the same config, never one that happens to
sit in the current directory. `OPS_DATABASE_URL`: unset = embedded Postgres under
`$OPS_HOME/pg`. Nothing else in the code reads these variables directly.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The default configuration, shipped as package data (the demo stack on the simulator).
PACKAGED_CONFIG = Path(__file__).resolve().parents[1] / "defaults" / "ops.toml"
#: Exit code of every `ops` command that stops on the configuration (sysexits EX_CONFIG):
#: not 2, which `ops status` uses for "down". Here, not with the config, so that `ops` can use
#: it without loading the config's schema.
EXIT_CONFIG = 78
#: How `config_path` was found (`RuntimeEnv.config_source`).
FROM_ENV, FROM_HOME, FROM_PACKAGE = "OPS_CONFIG", "$OPS_HOME/ops.toml", "packaged default"


@dataclass(frozen=True, slots=True)
class RuntimeEnv:
    config_path: Path
    home: Path
    database_url: str | None
    config_source: str = FROM_ENV
    """Which step of the search found `config_path` (FROM_ENV, FROM_HOME, FROM_PACKAGE)."""

    @property
    def embedded_pg_dir(self) -> Path:
        return self.home / "pg"

    @property
    def buffer_path(self) -> Path:
        return self.home / "buffer.sqlite3"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def run_dir(self) -> Path:
        """Sockets and pid files (supervisord's unix socket lives here)."""
        return self.home / "run"


def default_home(environ: Mapping[str, str]) -> Path:
    """Per user, never the current directory: `$XDG_STATE_HOME/ops-pipeline`, else
    `~/.local/state/ops-pipeline` (XDG Base Directory: an absolute XDG_STATE_HOME only)."""
    xdg = environ.get("XDG_STATE_HOME") or ""
    if os.path.isabs(xdg):
        return Path(xdg) / "ops-pipeline"
    user_home = environ.get("HOME") or os.path.expanduser("~")
    return Path(user_home) / ".local" / "state" / "ops-pipeline"


def find_config(environ: Mapping[str, str], home: Path) -> tuple[Path, str]:
    """`OPS_CONFIG` (even if missing: an explicit choice never falls through), then
    `$OPS_HOME/ops.toml`, then the packaged default."""
    explicit = environ.get("OPS_CONFIG")
    if explicit:
        return Path(explicit).absolute(), FROM_ENV
    in_home = home / "ops.toml"
    if in_home.is_file():
        return in_home, FROM_HOME
    return PACKAGED_CONFIG, FROM_PACKAGE


def runtime_env(environ: Mapping[str, str] | None = None) -> RuntimeEnv:
    env = os.environ if environ is None else environ
    url = env.get("OPS_DATABASE_URL") or None
    raw_home = env.get("OPS_HOME")
    home = Path(raw_home).absolute() if raw_home else default_home(env)
    config_path, source = find_config(env, home)
    return RuntimeEnv(config_path=config_path, home=home, database_url=url,
                      config_source=source)


def current_user() -> str:
    """Who runs this command: the login name, `uid<N>` without a passwd entry. The CLI
    records `cli:<user>`, the dashboard `dash:<user>`."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"uid{os.getuid()}"
