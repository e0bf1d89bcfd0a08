"""Loading the configuration: the file the environment names, validated against the
schema (ops/core/config.py); the last good config kept for `ops status`; hot reload.

Loading turns every problem into one `ConfigError` line `FILE: KEY.PATH: PROBLEM`, all
problems at once, TOML syntax included. Accounts marked `simulator = true` get their URLs
and account number filled in at load from this OPS_HOME's demo identity
(`ops.runtime.demo`: the port and numbers, never its keys). `ConfigReloader` re-reads the
file when its content changes and keeps the last good config when an edit is bad.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ops.core.config import Config, ConfigError, Problem, SimConfig, validate_mapping
from ops.runtime.env import RuntimeEnv, runtime_env

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- loading


#: The position tomllib appends to its messages (Python 3.11-3.13 keep it nowhere else).
_TOML_POS = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")
#: One part of a TOML key: bare, "basic" (with escapes) or 'literal'.
_KEY_PART = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)')\s*""")


def _toml_position(exc: tomllib.TOMLDecodeError, text: str) -> tuple[str, int, int]:
    """(what went wrong, line, column; 0: unknown) of a TOML error: from the error's own
    fields where Python has them (3.14+), else from the "(at line N, column M)" suffix of
    its message; "at end of document" is the last line. Without either, the whole
    message and line 0."""
    lineno, colno, msg = (getattr(exc, name, None) for name in ("lineno", "colno", "msg"))
    if isinstance(lineno, int) and isinstance(colno, int) and isinstance(msg, str):
        return msg, lineno, colno
    raw = str(exc)
    pos = _TOML_POS.search(raw)
    if pos is None:
        return raw, 0, 0
    if pos.group(1):
        return raw[: pos.start()], int(pos.group(1)), int(pos.group(2))
    return raw[: pos.start()], len(text.rstrip("\n").splitlines()), 0


def _key_prefix(line: str) -> tuple[tuple[str, ...], str] | None:
    """The dotted key at the start of `line` (quotes removed) and what follows it."""
    parts: list[str] = []
    pos = 0
    while m := _KEY_PART.match(line, pos):
        bare, basic, literal = m.groups()
        if basic is not None:
            try:
                basic = json.loads(f'"{basic}"')
            except ValueError:
                pass  # a TOML-only escape (\U...): shown as written
        parts.append(next(p for p in (bare, basic, literal) if p is not None))
        pos = m.end()
        if not line.startswith(".", pos):
            return tuple(parts), line[pos:]
        pos += 1
    return None


def _table_header(line: str) -> tuple[str, ...] | None:
    """The key of a `[table]` header line (not `[[array]]`), or None."""
    stripped = line.strip()
    if not stripped.startswith("[") or stripped.startswith("[["):
        return None
    found = _key_prefix(stripped[1:])
    if found is None:
        return None
    key, rest = found
    rest = rest.lstrip()
    return key if rest.startswith("]") and rest[1:].strip()[:1] in ("", "#") else None


def _assigned_key(line: str) -> tuple[str, ...] | None:
    """The key of a `key = value` line, or None."""
    found = _key_prefix(line)
    return found[0] if found is not None and found[1].lstrip().startswith("=") else None


def _toml_problem(exc: tomllib.TOMLDecodeError, text: str) -> Problem:
    """A Problem naming the key where the source text shows it: the error's line
    declaring a table again (a well-formed header fails only that way) or assigning a
    key its table already has; else tomllib's message with its line and column."""
    what, line, col = _toml_position(exc, text)
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    if (header := _table_header(source)) is not None:
        path = ".".join(header)
        if len(header) == 2 and header[0] == "accounts":
            return Problem(path, f"duplicate account '{header[1]}' (line {line})")
        return Problem(path, f"duplicate table [{path}] (line {line})")
    if (key := _assigned_key(source)) is not None:
        table: tuple[str, ...] = ()
        earlier: list[tuple[str, ...] | None] = []
        for prev in reversed(lines[: line - 1]):
            if (table_key := _table_header(prev)) is not None or prev.lstrip().startswith("["):
                table = table_key or ()
                break
            earlier.append(_assigned_key(prev))
        if any(e is not None and e[:len(key)] == key[:len(e)] for e in earlier):
            # The same key, or one a dotted key made a table of (or the reverse).
            name = ".".join(key)
            path = ".".join((*table, name))
            if table == ("accounts",) and len(key) == 1:
                return Problem(path, f"duplicate account '{name}' (line {line})")
            return Problem(path, f"duplicate key '{name}' (line {line})")
    where = f"line {line}, column {col}" if col else f"line {line}" if line else ""
    return Problem(where, f"invalid TOML: {what[:1].lower()}{what[1:]}")


def load_config_text(text: str, source: str, home: Path | None = None) -> Config:
    """Parse and validate config text; `source` names it in messages. Raises ConfigError.
    `home`: the OPS_HOME whose demo identity fills in simulator accounts (default: this
    process's)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [_toml_problem(exc, text)]) from None
    except RecursionError:  # tomllib recurses per nested array/inline table
        raise ConfigError(source, [Problem("", "invalid TOML: arrays or inline tables "
                                               "nested too deeply")]) from None
    return config_from_mapping(data, source, home)


def _simulator_fields(data: Mapping[str, Any], home: Path | None) -> tuple[dict[str, Any],
                                                                            list[Problem]]:
    """`data` with the keys of `simulator = true` accounts that the file leaves out filled
    in from the home's demo identity (ops.runtime.demo) and the simulator's port."""
    accounts = data.get("accounts")
    if not isinstance(accounts, dict) or not any(
            isinstance(a, dict) and a.get("simulator") is True for a in accounts.values()):
        return dict(data), []
    from ops.runtime.demo import DemoIdentityError, read_identity, ungenerated

    try:
        identity = read_identity(home if home is not None else runtime_env().home)
    except DemoIdentityError as exc:
        return dict(data), [Problem("", str(exc))]
    sim = data.get("sim")
    port = sim.get("port") if isinstance(sim, dict) else None
    if identity is not None and identity.port is not None:
        port = identity.port
    if not isinstance(port, int) or isinstance(port, bool):
        port = SimConfig().port
    origin = f"http://127.0.0.1:{port}"
    filled = {}
    for name, acct in accounts.items():
        if isinstance(acct, dict) and acct.get("simulator") is True:
            mine = identity.account(name) if identity is not None else None
            defaults = {"rest_url": origin, "data_url": origin,
                        "stream_url": f"ws://127.0.0.1:{port}/stream",
                        "expected_account_number": (mine.account_number if mine
                                                    else ungenerated(name))}
            acct = {**defaults, **acct}
        filled[name] = acct
    return {**data, "accounts": filled}, []


def config_from_mapping(data: Mapping[str, Any], source: str,
                        home: Path | None = None) -> Config:
    """Validate already-parsed TOML data, simulator accounts filled in from the home's demo
    identity. Raises ConfigError listing every problem."""
    filled, problems = _simulator_fields(data, home)
    return validate_mapping(filled, source, problems)


def load_config(path: Path, home: Path | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError (also for unreadable files).
    `home` as for `load_config_text`."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [Problem("", "config file not found")]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, [Problem("", "config file is not UTF-8 text")]) from None
    except OSError as exc:
        problem = Problem("", f"cannot read config file: {exc.strerror}")
        raise ConfigError(source, [problem]) from None
    return load_config_text(text, source, home)


def load_runtime_config(env: RuntimeEnv | None = None) -> tuple[RuntimeEnv, Config]:
    """The runtime env (OPS_CONFIG, OPS_HOME, ...) and the config file it points at."""
    env = env or runtime_env()
    return env, load_config(env.config_path, env.home)


#: The last config a process of the stack loaded cleanly, kept under `$OPS_HOME/run`, so
#: `ops status` and `ops dash` can report the running stack (which keeps its last good
#: config) while the file on disk is invalid, instead of refusing to start.
LAST_GOOD_NAME = "last-good-config.toml"


def save_last_good(run_dir: Path, text: str) -> None:
    """Remember `text` (a config that loaded cleanly); atomic, 0600 (it names secret ids
    and URLs, never keys). Best effort: a failure is logged, never raised."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LAST_GOOD_NAME
        if path.exists() and path.read_text(encoding="utf-8") == text:
            return
        tmp = run_dir / f".{LAST_GOOD_NAME}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot keep the last good config under %s: %s", run_dir, exc)


def remember_if_good(path: Path, run_dir: Path) -> None:
    """Keep the config file's current text as the last good one if it loads cleanly."""
    try:
        text = path.read_text(encoding="utf-8")
        load_config_text(text, str(path))
    except (OSError, UnicodeDecodeError, ConfigError):
        return
    save_last_good(run_dir, text)


def load_last_good(run_dir: Path) -> tuple[Config, datetime] | None:
    """The last good config and when it was saved, or None (never saved, or unreadable)."""
    path = run_dir / LAST_GOOD_NAME
    try:
        text = path.read_text(encoding="utf-8")
        saved = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return load_config_text(text, str(path)), saved
    except (OSError, UnicodeDecodeError, ConfigError):
        return None


class ConfigReloader:
    """Hot reload by polling: `poll()` returns the new Config when the file's content
    changed and is valid. A bad edit is logged once (with every problem) and the last good
    config stays in force, so a typo never stops a running process (invariant 6)."""

    def __init__(self, path: Path, current: Config, text: str | None = None) -> None:
        self.path = path
        self.current = current
        self.last_error: ConfigError | None = None
        self.text: str | None = text  # of `current`, when known
        self._digest = self._hash(text.encode()) if text is not None else self._read_digest()

    @staticmethod
    def _hash(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def _read_digest(self) -> str | None:
        try:
            return self._hash(self.path.read_bytes())
        except OSError:
            return None

    def poll(self) -> Config | None:
        """The new config if the file changed and loads cleanly; otherwise None."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            error = ConfigError(str(self.path), [Problem("", f"cannot read: {exc.strerror}")])
            self._fail(self._hash(repr(exc).encode()), error)
            return None
        digest = self._hash(data)
        if digest == self._digest:
            return None
        try:
            config = load_config_text(data.decode("utf-8"), str(self.path))
        except UnicodeDecodeError:
            error = ConfigError(str(self.path), [Problem("", "config file is not UTF-8 text")])
            self._fail(digest, error)
            return None
        except ConfigError as exc:
            self._fail(digest, exc)
            return None
        self._digest, self.current, self.last_error = digest, config, None
        self.text = data.decode("utf-8")
        log.info("config reloaded from %s", self.path)
        return config

    def _fail(self, digest: str, error: ConfigError) -> None:
        if digest != self._digest:
            log.error("config change refused, keeping the previous config:\n%s", error)
        self._digest, self.last_error = digest, error
