"""supervisord: rendering its config from ours, and an XML-RPC client over its unix socket.

Accounts are configuration, so the per-account program groups are rendered from the
account list by `ops up` into `$OPS_HOME/supervisor/*.conf`; the checked-in
`supervisord.conf` only includes them. Control is over a unix socket (mode 0700 in a
0700 directory), never a TCP port. The client is synchronous (xmlrpc); async callers use
`asyncio.to_thread`.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import sys
import xmlrpc.client
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport

from ops.runtime.env import RuntimeEnv

#: Roles run once per account, in this order inside the account's group.
ACCOUNT_ROLES = ("stream", "dispatcher", "position-manager")
#: Roles run once per host.
SHARED_ROLES = ("signal-engine",)
#: The supervisord event listener's name (ops.roles.watchdog.PROCESS_NAME).
WATCHDOG = "watchdog"


def program_name(role: str, account: str | None) -> str:
    """The supervisord program name, also the `process` name in heartbeats and runs."""
    return f"{account}-{role}" if account else role


def qualified_name(role: str, account: str | None) -> str:
    """The name supervisorctl and XML-RPC use: `group:program`."""
    name = program_name(role, account)
    return f"{account}:{name}" if account else f"{name}:{name}"


def socket_path(env: RuntimeEnv) -> Path:
    return env.run_dir / "supervisor.sock"


def conf_path(env: RuntimeEnv) -> Path:
    """The complete supervisord config `ops up` renders and runs."""
    return env.home / "supervisord.conf"


@dataclass(frozen=True, slots=True)
class StackSpec:
    """What to run: the accounts, and which embedded helpers (Postgres, simulator)."""

    accounts: Sequence[str]
    embedded_postgres: Sequence[str] | None = None  # foreground command, when embedded
    postgres_user: str | None = None  # system user for the embedded server (root only)
    simulator_port: int | None = None  # serve the simulator (demo) on this port
    simulator_seed: int = 7
    simulator_clock: str = "open"
    simulator_accounts: Path | None = None  # the home's demo identity (`ops sim --accounts`)
    simulator_secrets: Path | None = None  # ... and the file with its keys (`--secrets`)
    accounts_autostart: bool = True  # False: `ops up` starts them once the simulator answers
    watchdog: bool = True  # the event listener that restarts hung processes
    watchdog_tick_event: str = "TICK_5"
    nodaemon: bool = False  # True in the container, where supervisord is PID 1
    python: str = sys.executable


def _program(name: str, command: Sequence[str], env: RuntimeEnv, **extra: str | int) -> str:
    settings: dict[str, str | int] = {
        "command": shlex.join(command),
        "directory": str(Path.cwd()),
        "autostart": "true",
        "autorestart": "true",
        "startsecs": 3,
        "startretries": 5,
        "stopsignal": "TERM",
        # Roles finish in-flight work within 5 s (ops.runtime.daemon grace); then SIGKILL.
        "stopwaitsecs": 10,
        "stopasgroup": "true",
        "killasgroup": "true",
        "redirect_stderr": "true",
        "stdout_logfile": str(env.log_dir / f"{name}.log"),
        "stdout_logfile_maxbytes": "10MB",
        "stdout_logfile_backups": 5,
    }
    settings.update(extra)
    body = "\n".join(f"{k}={v}" for k, v in settings.items())
    return f"[program:{name}]\n{body}\n"


def _environment(env: RuntimeEnv) -> str:
    pairs = {
        "OPS_HOME": str(env.home),
        "OPS_CONFIG": str(env.config_path.absolute()),
        "PYTHONUNBUFFERED": "1",
    }
    if env.database_url:
        pairs["OPS_DATABASE_URL"] = env.database_url
    for k, v in pairs.items():
        if '"' in v or "\n" in v:
            raise ValueError(f"{k} must not contain a double quote or newline (got one)")
    # supervisord's environment syntax is KEY="value",KEY2="value2", and the value goes
    # through two rounds of %-expansion (the ini parser, then supervisord's own %(here)s
    # expansion), so a literal '%' (URL-encoded passwords) is written as '%%%%'.
    return ",".join(f'{k}="{v.replace("%", "%%%%")}"' for k, v in pairs.items())


def eventlistener_section(env: RuntimeEnv, python: str, tick_event: str = "TICK_5") -> str:
    """The `[eventlistener:watchdog]` block for the rendered supervisord config."""
    settings: dict[str, str | int] = {
        "command": shlex.join([python, "-m", "ops", "watchdog"]),
        "directory": str(Path.cwd()),
        "events": f"{tick_event},PROCESS_STATE",
        # Events queue here while a pass runs; the listener answers each at once anyway.
        "buffer_size": 100,
        "autostart": "true",
        "autorestart": "true",
        "startsecs": 1,
        # The watchdog must never end up FATAL: keep retrying (its own crash is logged).
        "startretries": 100,
        "priority": 5,
        "stopsignal": "TERM",
        "stopwaitsecs": 10,
        # stdout is the listener protocol; the logs go to stderr, into their own file.
        "redirect_stderr": "false",
        "stdout_logfile": "NONE",
        "stderr_logfile": str(env.log_dir / f"{WATCHDOG}.log"),
        "stderr_logfile_maxbytes": "10MB",
        "stderr_logfile_backups": 5,
    }
    body = "\n".join(f"{k}={v}" for k, v in settings.items())
    return f"[eventlistener:{WATCHDOG}]\n{body}\n"


def render(env: RuntimeEnv, spec: StackSpec) -> dict[str, str]:
    """The supervisord config files, keyed by file name under `$OPS_HOME/supervisor/`."""
    sock = socket_path(env)
    ops_cmd = [spec.python, "-m", "ops"]
    files: dict[str, str] = {}
    files["00-supervisord.conf"] = (
        "; Rendered by `ops up` from the ops config; edits are overwritten.\n"
        "[unix_http_server]\n"
        f"file={sock}\nchmod=0700\n\n"
        "[supervisord]\n"
        f"logfile={env.log_dir / 'supervisord.log'}\n"
        "logfile_maxbytes=10MB\nlogfile_backups=5\n"
        f"pidfile={env.run_dir / 'supervisord.pid'}\n"
        f"childlogdir={env.log_dir}\n"
        f"nodaemon={'true' if spec.nodaemon else 'false'}\n"
        "umask=077\nidentifier=ops-pipeline\n"
        f"environment={_environment(env)}\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
    )
    infra: list[str] = []
    if spec.embedded_postgres:
        extra: dict[str, str | int] = {
            "priority": 10,
            "startsecs": 2,
            # SIGINT is Postgres's "fast shutdown": clean, but does not wait for clients.
            "stopsignal": "INT",
            "stopwaitsecs": 30,
        }
        if spec.postgres_user:
            extra["user"] = spec.postgres_user
        infra.append(_program("postgres", spec.embedded_postgres, env, **extra))
    if spec.simulator_port is not None:
        infra.append(
            _program(
                "sim",
                [*ops_cmd, "sim", "--port", str(spec.simulator_port),
                 "--seed", str(spec.simulator_seed), "--clock", spec.simulator_clock,
                 "--state", str(env.home / "sim-state.json"),
                 *(["--accounts", str(spec.simulator_accounts),
                    "--secrets", str(spec.simulator_secrets)]
                   if spec.simulator_accounts is not None else [])],
                env,
                priority=20,
            )
        )
    for role in SHARED_ROLES:
        infra.append(_program(role, [*ops_cmd, "run", role], env, priority=200))
    if spec.watchdog:
        infra.append(eventlistener_section(env, spec.python, spec.watchdog_tick_event))
    files["10-infra.conf"] = "\n".join(infra)
    for account in spec.accounts:
        progs = [
            _program(
                program_name(role, account),
                [*ops_cmd, "run", role, "--account", account],
                env,
                priority=100,
                autostart="true" if spec.accounts_autostart else "false",
            )
            for role in ACCOUNT_ROLES
        ]
        names = ",".join(program_name(r, account) for r in ACCOUNT_ROLES)
        progs.append(f"[group:{account}]\nprograms={names}\npriority=100\n")
        files[f"20-account-{account}.conf"] = "\n".join(progs)
    return files


def write_config(env: RuntimeEnv, spec: StackSpec) -> Path:
    """Render into `$OPS_HOME/supervisor/` and write `$OPS_HOME/supervisord.conf`."""
    out_dir = env.home / "supervisor"
    for d in (env.home, out_dir, env.log_dir, env.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    env.run_dir.chmod(0o700)
    for stale in out_dir.glob("*.conf"):
        stale.unlink()
    for name, text in render(env, spec).items():
        path = out_dir / name
        path.touch(mode=0o600)  # may hold OPS_DATABASE_URL, password included
        path.chmod(0o600)
        path.write_text(text)
    main = conf_path(env)
    # supervisorctl does not follow [include], so [supervisorctl] lives in the main file.
    main.write_text(
        "; Rendered by `ops up`. Use: supervisorctl -c THIS_FILE status\n"
        f"[supervisorctl]\nserverurl=unix://{socket_path(env)}\n\n"
        "[include]\nfiles = supervisor/*.conf\n"
    )
    return main


# --- XML-RPC client ---------------------------------------------------------------------


class _TimeoutTransport(SupervisorTransport):  # type: ignore[misc]
    """supervisor's unix-socket transport with a socket timeout (it has none)."""

    def __init__(self, serverurl: str, timeout_s: float) -> None:
        super().__init__(None, None, serverurl)
        inner: Any = self._get_connection  # type: ignore[has-type]
        self._timeout_s = timeout_s

        def get_connection() -> http.client.HTTPConnection:
            conn = cast(http.client.HTTPConnection, inner())
            conn.timeout = timeout_s
            connect = conn.connect

            def connect_with_timeout() -> None:
                connect()
                if conn.sock is not None:
                    conn.sock.settimeout(timeout_s)

            conn.connect = connect_with_timeout  # type: ignore[method-assign]
            return conn

        self._get_connection = get_connection


class SupervisorUnavailable(Exception):
    """supervisord's socket is missing or does not answer."""


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    group: str
    name: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, STOPPING, UNKNOWN
    pid: int
    start: int  # epoch seconds, 0 if never started
    now: int
    exitstatus: int
    spawnerr: str
    description: str

    @property
    def qualified(self) -> str:
        return f"{self.group}:{self.name}"

    @property
    def uptime_s(self) -> int | None:
        return self.now - self.start if self.state == "RUNNING" and self.start else None

    @classmethod
    def from_rpc(cls, d: Mapping[str, Any]) -> ProcessInfo:
        return cls(
            group=str(d["group"]),
            name=str(d["name"]),
            state=str(d["statename"]),
            pid=int(d["pid"]),
            start=int(d["start"]),
            now=int(d["now"]),
            exitstatus=int(d["exitstatus"]),
            spawnerr=str(d.get("spawnerr", "")),
            description=str(d.get("description", "")),
        )


class SupervisorClient:
    """Typed access to the supervisord XML-RPC calls this project uses."""

    def __init__(self, sock: Path, timeout_s: float = 5.0) -> None:
        self.sock = sock
        self._transport = _TimeoutTransport(f"unix://{sock}", timeout_s)
        self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=self._transport)

    @classmethod
    def for_env(cls, env: RuntimeEnv, timeout_s: float = 5.0) -> SupervisorClient:
        return cls(socket_path(env), timeout_s)

    def _call(self, method: str, *args: object) -> Any:
        if not self.sock.exists():
            raise SupervisorUnavailable(f"supervisord socket {self.sock} does not exist")
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise SupervisorUnavailable(f"supervisord at {self.sock}: {exc}") from exc
        finally:
            # One connection per call: cheap over a unix socket, never left half-used by a
            # timeout, and nothing to leak when the client is dropped.
            self._transport.close()

    def state(self) -> str:
        return str(self._call("getState")["statename"])

    def pid(self) -> int:
        return int(self._call("getPID"))

    def processes(self) -> list[ProcessInfo]:
        return [ProcessInfo.from_rpc(d) for d in self._call("getAllProcessInfo")]

    def process(self, name: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(self._call("getProcessInfo", name))

    def start(self, name: str, wait: bool = True) -> bool:
        return bool(self._call("startProcess", name, wait))

    def stop(self, name: str, wait: bool = True) -> bool:
        return bool(self._call("stopProcess", name, wait))

    def signal(self, name: str, sig: str) -> bool:
        """Send a signal by name ("KILL", "USR1", ...) to one process."""
        return bool(self._call("signalProcess", name, sig))

    def tail(self, name: str, length: int = 16384) -> str:
        text, _offset, _overflow = self._call("tailProcessStdoutLog", name, 0, length)
        return str(text)

    def exit_causes(self, length: int = 32768) -> dict[str, str]:
        """How each process last exited, from supervisord's own log (its `exited: NAME
        (terminated by SIGKILL; not expected)` lines, newest wins): name -> "terminated by
        SIGKILL" / "exit status 1". The EXITED event carries no status, and by the time it
        is read the restarted process's info says nothing of the exit."""
        text = str(self._call("readLog", -length, 0))
        return {m["name"]: m["how"] for m in _EXITED.finditer(text)}

    def shutdown(self) -> bool:
        return bool(self._call("shutdown"))


_EXITED = re.compile(r"exited: (?P<name>\S+) \((?P<how>[^;()]+(?:\([^)]*\))?)"
                     r"; (?:not )?expected\)")


def running_as_root() -> bool:
    return os.geteuid() == 0
