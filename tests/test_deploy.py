"""Shape of the deploy/ examples: the ECS task definitions rendered by deploy/ecs/render.py.

What is checked (each can fail): the files are what render.py produces; every (account,
role) of the example production config has exactly one task definition and nothing else
does; each command is one the `ops` CLI accepts, with ACCOUNT_TIER substituted; the role
runs as PID 1 (`exec`); the image is the same everywhere; the container is non-root; no
secret travels as a plain environment value (the database URL comes from Secrets Manager);
ECS waits longer than the daemon's grace before SIGKILL.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ops.cli import build_parser
from ops.daemon import DEFAULT_GRACE_S
from ops.roles.runtime import PER_ACCOUNT_ROLES, ROLES

ROOT = Path(__file__).resolve().parents[1]
ECS = ROOT / "deploy" / "ecs"


def tasks() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(ECS.glob("ops-*.json"))}


def production_accounts() -> set[str]:
    cfg = tomllib.loads((ROOT / "conf" / "production.example.toml").read_text())
    return set(cfg["accounts"])


def argv_of(cont: dict[str, Any]) -> list[str]:
    """The `ops ...` argv a container runs, ACCOUNT_TIER substituted as the shell would."""
    cmd: list[str] = cont["command"]
    env = {e["name"]: e["value"] for e in cont["environment"]}
    if cmd[:2] == ["sh", "-c"]:
        script = cmd[2].replace('"$ACCOUNT_TIER"', env.get("ACCOUNT_TIER", ""))
        words = shlex.split(script)
        assert words[0] == "exec", f"{cont['name']}: the role must replace the shell (exec)"
        return words[1:]
    return cmd


def test_rendered_files_are_current() -> None:
    check = subprocess.run([sys.executable, str(ECS / "render.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_one_task_per_account_role_and_shared_role() -> None:
    seen: set[tuple[str | None, str]] = set()
    for family, td in tasks().items():
        assert td["family"] == family
        (cont,) = td["containerDefinitions"]
        argv = argv_of(cont)
        assert argv[0] == "ops"
        if argv[1:3] == ["db", "migrate"]:
            continue
        args = build_parser().parse_args(argv[1:])
        assert args.role in ROLES, f"{family}: unknown role {args.role!r}"
        env = {e["name"]: e["value"] for e in cont["environment"]}
        if args.role in PER_ACCOUNT_ROLES:
            assert args.account == env["ACCOUNT_TIER"], family
            assert family == f"ops-{args.account}-{args.role}"
        else:
            assert args.account is None and "ACCOUNT_TIER" not in env, family
        key = (args.account, args.role)
        assert key not in seen, f"two task definitions run {key}"
        seen.add(key)
    want = {(a, r) for a in production_accounts() for r in PER_ACCOUNT_ROLES}
    want |= {(None, r) for r in ROLES if r not in PER_ACCOUNT_ROLES}
    assert seen == want


@pytest.mark.parametrize("family", sorted(tasks()))
def test_container_shape(family: str) -> None:
    td = tasks()[family]
    (cont,) = td["containerDefinitions"]
    images = {c["image"] for t in tasks().values() for c in t["containerDefinitions"]}
    assert images == {cont["image"]}, "every role runs the same image"
    assert cont["user"].split(":")[0] not in ("0", "root")
    env = {e["name"]: e["value"] for e in cont["environment"]}
    assert {"OPS_CONFIG", "OPS_HOME"} <= set(env)
    assert "OPS_DATABASE_URL" not in env, "the database URL must come from a secret"
    for name, value in env.items():
        assert not any(w in name.upper() for w in ("SECRET", "PASSWORD", "API_KEY", "TOKEN")), name
        assert "://" not in value, f"{family}: {name} looks like a URL with credentials"
    secrets = {s["name"]: s["valueFrom"] for s in cont["secrets"]}
    assert secrets["OPS_DATABASE_URL"].startswith("arn:aws:secretsmanager:")
    assert cont["stopTimeout"] > DEFAULT_GRACE_S
    assert cont["essential"] is True
    assert {m["containerPath"] for m in cont["mountPoints"]} == {env["OPS_HOME"]}
    assert td["taskRoleArn"].startswith("arn:aws:iam::")
