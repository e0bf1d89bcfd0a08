"""`ops health ROLE [--account TIER] [--ready]`: the per-container health check, and the
local heartbeat file it reads.

Every role process writes `$OPS_HOME/run/health/<process>.json` at each heartbeat beat
(ops/roles/runtime.py), whether or not Postgres answers, also as a standby waiting on its
advisory lock, and removes it on a clean stop. One small JSON object, replaced atomically
(temp file + `os.replace`), so a reader never sees half of one:

    {"process": "large-stream", "pid": 4242, "ts": 1767312000.5, "interval_s": 1.0,
     "stale_s": 5.0, "active": true, "failing": false, "failing_reason": null}

`ts` is epoch seconds; `stale_s` is the watchdog's heartbeat bound for the role (written by
the role from its config, so the check needs no config parse); `active` means the process
holds its singleton lock and works; `failing`/`failing_reason` are ops.core.health's verdict on
its own counters (the one `ops status` and the watchdog use).

The check is for orchestrators (ECS `healthCheck`, Kubernetes probes): exit 0 while the
file is fresh and the process is not failing (a standby is alive: liveness passes);
`--ready` also requires `active`. Exit 1 unhealthy (stale, failing, not ready, unreadable
file), 2 no file yet or bad usage. One line on stdout says why.

It must stay cheap (< 1 s, <= 40 MB): this module imports only the standard library and
ops.runtime.env, never alpaca-py, asyncpg, the config loader or textual
(tests/test_healthcheck.py holds it to that).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ops.runtime.env import runtime_env

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_NO_FILE = 2  # also bad usage (argparse's own exit code)

#: Roles that run once per account (`--account` required); the rest take none. Kept here
#: rather than imported from ops.roles.runtime, which loads the whole role runtime.
PER_ACCOUNT_ROLES = frozenset({"stream", "dispatcher", "position-manager"})
SHARED_ROLES = frozenset({"signal-engine", "monitor"})
#: ops.core.config.ACCOUNT_NAME_PATTERN, copied: this module loads no config code (a test
#: checks both stay equal). It also keeps `--account` from naming a path.
ACCOUNT_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class HealthFileError(ValueError):
    """A heartbeat file that is not what a role writes (names the file, field and value)."""


@dataclass(frozen=True, slots=True)
class HealthFile:
    """One beat of a role's local heartbeat file."""

    process: str
    pid: int
    ts: float  # epoch seconds of the beat
    interval_s: float
    stale_s: float  # older than this: the process counts as hung
    active: bool  # holds its singleton lock (a standby waiting on it: False)
    failing: bool
    failing_reason: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def parse(cls, text: str, source: str) -> HealthFile:
        """Read one file's text; `HealthFileError` naming `source`, the field and the value
        for anything a role would not have written."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise HealthFileError(f"{source}: not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise HealthFileError(f"{source}: expected a JSON object, got {_short(raw)}")

        def field(name: str, kinds: tuple[type, ...], what: str) -> Any:
            if name not in raw:
                raise HealthFileError(f"{source}: field '{name}' is missing")
            value = raw[name]
            # bool is an int in Python: only accept it where a bool is asked for.
            if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
                raise HealthFileError(f"{source}: field '{name}' must be {what}, "
                                      f"got {_short(value)}")
            return value

        def seconds(name: str) -> float:
            value = float(field(name, (int, float), "a number"))
            if not math.isfinite(value) or value < 0:
                raise HealthFileError(f"{source}: field '{name}' must be a finite number "
                                      f">= 0, got {_short(raw[name])}")
            return value

        reason = raw.get("failing_reason")
        if reason is not None and not isinstance(reason, str):
            raise HealthFileError(f"{source}: field 'failing_reason' must be a string or "
                                  f"null, got {_short(reason)}")
        return cls(
            process=field("process", (str,), "a string"),
            pid=field("pid", (int,), "an integer"),
            ts=seconds("ts"),
            interval_s=seconds("interval_s"),
            stale_s=seconds("stale_s"),
            active=field("active", (bool,), "true or false"),
            failing=field("failing", (bool,), "true or false"),
            failing_reason=reason,
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def health_dir(home: Path) -> Path:
    """Where every process of this OPS_HOME keeps its heartbeat file."""
    return home / "run" / "health"


def health_path(home: Path, process: str) -> Path:
    return health_dir(home) / f"{process}.json"


def write_health_file(path: Path, state: HealthFile) -> None:
    """Replace `path` with `state` atomically (the directory is created when missing).
    No fsync: the file is rewritten every beat, and a torn one after a power cut reads as
    unhealthy until the next beat. Raises OSError; the caller logs and goes on."""
    data = state.to_json().encode()
    # Per-pid temp name: two copies sharing a home (a standby) never write one temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_health_file(path: Path, pid: int) -> bool:
    """Remove `path` if process `pid` wrote it (a standby stopping must not remove the
    active copy's file in a shared home). True if removed."""
    try:
        state = HealthFile.parse(path.read_text(), str(path))
    except (OSError, HealthFileError):
        return False
    if state.pid != pid:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Verdict:
    code: int
    line: str


def judge(state: HealthFile, *, now: float, ready: bool) -> Verdict:
    """The check's answer for one beat read at wall time `now` (pure)."""
    name = state.process
    age = now - state.ts
    if age > state.stale_s:
        return Verdict(EXIT_UNHEALTHY, f"unhealthy: {name} heartbeat {age:.1f}s old (stale "
                                       f"after {state.stale_s:g}s)")
    # Ahead by more than the bound: written before the clock stepped back and not
    # rewritten since, so the process stopped beating too.
    if age < -state.stale_s:
        return Verdict(EXIT_UNHEALTHY, f"unhealthy: {name} heartbeat dated {-age:.1f}s in "
                                       "the future and not rewritten since (the clock "
                                       "stepped back?)")
    if state.failing:
        reason = " ".join((state.failing_reason or "its runs fail").split())
        return Verdict(EXIT_UNHEALTHY, f"unhealthy: {name} failing: {reason}")
    if ready and not state.active:
        return Verdict(EXIT_UNHEALTHY, f"not ready: {name} is not active: it does not hold "
                                       "its singleton lock (a standby while another "
                                       "instance is active or Postgres is unreachable, or "
                                       "still starting)")
    role = "active" if state.active else "standby"
    return Verdict(EXIT_HEALTHY, f"ok: {name} heartbeat {max(age, 0.0):.1f}s ago ({role})")


def usage_problem(role: str, account: str | None) -> str | None:
    """Why `ops health ROLE [--account ACCOUNT]` cannot name a process, or None."""
    if role in PER_ACCOUNT_ROLES:
        if account is None:
            return f"role '{role}' runs per account: give --account"
        if not ACCOUNT_NAME_RE.match(account):
            return (f"invalid account name {account!r}: must match "
                    f"{ACCOUNT_NAME_RE.pattern}")
        return None
    if role in SHARED_ROLES:
        if account is not None:
            return f"role '{role}' is shared by every account: run it without --account"
        return None
    known = ", ".join(sorted(PER_ACCOUNT_ROLES | SHARED_ROLES))
    return f"unknown role '{role}' (known: {known})"


def process_name(role: str, account: str | None) -> str:
    """ops.supervise.supervisor.program_name, without importing it (it loads supervisor's
    client)."""
    return f"{account}-{role}" if account else role


def check(home: Path, role: str, account: str | None, *, ready: bool = False,
          now: float | None = None) -> Verdict:
    """Read this role's heartbeat file under `home` and judge it."""
    problem = usage_problem(role, account)
    if problem is not None:
        return Verdict(EXIT_NO_FILE, f"ops health: {problem}")
    path = health_path(home, process_name(role, account))
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Verdict(EXIT_NO_FILE, f"no heartbeat file {path} (not started yet?)")
    except OSError as exc:
        return Verdict(EXIT_UNHEALTHY, f"unhealthy: cannot read {path}: {exc.strerror}")
    try:
        state = HealthFile.parse(text, str(path))
    except HealthFileError as exc:
        return Verdict(EXIT_UNHEALTHY, f"unhealthy: {exc}")
    return judge(state, now=time.time() if now is None else now, ready=ready)


def cli_health(args: argparse.Namespace) -> int:
    """`ops health ROLE [--account TIER] [--ready]`."""
    verdict = check(runtime_env().home, args.role, args.account, ready=args.ready)
    print(verdict.line, flush=True)
    return verdict.code
