"""The deployment renderer (deploy/render.py, deploy/spec.toml) and the ECS files it writes.

What is checked (each can fail): the committed files are what the renderer produces, and
`--check` names a changed, missing or extra file; adding an account is one config block
and a render; a bad spec is refused naming the field and the value. ECS: every (account,
role) of the deployed config, the signal engine and the monitor have exactly one task
definition and one service and nothing else does (the migration is a task only); each
command is one the `ops` CLI accepts and runs the role as PID 1; every long-running task
has a `healthCheck` running `ops health` for its own role and account, without
`--ready` (a standby waiting on the lock is healthy: the rolling hand-over depends on
it), timed so a hung role is unhealthy within 15 s; the image is the same everywhere;
non-root; no secret travels as a plain environment value; the config path is one the
image has. Dockerfile (lint and PID-1 shape: tests/test_dockerfile.py): the default
config reads keys from Secrets Manager; config dir and OPS_HOME are volumes.
Kubernetes: tests/test_deploy_k8s.py.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ops.cli import ROLE_CHOICES, build_parser
from ops.roles.runtime import PER_ACCOUNT_ROLES
from ops.runtime.config import load_config
from ops.runtime.daemon import DEFAULT_GRACE_S
from ops.supervise.healthcheck import process_name, usage_problem

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ECS = DEPLOY / "ecs"
SPEC: dict[str, Any] = tomllib.loads((DEPLOY / "spec.toml").read_text())
CONFIG = load_config(ROOT / SPEC["config"])
#: The bound the issue sets: a hung role is restarted within about 10-15 s.
HUNG_DETECTED_WITHIN_S = 15


def tasks() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(ECS.glob("ops-*.json"))}


def services() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text())
            for p in sorted((ECS / "services").glob("ops-*.json"))}


def expected_units() -> set[tuple[str | None, str]]:
    """(account, role) for every process the deployed config needs."""
    shared = set(ROLE_CHOICES) - PER_ACCOUNT_ROLES
    assert shared == {"signal-engine", "monitor"}, shared
    return ({(a, r) for a in CONFIG.accounts for r in PER_ACCOUNT_ROLES}
            | {(None, r) for r in shared})


def parse(argv: list[str], where: str) -> argparse.Namespace:
    """`argv` through the real `ops` parser; an argument error fails naming `where`."""
    assert argv[0] == "ops", f"{where}: {argv} does not run ops"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        raise AssertionError(f"{where}: `{' '.join(argv)}` is refused by the ops CLI") from None


def stale_bound_s(role: str) -> float:
    wd = CONFIG.watchdog
    return wd.heartbeat_stale_by_role_s.get(role, wd.heartbeat_stale_s)


def render_in(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(tmp / "deploy" / "render.py"), *args],
                          capture_output=True, text=True, cwd=tmp, timeout=60)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """deploy/ and the deployed config in a scratch tree the renderer can rewrite."""
    shutil.copytree(DEPLOY, tmp_path / "deploy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / SPEC["config"]).parent.mkdir(parents=True)
    shutil.copy(ROOT / SPEC["config"], tmp_path / SPEC["config"])
    return tmp_path


# --------------------------------------------------------------------------- renderer


@pytest.mark.integration
def test_rendered_files_are_current() -> None:
    check = subprocess.run([sys.executable, str(DEPLOY / "render.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


@pytest.mark.integration
def test_check_names_changed_missing_and_extra_files(repo_copy: Path) -> None:
    assert render_in(repo_copy).returncode == 0
    assert render_in(repo_copy, "--check").returncode == 0
    stream = repo_copy / "deploy/k8s/overlays/large/stream.yaml"
    stream.write_text(stream.read_text().replace("failureThreshold: 2", "failureThreshold: 9"))
    (repo_copy / "deploy/ecs/ops-monitor.json").unlink()
    (repo_copy / "deploy/k8s/overlays/large/extra.yaml").write_text("kind: ConfigMap\n")
    check = render_in(repo_copy, "--check")
    assert check.returncode == 1
    assert "deploy/k8s/overlays/large/stream.yaml: out of date" in check.stderr
    assert "deploy/ecs/ops-monitor.json: missing" in check.stderr
    assert "deploy/k8s/overlays/large/extra.yaml: not rendered any more" in check.stderr
    assert render_in(repo_copy).returncode == 0
    assert render_in(repo_copy, "--check").returncode == 0
    assert not (repo_copy / "deploy/k8s/overlays/large/extra.yaml").exists()


@pytest.mark.integration
def test_an_account_is_one_config_block_and_a_render(repo_copy: Path) -> None:
    config = repo_copy / SPEC["config"]
    # The config's own commented example of a third account, uncommented.
    text = config.read_text()
    block = re.search(r"(?ms)^# (\[accounts\.medium\]\n.*?)\n\n", text)
    assert block, "the example config no longer shows how to add an account"
    config.write_text(text + "\n" + re.sub(r"(?m)^# ?", "", block[1]) + "\n")
    assert render_in(repo_copy).returncode == 0
    for role in PER_ACCOUNT_ROLES:
        task = json.loads((repo_copy / f"deploy/ecs/ops-medium-{role}.json").read_text())
        assert task["containerDefinitions"][0]["command"][-2:] == ["--account", "medium"]
        assert (repo_copy / f"deploy/ecs/services/ops-medium-{role}.json").exists()
        assert (repo_copy / f"deploy/k8s/overlays/medium/{role}.yaml").exists()
    base = (repo_copy / "deploy/k8s/base/externalsecrets.yaml").read_text()
    assert "key: ops-pipeline/alpaca/medium" in base
    assert "overlays/medium" in (repo_copy / "deploy/k8s/kustomization.yaml").read_text()
    # The shared signal engine reads every account's keys, the new one's too.
    engine = (repo_copy / "deploy/k8s/overlays/shared/signal-engine.yaml").read_text()
    assert "OPS_SECRET_OPS_PIPELINE_ALPACA_MEDIUM" in engine


@pytest.mark.integration
def test_a_bad_spec_is_refused_naming_field_and_value(repo_copy: Path) -> None:
    spec = repo_copy / "deploy/spec.toml"
    spec.write_text(spec.read_text().replace("period_s = 5", "period_s = 2"))
    out = render_in(repo_copy)
    assert out.returncode == 2
    assert "spec.toml: health.period_s:" in out.stderr and "(got 2)" in out.stderr
    assert render_in(repo_copy, "--check").returncode == 2


# --------------------------------------------------------------------------- ECS


def test_one_task_and_service_per_unit() -> None:
    seen: set[tuple[str | None, str]] = set()
    for family, td in tasks().items():
        assert td["family"] == family
        (cont,) = td["containerDefinitions"]
        args = parse(cont["command"], family)
        if args.command == "db":
            assert family == "ops-migrate" and cont["command"] == ["ops", "db", "migrate"]
            continue
        assert args.command == "run", family
        want = f"ops-{args.account}-{args.role}" if args.account else f"ops-{args.role}"
        assert family == want
        key = (args.account, args.role)
        assert key not in seen, f"two task definitions run {key}"
        seen.add(key)
    assert seen == expected_units()
    units = {f for f in tasks() if f != "ops-migrate"}
    assert set(services()) == units, "every long-running task is a service, the rest none"
    assert "ops-monitor" in units


@pytest.mark.parametrize("family", sorted(tasks()))
def test_container_shape(family: str) -> None:
    td = tasks()[family]
    (cont,) = td["containerDefinitions"]
    images = {c["image"] for t in tasks().values() for c in t["containerDefinitions"]}
    assert images == {cont["image"]}, "every role runs the same image"
    assert cont["user"].split(":")[0] not in ("0", "root")
    # Exec form: the role is PID 1 (no shell to swallow ECS's SIGTERM).
    assert cont["command"][0] == "ops"
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
    assert cont["readonlyRootFilesystem"] is True
    mounts = {m["containerPath"] for m in cont["mountPoints"]}
    assert mounts == {env["OPS_HOME"], "/tmp"}, "read-only root: only these are writable"
    assert td["taskRoleArn"].startswith("arn:aws:iam::")


@pytest.mark.parametrize("family", sorted(set(tasks()) - {"ops-migrate"}))
def test_health_check_is_the_roles_own_liveness(family: str) -> None:
    (cont,) = tasks()[family]["containerDefinitions"]
    run = parse(cont["command"], family)
    hc = cont.get("healthCheck")
    assert hc, f"{family}: no healthCheck: ECS would never notice a hung role"
    assert hc["command"][0] == "CMD", "exec form: no shell between ECS and the check"
    check = parse(hc["command"][1:], f"{family} healthCheck")
    assert check.command == "health"
    assert (check.role, check.account) == (run.role, run.account)
    assert not check.ready, "--ready would fail a standby and break the rolling hand-over"
    # What `ops health` accepts beyond argparse, and the file the role itself writes.
    assert usage_problem(check.role, check.account) is None
    assert process_name(check.role, check.account) == cont["name"]
    # ECS's own bounds, and a hung role unhealthy within the bound.
    assert 5 <= hc["interval"] <= 300 and 2 <= hc["timeout"] < hc["interval"]
    assert 1 <= hc["retries"] <= 10 and 0 <= hc["startPeriod"] <= 300
    detected = stale_bound_s(run.role) + hc["interval"] * hc["retries"]
    assert detected <= HUNG_DETECTED_WITHIN_S, f"{family}: a hang is noticed after {detected}s"


def test_the_migration_task_has_no_health_check() -> None:
    """A one-off run-task: its exit code is its outcome, and `ops health` has no role
    for it."""
    (cont,) = tasks()["ops-migrate"]["containerDefinitions"]
    assert "healthCheck" not in cont


@pytest.mark.parametrize("family", sorted(services()))
def test_service_shape(family: str) -> None:
    svc = services()[family]
    assert svc["serviceName"] == svc["taskDefinition"] == family
    assert svc["desiredCount"] == 1, "one copy; a second would only wait on the lock"
    dc = svc["deploymentConfiguration"]
    # Rolling: the new task is healthy as a standby before the old one stops.
    assert (dc["minimumHealthyPercent"], dc["maximumPercent"]) == (100, 200)
    assert dc["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    assert svc["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"


# --------------------------------------------------------------------------- image


def _dockerfile() -> str:
    """The Dockerfile without comment lines (its comments show other OPS_CONFIG values)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))


def _image_config() -> tuple[str, str]:
    """(default OPS_CONFIG, the repository file the Dockerfile copies there)."""
    text = _dockerfile()
    config_path = re.search(r"OPS_CONFIG=(\S+)", text)
    assert config_path, "Dockerfile sets no default OPS_CONFIG"
    copies = re.findall(r"(?m)^COPY\s+(\S+)\s+(\S+)\s*$", text)
    sources = [src for src, dest in copies if dest == config_path[1]]
    assert sources, f"nothing is copied to the default OPS_CONFIG {config_path[1]}"
    return config_path[1], sources[0]


def test_ecs_config_path_exists_in_the_image() -> None:
    image_path, _ = _image_config()
    for family, td in tasks().items():
        env = {e["name"]: e["value"] for e in td["containerDefinitions"][0]["environment"]}
        assert env["OPS_CONFIG"] == image_path, f"{family}: {env['OPS_CONFIG']} is not in the image"


def test_image_defaults_to_secrets_manager_config() -> None:
    """The image's default OPS_CONFIG is a COPY of a config whose credentials come from AWS
    Secrets Manager (the demo's file provider is opt-in): what the ECS tasks read."""
    _, source = _image_config()
    cfg = load_config(ROOT / source)
    assert cfg.credentials.provider == "aws"
    cmd = json.loads(re.findall(r"(?m)^CMD\s+(\[.*\])\s*$", _dockerfile())[-1])
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
    assert (home[1], config[1]) == (SPEC["home"], SPEC["config_path"])
