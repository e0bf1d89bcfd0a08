"""The three environment variables other tools rely on (design.md, Interfaces).

`OPS_CONFIG` (default `conf/ops.toml`), `OPS_HOME` (runtime dir, default `./var`) and
`OPS_DATABASE_URL` (unset = embedded Postgres under `$OPS_HOME/pg`). Nothing else in the
code reads these variables directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RuntimeEnv:
    config_path: Path
    home: Path
    database_url: str | None

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


def runtime_env(environ: Mapping[str, str] | None = None) -> RuntimeEnv:
    env = os.environ if environ is None else environ
    url = env.get("OPS_DATABASE_URL") or None
    return RuntimeEnv(
        config_path=Path(env.get("OPS_CONFIG") or "conf/ops.toml"),
        home=Path(env.get("OPS_HOME") or "var").absolute(),
        database_url=url,
    )
