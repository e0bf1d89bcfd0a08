"""The rendered supervisord config, parsed by supervisord's own option parser, and naming."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from ops.runtime.env import RuntimeEnv
from ops.supervise.supervisor import (
    StackSpec,
    conf_path,
    program_name,
    qualified_name,
    render,
    write_config,
)


def _parse(main: Path) -> ServerOptions:
    opts = ServerOptions()
    opts.realize(args=["-c", str(main)])
    return opts


def _env(home: Path, url: str | None = None) -> RuntimeEnv:
    return RuntimeEnv(config_path=home / "ops.toml", home=home, database_url=url)


def test_names() -> None:
    assert program_name("stream", "large") == "large-stream"
    assert program_name("signal-engine", None) == "signal-engine"
    assert qualified_name("dispatcher", "tiny") == "tiny:tiny-dispatcher"
    assert qualified_name("signal-engine", None) == "signal-engine:signal-engine"


def test_groups_programs_and_environment(tmp_path: Path) -> None:
    # A '%' in a URL-encoded password must reach the roles unchanged (two %-expansions).
    url = "postgresql://ops:p%40ss%25w@db.internal:5432/ops"
    env = _env(tmp_path, url)
    spec = StackSpec(accounts=["large", "tiny"], embedded_postgres=["/pg/bin/postgres", "-D",
                                                                     "/d"],
                     postgres_user="nobody", simulator_port=18765, simulator_seed=3,
                     simulator_clock="nyse", python="/venv/bin/python")
    main = write_config(env, spec)
    assert main == conf_path(env)
    opts = _parse(main)
    groups = {g.name: {p.name: p for p in g.process_configs} for g in opts.process_group_configs}
    assert set(groups) == {"postgres", "sim", "signal-engine", "large", "tiny", "watchdog"}
    watchdog = groups["watchdog"]["watchdog"]
    assert watchdog.command == "/venv/bin/python -m ops watchdog"
    assert watchdog.stderr_logfile == str(env.log_dir / "watchdog.log")
    assert list(groups["large"]) == ["large-stream", "large-dispatcher",
                                     "large-position-manager"]
    stream = groups["tiny"]["tiny-stream"]
    assert stream.command == "/venv/bin/python -m ops run stream --account tiny"
    assert stream.environment["OPS_DATABASE_URL"] == url
    assert stream.environment["OPS_HOME"] == str(tmp_path)
    assert stream.autorestart is RestartUnconditionally
    assert stream.stopsignal == signal.SIGTERM
    assert stream.stdout_logfile == str(env.log_dir / "tiny-stream.log")
    assert stream.redirect_stderr
    assert stream.stopasgroup and stream.killasgroup
    pg = groups["postgres"]["postgres"]
    assert pg.command == "/pg/bin/postgres -D /d"
    assert pg.stopsignal == signal.SIGINT and pg.priority < stream.priority
    sim = groups["sim"]["sim"]
    assert "--port 18765 --seed 3 --clock nyse" in sim.command
    assert opts.nodaemon is False
    # Control over a 0700 unix socket in a 0700 directory; no TCP server at all.
    assert [type(s).__name__ for s in opts.server_configs] == ["dict"]
    assert opts.server_configs[0]["family"] == 1  # AF_UNIX
    assert opts.server_configs[0]["chmod"] == 0o700
    assert stat.S_IMODE(env.run_dir.stat().st_mode) == 0o700
    for f in (tmp_path / "supervisor").glob("*.conf"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f  # holds the database URL
    # supervisorctl reads [supervisorctl] from the main file (it does not follow includes).
    assert f"serverurl=unix://{env.run_dir / 'supervisor.sock'}" in main.read_text()


def test_rerender_drops_removed_accounts(tmp_path: Path) -> None:
    env = _env(tmp_path)
    write_config(env, StackSpec(accounts=["large", "tiny", "mid"]))
    write_config(env, StackSpec(accounts=["large"], nodaemon=True, watchdog=False))
    opts = _parse(conf_path(env))
    assert {g.name for g in opts.process_group_configs} == {"large", "signal-engine"}
    assert opts.nodaemon is True


def test_no_embedded_helpers_in_production(tmp_path: Path) -> None:
    files = render(_env(tmp_path, "postgresql://db/ops"), StackSpec(accounts=["large"]))
    text = "\n".join(files.values())
    assert "[program:postgres]" not in text and "[program:sim]" not in text
    assert "[group:large]\nprograms=large-stream,large-dispatcher,large-position-manager" in text


def test_env_values_with_quotes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OPS_DATABASE_URL must not contain a double quote"):
        render(_env(tmp_path, 'postgresql://u:"x@db/ops'), StackSpec(accounts=[]))


def test_exit_causes_are_read_from_supervisords_own_log_lines() -> None:
    from ops.supervise.supervisor import _EXITED

    log = "\n".join([
        "2026-12-05 07:00:01,001 INFO exited: large-stream (terminated by SIGKILL; not "
        "expected)",
        "2026-12-05 07:00:02,001 INFO exited: tiny-dispatcher (exit status 1; not expected)",
        "2026-12-05 07:00:03,001 INFO exited: large-stream (exit status 0; expected)",
        "2026-12-05 07:00:04,001 INFO exited: sim (terminated by SIGSEGV (core dumped); not "
        "expected)",
    ])
    causes = {m["name"]: m["how"] for m in _EXITED.finditer(log)}
    assert causes == {"large-stream": "exit status 0", "tiny-dispatcher": "exit status 1",
                      "sim": "terminated by SIGSEGV (core dumped)"}
