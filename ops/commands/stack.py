"""`ops up` and `ops down`: bring the whole stack up under supervisord, and take it down.

`up`: load the config; with --demo pick the simulator's port (`--port`, else `[sim] port`,
else a free one when that is taken) and write this home's demo identity (ops.runtime.demo: account
numbers and keys generated once per OPS_HOME) and its keys for the roles; bring the schema
up to date *before* anything starts (`migrate_first`: roles never meet a missing table);
render supervisord's config from ours (ops.supervise.supervisor) and start it (or, with
--foreground,
exec `supervisord -n`, for a container's PID 1). With --demo the account processes start
only once the simulator answers as this home's (its keys accepted, its account numbers):
if it cannot start, or the port reaches another stack's simulator, they stay stopped and
`up` says why (exit 1). Then return only when every process is RUNNING and has written a
heartbeat since `up` began, or fail (exit 1) naming each one that did not, with the end of
its log. If supervisord already runs for this OPS_HOME, `up` only checks and waits.
`down`: XML-RPC shutdown, wait for supervisord to exit, then stop the embedded Postgres
however it was started; with nothing running it says so and succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ops.core.config import Config
from ops.runtime.demo import (
    DemoIdentity,
    DemoIdentityError,
    ensure_identity,
    generate_keys,
    identity_path,
    keys_by_account,
    served_accounts,
)
from ops.runtime.env import EXIT_CONFIG, RuntimeEnv
from ops.supervise.supervisor import (
    ACCOUNT_ROLES,
    SHARED_ROLES,
    WATCHDOG,
    StackSpec,
    SupervisorClient,
    SupervisorUnavailable,
    conf_path,
    program_name,
    write_config,
)

if TYPE_CHECKING:
    from ops.store.migrate import MigrationResult

log = logging.getLogger(__name__)


class StackError(Exception):
    """`ops up`/`ops down` could not do what was asked; the message says what and why."""


@dataclass(frozen=True, slots=True)
class Expected:
    """A process `ops up` waits for: its supervisord name and heartbeat name."""

    qualified: str
    process: str
    heartbeats: bool


def expected_processes(config: Config, spec: StackSpec) -> list[Expected]:
    out: list[Expected] = []
    if spec.embedded_postgres:
        out.append(Expected("postgres:postgres", "postgres", heartbeats=False))
    if spec.simulator_port is not None:
        out.append(Expected("sim:sim", "sim", heartbeats=False))
    if spec.watchdog:
        out.append(Expected(f"{WATCHDOG}:{WATCHDOG}", WATCHDOG, heartbeats=True))
    for role in SHARED_ROLES:
        out.append(Expected(f"{role}:{role}", role, heartbeats=True))
    for account in spec.accounts:
        for role in ACCOUNT_ROLES:
            name = program_name(role, account)
            out.append(Expected(f"{account}:{name}", name, heartbeats=True))
    return out


def demo_identity(env: RuntimeEnv, config: Config, port: int | None) -> DemoIdentity:
    """This home's demo identity, with an account number for every enabled account
    (generated the first time, kept after) and `port` recorded when given."""
    from ops.sim.accounts import default_accounts

    if config.credentials.provider != "file":
        raise StackError(
            f"{env.config_path}: credentials.provider: --demo needs provider \"file\" "
            f"(got {config.credentials.provider!r})"
        )
    known = {a.name for a in default_accounts()}
    names = sorted(config.enabled_accounts())
    for name in names:
        if name not in known:
            raise StackError(
                f"{env.config_path}: accounts.{name}: the simulator has no demo account "
                f"{name!r} (it has {', '.join(sorted(known))})"
            )
    try:
        return ensure_identity(env.home, names, port)
    except (DemoIdentityError, OSError) as exc:
        raise StackError(f"demo identity: {exc}") from exc


def write_demo_secrets(env: RuntimeEnv, config: Config) -> Path:
    """Make sure every enabled account has this home's demo identity and keys, in the
    file credential provider's file: the one place the keys live (the roles and this
    home's simulator read them there; never printed or logged). Keys already there for
    the account are kept: generated once per home."""
    from ops.runtime.credentials import write_secrets_file

    demo_identity(env, config, None)
    path = config.credentials.resolved_file_path(env)
    try:
        existing = keys_by_account(path)
    except DemoIdentityError:
        existing = {}  # unreadable: new keys for every account
    secrets: dict[str, dict[str, str]] = {}
    for name, account in config.enabled_accounts().items():
        key_id, secret = existing.get(name) or generate_keys()
        secrets[account.secret_id] = {"api_key": key_id, "api_secret": secret,
                                      "account_name": name}
    write_secrets_file(path, secrets)
    return path


# --- the demo's simulator -----------------------------------------------------------------


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (SO_REUSEADDR: a closing socket does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def choose_sim_port(requested: int | None, configured: int) -> tuple[int, str | None]:
    """The simulator's port and, when it is not the one asked for, a line saying why.
    `--port P` is a promise (taken: StackError); the configured default moves to a free
    port when another process (another stack's simulator) holds it."""
    if requested == 0:
        return _any_free_port(), None
    if requested is not None:
        if not port_free(requested):
            raise StackError(f"--port {requested}: 127.0.0.1:{requested} is already in use "
                             "(another stack's simulator?); choose another, or --port 0 for "
                             "a free one")
        return requested, None
    if port_free(configured):
        return configured, None
    port = _any_free_port()
    return port, (f"demo: 127.0.0.1:{configured} ([sim] port) is in use (another stack's "
                  f"simulator?); this stack's simulator uses 127.0.0.1:{port} instead "
                  "(`ops up --demo --port P` to choose)")


def probe_simulator(port: int, account: tuple[str, str, str, str],
                    timeout_s: float = 2.0) -> str | None:
    """None when 127.0.0.1:port answers as this home's simulator for `account` (name,
    number, key id, secret): its key accepted, its number; else why not. Raises
    ConnectionError when nothing answers yet."""
    import json
    import urllib.error
    import urllib.request

    _name, expected, key_id, secret = account
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/account",
        headers={"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            number = json.loads(resp.read()).get("account_number")
    except urllib.error.HTTPError as exc:
        from ops.runtime.errors import auth_hint

        hint = auth_hint(exc.code) or f"HTTP {exc.code}"
        return (f"127.0.0.1:{port} answers but is not this stack's simulator: {hint}; "
                "another stack holds the port (`ops up --demo --port P` to choose another)")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConnectionError(str(exc)) from exc
    if number != expected:
        return (f"127.0.0.1:{port} serves account {number!r} for this home's key, not "
                f"{expected!r}: not this stack's simulator")
    return None


def wait_for_simulator(client: SupervisorClient, port: int,
                       account: tuple[str, str, str, str], timeout_s: float) -> None:
    """Until this home's simulator answers on the port; StackError (with the end of its
    log) when it cannot start (FATAL, or not answering in time) or is not ours."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            why = probe_simulator(port, account)
        except ConnectionError as exc:
            why, waiting = f"nothing answers on 127.0.0.1:{port} ({exc})", True
        else:
            waiting = False
        if why is None:
            return
        state = client.process("sim:sim").state
        if not waiting or state == "FATAL" or time.monotonic() >= deadline:
            raise StackError(
                f"the simulator did not start (sim:sim {state}): {why}. The account "
                f"processes were not started.\n{_log_tail(client, 'sim:sim')}\n"
                "`ops down` stops the rest.")
        time.sleep(0.2)


def _require_simulator(client: SupervisorClient) -> None:
    """StackError unless the running supervisord has the simulator (`ops up --demo`)."""
    try:
        client.process("sim:sim")
    except xmlrpc.client.Fault:
        raise StackError("supervisord already runs for this OPS_HOME without the simulator "
                         "(it was started without --demo): `ops down`, then `ops up --demo`"
                         ) from None


def start_accounts(client: SupervisorClient, accounts: Sequence[str]) -> None:
    """Start the account processes supervisord holds back in the demo (autostart off)."""
    for info in client.processes():
        if info.group in accounts and info.state in ("STOPPED", "EXITED", "FATAL"):
            client.start(info.qualified, wait=False)


def build_spec(env: RuntimeEnv, config: Config, *, demo: bool, nodaemon: bool,
               sim_port: int | None = None) -> StackSpec:
    from ops.store import embedded

    pg_cmd: list[str] | None = None
    pg_user: str | None = None
    if not env.database_url:
        embedded.prepare(env)
        pg_cmd = embedded.foreground_command(env)
        pg_user = embedded.run_as_user()
    return StackSpec(
        accounts=sorted(config.enabled_accounts()),
        embedded_postgres=pg_cmd,
        postgres_user=pg_user,
        simulator_port=(sim_port or config.sim.port) if demo else None,
        simulator_seed=config.sim.seed,
        simulator_clock=config.sim.clock,
        simulator_accounts=identity_path(env.home) if demo else None,
        simulator_secrets=config.credentials.resolved_file_path(env) if demo else None,
        # In a container (nodaemon) nobody would start them later: they start at once and
        # a foreign simulator refuses their keys instead.
        accounts_autostart=not (demo and not nodaemon),
        watchdog_tick_event=config.watchdog.tick_event,
        nodaemon=nodaemon,
    )


def _supervisord_running(env: RuntimeEnv) -> bool:
    try:
        SupervisorClient.for_env(env, timeout_s=2).state()
    except SupervisorUnavailable:
        return False
    return True


def start_supervisord(env: RuntimeEnv, *, timeout_s: float = 20) -> None:
    exe = _supervisord_exe()
    proc = subprocess.run(
        [exe, "-c", str(conf_path(env))], capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        raise StackError(f"supervisord failed to start: {proc.stderr.strip() or proc.stdout}")
    client = SupervisorClient.for_env(env, timeout_s=2)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.state() == "RUNNING":
                return
        except SupervisorUnavailable:
            pass
        time.sleep(0.1)
    raise StackError(f"supervisord did not answer on {client.sock} within {timeout_s:.0f}s")


async def wait_for_database(url: str, timeout_s: float) -> None:
    from ops.store import StorageUnavailable
    from ops.store.postgres import check_connect

    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            await check_connect(url, connect_timeout=2)
        except StorageUnavailable as exc:
            last = exc
            await asyncio.sleep(0.2)
            continue
        return
    raise StackError(f"database did not accept connections within {timeout_s:.0f}s: {last}")


def stop_supervisord(env: RuntimeEnv, *, timeout_s: float = 60) -> bool:
    """Shut supervisord down (it stops its programs first); False if it was not running."""
    client = SupervisorClient.for_env(env, timeout_s=5)
    try:
        pid = client.pid()
        client.shutdown()
    except SupervisorUnavailable:
        return False
    if not _wait_exit(pid, timeout_s):
        raise StackError(f"supervisord (pid {pid}) did not exit within {timeout_s:.0f}s")
    return True


def _alive(pid: int) -> bool:
    """True while `pid` runs. A zombie (exited, not yet reaped by its parent, e.g. the
    shell or test that started `ops up --foreground`) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def now_utc() -> datetime:
    return datetime.now(UTC)


def _supervisord_exe() -> str:
    exe = shutil.which("supervisord", path=os.path.dirname(sys.executable)) or shutil.which(
        "supervisord"
    )
    if exe is None:
        raise StackError("supervisord not found next to this Python or on PATH")
    return exe


def _pidfile_pid(env: RuntimeEnv) -> int | None:
    """supervisord's pid from its pid file, if that process is alive."""
    try:
        pid = int((env.run_dir / "supervisord.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


# --- migrations before anything starts ----------------------------------------------------


def migrate_first(env: RuntimeEnv, timeout_s: float) -> str:
    """Bring the schema up to date before any role starts; returns what was done.

    Roles must never meet a missing table, and supervisord starts every program at once.
    So the migration runs *before* supervisord: against OPS_DATABASE_URL (waiting for it
    to answer), or against the embedded server started briefly with pg_ctl and stopped
    again, so that supervisord can own it. When supervisord already runs (and owns
    Postgres), the running server is migrated in place.
    """
    from ops.store import embedded
    from ops.store.migrate import migrate

    if env.database_url:
        url = env.database_url
        asyncio.run(wait_for_database(url, timeout_s))
        result = asyncio.run(migrate(url))
        return _migrated(result)
    if _supervisord_running(env):
        url = embedded.embedded_url(env)
        asyncio.run(wait_for_database(url, timeout_s))
        result = asyncio.run(migrate(url))
        return _migrated(result)
    url = embedded.ensure_running(env)  # reuses one left running by `ops db migrate`
    try:
        result = asyncio.run(migrate(url))
    finally:
        embedded.stop(env)  # supervisord runs it from now on
    return _migrated(result)


def _migrated(result: MigrationResult) -> str:
    if not result.applied:
        return f"schema up to date (version {result.version})"
    return "\n".join([f"applied migrations {', '.join(result.applied)} "
                      f"(schema version {result.version})"]
                     + [f"  {note}" for note in result.notes])


# --- waiting for health -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Missing:
    """A process that has not (yet) reported: its state and why it does not count."""

    expected: Expected
    state: str
    why: str


async def _heartbeat_times(store: object) -> dict[str, datetime]:
    from ops.store import Store

    assert isinstance(store, Store)
    snap = await store.heartbeats()
    return {h.process: h.ts for h in snap.rows}


async def wait_healthy(
    env: RuntimeEnv, config: Config, expected: Sequence[Expected], since: datetime,
    timeout_s: float,
) -> list[Missing]:
    """Poll supervisord and heartbeats until every expected process is RUNNING and (if it
    writes heartbeats) has beaten after `since`; returns what is still missing at the
    deadline. A FATAL process ends the wait at once: supervisord gave up on it."""
    from ops.commands.status import oneshot_store_settings
    from ops.store import Store

    client = SupervisorClient.for_env(env, timeout_s=5)
    deadline = time.monotonic() + timeout_s
    settings = oneshot_store_settings(env, config)
    async with await Store.open(env, process="ops-up", config=settings) as store:
        while True:
            try:
                infos = {p.qualified: p for p in await asyncio.to_thread(client.processes)}
            except SupervisorUnavailable as exc:
                raise StackError(f"supervisord stopped answering: {exc}") from exc
            beats = await _heartbeat_times(store)
            missing: list[Missing] = []
            for exp in expected:
                info = infos.get(exp.qualified)
                state = info.state if info else "NOT-CONFIGURED"
                if state != "RUNNING":
                    why = info.spawnerr or info.description if info else "not in the config"
                    missing.append(Missing(exp, state, why or state))
                elif exp.heartbeats and beats.get(exp.process, since) <= since:
                    missing.append(Missing(exp, state, "no heartbeat since `ops up` started"))
            fatal = [m for m in missing if m.state == "FATAL"]
            if not missing or fatal or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.25)


def _log_tail(client: SupervisorClient, qualified: str, lines: int = 12) -> str:
    try:
        text = client.tail(qualified, 8192)
    except Exception as exc:  # a tail is a courtesy: never hide the real failure behind it
        return f"    (log unavailable: {exc})"
    tail = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(f"    | {line}" for line in tail) or "    (log is empty)"


def _summary(env: RuntimeEnv, client: SupervisorClient, elapsed_s: float) -> str:
    conf = conf_path(env)
    rows = [("PROCESS", "STATE", "PID", "LOG")]
    for p in sorted(client.processes(), key=lambda p: (p.group != p.name, p.qualified)):
        rows.append((p.qualified, p.state, str(p.pid or "-"),
                     str(env.log_dir / f"{p.name}.log")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    )
    return (
        f"ops-pipeline is up ({elapsed_s:.1f}s): every process is RUNNING and reporting.\n\n"
        f"{table}\n\n"
        f"  logs      {env.log_dir}/\n"
        f"  control   supervisorctl -c {conf} status | restart large:* | tail -f NAME\n"
        f"  watch     ops status   (or: ops dash)\n"
        f"  stop      ops down"
    )


# --- the commands -------------------------------------------------------------------------


def _load(env: RuntimeEnv) -> Config:
    from ops.runtime.config import load_config, remember_if_good

    config = load_config(env.config_path, env.home)
    remember_if_good(env.config_path, env.run_dir)
    return config


def cli_up(args: argparse.Namespace) -> int:
    """`ops up [--demo [--port P]] [--timeout S] [--foreground]`: 0 up, 1 not healthy in
    time (or the demo's simulator did not start), EXIT_CONFIG config."""
    from ops.core.config import ConfigError
    from ops.runtime.env import runtime_env
    from ops.runtime.logs import configure_logging

    t0 = time.monotonic()
    since = now_utc()
    env = runtime_env()
    try:
        config = _load(env)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.port is not None and not args.demo:
        print("ops up: --port is the demo simulator's port: use it with --demo",
              file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("ops-up", level="WARNING")
    try:
        return _up(env, config, args, t0, since)
    except StackError as exc:
        print(f"ops up: {exc}", file=sys.stderr)
        return 1


def _up(env: RuntimeEnv, config: Config, args: argparse.Namespace, t0: float,
        since: datetime) -> int:
    from ops.store.embedded import EmbeddedPostgresError

    timeout_s = float(args.timeout)
    running = _supervisord_running(env)
    if running and args.foreground:
        raise StackError(f"supervisord already runs for {env.home}; `ops down` first")
    identity: DemoIdentity | None = None
    if args.demo:
        port: int | None = None
        if running:  # a running simulator keeps its port
            _require_simulator(SupervisorClient.for_env(env))
        else:
            port, moved = choose_sim_port(args.port, config.sim.port)
            if moved:
                print(moved)
        identity = demo_identity(env, config, port)
        config = _load(env)  # simulator accounts follow the identity and port just written
        path = write_demo_secrets(env, config)
        where = f"; simulator on 127.0.0.1:{identity.port}" if identity.port else ""
        print(f"demo: this home's simulator keys written to {path} (mode 0600){where}")
    try:
        print(migrate_first(env, timeout_s))
    except EmbeddedPostgresError as exc:
        raise StackError(f"embedded Postgres under {env.embedded_pg_dir}: {exc}") from exc
    except OSError as exc:
        raise StackError(f"database: {type(exc).__name__}: {exc}") from exc
    spec = build_spec(env, config, demo=args.demo, nodaemon=args.foreground,
                      sim_port=identity.port if identity else None)
    expected = expected_processes(config, spec)
    if running:
        # Re-rendering under a live supervisord would change its config behind its back.
        print(f"supervisord already runs for {env.home}; waiting for every process")
    else:
        write_config(env, spec)
        if args.foreground:
            exe = _supervisord_exe()
            sys.stdout.flush()
            os.execv(exe, [exe, "-n", "-c", str(conf_path(env))])
        start_supervisord(env)
        print(f"supervisord started ({conf_path(env)}); waiting for "
              f"{len(expected)} processes")
    if identity is not None and identity.port is not None:
        client = SupervisorClient.for_env(env)
        remaining = max(1.0, timeout_s - (time.monotonic() - t0))
        try:
            probe = served_accounts(identity, config.credentials.resolved_file_path(env))[0]
        except DemoIdentityError as exc:
            raise StackError(f"demo identity: {exc}") from exc
        wait_for_simulator(client, identity.port, probe, remaining)
        start_accounts(client, spec.accounts)
    if not env.database_url:
        from ops.store.embedded import embedded_url

        asyncio.run(wait_for_database(embedded_url(env), timeout_s))
    remaining = max(1.0, timeout_s - (time.monotonic() - t0))
    missing = asyncio.run(wait_healthy(env, config, expected, since, remaining))
    client = SupervisorClient.for_env(env)
    if missing:
        print(f"ops up: {len(missing)} of {len(expected)} processes did not report within "
              f"{timeout_s:g}s:", file=sys.stderr)
        for m in missing:
            print(f"  {m.expected.qualified}: {m.state}: {m.why}", file=sys.stderr)
            print(_log_tail(client, m.expected.qualified), file=sys.stderr)
        print(f"The stack is left running for inspection: supervisorctl -c {conf_path(env)} "
              "status; `ops down` stops it.", file=sys.stderr)
        return 1
    print(_summary(env, client, time.monotonic() - t0))
    return 0


def cli_down(args: argparse.Namespace) -> int:
    """`ops down`: stop supervisord (and so every program), then the embedded Postgres."""
    from ops.runtime.env import runtime_env
    from ops.runtime.logs import configure_logging
    from ops.store import embedded

    env = runtime_env()
    configure_logging("ops-down", level="WARNING")
    did: list[str] = []
    try:
        if stop_supervisord(env):
            did.append("supervisord and its programs stopped")
        else:
            pid = _pidfile_pid(env)
            if pid is not None:  # socket gone but the daemon lives: ask it by signal
                _terminate(pid, timeout_s=60)
                did.append(f"supervisord (pid {pid}, socket missing) stopped by SIGTERM")
        if not env.database_url and embedded.for_env(env).postmaster_pid() is not None:
            embedded.stop(env)
            did.append("embedded Postgres stopped")
    except (StackError, embedded.EmbeddedPostgresError) as exc:
        print(f"ops down: {exc}", file=sys.stderr)
        return 1
    print("; ".join(did) if did else f"nothing running under {env.home}")
    return 0


def _terminate(pid: int, timeout_s: float) -> None:
    import signal

    os.kill(pid, signal.SIGTERM)
    if not _wait_exit(pid, timeout_s):
        raise StackError(f"supervisord (pid {pid}) did not exit within {timeout_s:.0f}s of SIGTERM")
