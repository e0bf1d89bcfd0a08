"""The container image (Dockerfile, issue 8) as issue 7 needs it, read statically.

No Docker daemon here, so the Dockerfile is parsed (continuation lines joined) and checked:
- the process runs as a non-root user: a USER instruction naming neither root nor uid 0,
  after which no instruction switches back, and a useradd creating that user with a
  non-zero uid;
- a HEALTHCHECK runs `ops status` (exit 0 healthy, non-zero otherwise);
- supervisord is PID 1: CMD/ENTRYPOINT in exec (JSON) form, so no shell sits at PID 1,
  running `ops up --foreground`, which `os.execv`s supervisord in the same process
  (checked in ops/commands/stack.py);
- nothing from a dev checkout's runtime state (var/, secrets) is copied in;
- the dependencies come from requirements.lock with their hashes checked, the project
  itself without dependencies (nothing resolved at build time).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return out


def test_runs_as_a_non_root_user() -> None:
    ins = instructions()
    users = [(i, args) for i, (word, args) in enumerate(ins) if word == "USER"]
    assert users, "no USER instruction: the container would run as root"
    last_index, user = users[-1]
    name = user.split(":")[0]
    assert name not in ("root", "0"), f"USER {user} is root"
    start = [i for i, (word, _) in enumerate(ins) if word in ("CMD", "ENTRYPOINT")]
    assert start and all(i > last_index for i in start), "USER must precede CMD/ENTRYPOINT"
    created = [args for word, args in ins if word == "RUN" and "useradd" in args]
    assert created, "the USER is never created"
    words = shlex.split(created[0].split("useradd", 1)[1].split("&&")[0])
    assert words[-1] == name, f"useradd creates {words[-1]!r}, USER is {name!r}"
    if "--uid" in words:
        assert int(words[words.index("--uid") + 1]) != 0


def test_healthcheck_runs_ops_status() -> None:
    checks = [args for word, args in instructions() if word == "HEALTHCHECK"]
    assert len(checks) == 1, "exactly one HEALTHCHECK expected"
    assert re.search(r"\bCMD\b.*\bops status\b", checks[0]), checks[0]
    assert "NONE" not in checks[0].split()


def test_supervisord_is_pid_1() -> None:
    cmds = [args for word, args in instructions() if word in ("CMD", "ENTRYPOINT")]
    assert cmds, "no CMD/ENTRYPOINT"
    argv = json.loads(cmds[-1])  # exec form: a JSON array, no /bin/sh -c at PID 1
    assert isinstance(argv, list) and argv[:2] == ["ops", "up"], argv
    assert "--foreground" in argv, argv
    # `ops up --foreground` replaces itself with supervisord (same PID): an os.execv of
    # the supervisord executable with -n (nodaemon) in ops/commands/stack.py.
    tree = ast.parse((REPO / "ops" / "commands" / "stack.py").read_text())
    execs = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call)
             and ast.unparse(n.func) in ("os.execv", "os.execvp")]
    assert any("'-n'" in e for e in execs), execs


def test_no_runtime_state_or_secrets_copied() -> None:
    copied = [args for word, args in instructions() if word in ("COPY", "ADD")]
    assert copied
    for args in copied:
        sources = shlex.split(args)[:-1]
        for src in sources:
            assert src not in (".", "./", "var", "var/", ".venv"), f"COPY {args}"
            assert "secret" not in src.lower(), f"COPY {args}"


def test_dependencies_come_from_the_lock() -> None:
    ins = instructions()
    copied = [src for word, args in ins if word == "COPY" for src in shlex.split(args)[:-1]]
    assert "requirements.lock" in copied, copied
    installs = [cmd.strip() for word, args in ins if word == "RUN"
                for cmd in args.split("&&") if "pip install" in cmd]
    assert installs, "no pip install"
    locked = [shlex.split(c) for c in installs if "-r" in shlex.split(c)]
    assert locked and all("--require-hashes" in c and c[c.index("-r") + 1] == "requirements.lock"
                          for c in locked), installs
    for cmd in installs:
        words = shlex.split(cmd)
        assert "--require-hashes" in words or "--no-deps" in words, (
            f"{cmd!r} resolves dependencies at build time instead of taking the lock's")
    assert (REPO / "requirements.lock").is_file()
