"""Shape of the deploy/ examples: the ECS task definitions rendered by deploy/ecs/render.py.

What is checked (each can fail): the files are what render.py produces; every (account,
role) of the example production config has exactly one task definition and nothing else
does; each command is one the `ops` CLI accepts, with ACCOUNT_TIER substituted; the role
runs as PID 1 (`exec`); the image is the same everywhere; the container is non-root; no
secret travels as a plain environment value (the database URL comes from Secrets Manager);
ECS waits longer than the daemon's grace before SIGKILL. And for the Dockerfile (its lint
and PID-1/USER/HEALTHCHECK shape are tests/test_dockerfile.py): the default config is one
whose credentials come from Secrets Manager, and config dir and OPS_HOME are volumes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ops.cli import build_parser
from ops.config import load_config
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
    want: set[tuple[str | None, str]] = {
        (a, r) for a in production_accounts() for r in PER_ACCOUNT_ROLES}
    shared: set[tuple[str | None, str]] = {(None, r) for r in ROLES if r not in PER_ACCOUNT_ROLES}
    want |= shared
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


def _dockerfile() -> str:
    """The Dockerfile without comment lines (its comments show other OPS_CONFIG values)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))


def test_image_defaults_to_secrets_manager_config() -> None:
    """The image's default OPS_CONFIG is a COPY of a config whose credentials come from AWS
    Secrets Manager (the demo's file provider is opt-in)."""
    text = _dockerfile()
    config_path = re.search(r"OPS_CONFIG=(\S+)", text)
    assert config_path, "Dockerfile sets no default OPS_CONFIG"
    copies = re.findall(r"(?m)^COPY\s+(\S+)\s+(\S+)\s*$", text)
    sources = [src for src, dest in copies if dest == config_path[1]]
    assert sources, f"nothing is copied to the default OPS_CONFIG {config_path[1]}"
    cfg = load_config(ROOT / sources[0])
    assert cfg.credentials.provider == "aws"
    cmd = json.loads(re.findall(r"(?m)^CMD\s+(\[.*\])\s*$", text)[-1])
    assert "--demo" not in cmd, "the default command must not be the demo"


def test_config_and_home_are_volumes() -> None:
    text = _dockerfile()
    volumes = [v for line in re.findall(r"(?m)^VOLUME\s+(\[.*\])\s*$", text)
               for v in json.loads(line)]
    home = re.search(r"OPS_HOME=(\S+)", text)
    config = re.search(r"OPS_CONFIG=(\S+)", text)
    assert home and config
    assert home[1] in volumes
    assert str(Path(config[1]).parent) in volumes
