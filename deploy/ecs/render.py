"""Render the ECS task definitions in this folder: one per (account, role) plus the shared
signal-engine and a one-off migration task. Same image everywhere; the role is the command.

    python deploy/ecs/render.py            # rewrite deploy/ecs/*.json
    python deploy/ecs/render.py --check    # exit 1 if the files differ from the render

Edit the constants below (image, ARNs, region, accounts) for your AWS account; adding an
account is one entry in ACCOUNTS. tests/test_deploy.py validates the shape of the output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ops-pipeline:1.0.0"
REGION = "us-east-1"
EXECUTION_ROLE = "arn:aws:iam::123456789012:role/ops-pipeline-ecs-execution"
TASK_ROLE = "arn:aws:iam::123456789012:role/ops-pipeline-task"  # secretsmanager:GetSecretValue
DATABASE_URL_SECRET = ("arn:aws:secretsmanager:us-east-1:123456789012:"
                       "secret:ops-pipeline/database-url")
CONFIG = "/app/conf/production.toml"  # baked into a derived image or mounted (EFS/bind)
ACCOUNTS = ("large", "tiny")  # ACCOUNT_TIER values: [accounts.NAME] in the config
PER_ACCOUNT_ROLES = ("stream", "dispatcher", "position-manager")
# Roles finish in-flight work within 10 s of SIGTERM (Daemon grace); ECS then SIGKILLs.
STOP_TIMEOUT_S = 30


def container(name: str, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "image": IMAGE,
        "essential": True,
        "user": "10001:10001",  # the image's non-root `ops` user
        "command": command,
        "environment": [{"name": k, "value": v} for k, v in sorted(env.items())],
        # The database URL carries a password: injected from Secrets Manager, never inline.
        # Alpaca keys are read by the process itself (credentials provider "aws").
        "secrets": [{"name": "OPS_DATABASE_URL", "valueFrom": DATABASE_URL_SECRET}],
        "stopTimeout": STOP_TIMEOUT_S,
        "readonlyRootFilesystem": True,
        "mountPoints": [{"sourceVolume": "ops-home", "containerPath": "/var/lib/ops"}],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": "/ops-pipeline", "awslogs-region": REGION,
                        "awslogs-stream-prefix": name},
        },
    }


def task(family: str, cont: dict[str, Any], cpu: str = "256",
         memory: str = "512") -> dict[str, Any]:
    return {
        "family": family,
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": cpu,
        "memory": memory,
        "executionRoleArn": EXECUTION_ROLE,
        "taskRoleArn": TASK_ROLE,
        # OPS_HOME: the SQLite outage buffer and logs. Task storage survives a container
        # restart inside the task, not a new task: see docs/scaling.md on the buffer.
        "volumes": [{"name": "ops-home"}],
        "containerDefinitions": [cont],
    }


def render() -> dict[str, dict[str, Any]]:
    base = {"OPS_CONFIG": CONFIG, "OPS_HOME": "/var/lib/ops", "PYTHONUNBUFFERED": "1"}
    out: dict[str, dict[str, Any]] = {}
    for tier in ACCOUNTS:
        for role in PER_ACCOUNT_ROLES:
            name = f"{tier}-{role}"
            # `exec`: the role becomes PID 1, so ECS's SIGTERM reaches the daemon directly.
            cmd = ["sh", "-c", f'exec ops run {role} --account "$ACCOUNT_TIER"']
            env = {**base, "ACCOUNT_TIER": tier}
            out[f"ops-{name}"] = task(f"ops-{name}", container(name, cmd, env))
    out["ops-signal-engine"] = task("ops-signal-engine", container(
        "signal-engine", ["ops", "run", "signal-engine"], base))
    out["ops-migrate"] = task("ops-migrate", container("migrate", ["ops", "db", "migrate"], base))
    return out


def main(argv: list[str]) -> int:
    rendered = {f"{k}.json": json.dumps(v, indent=2) + "\n" for k, v in render().items()}
    if "--check" in argv:
        stale = [n for n, text in rendered.items()
                 if not (HERE / n).exists() or (HERE / n).read_text() != text]
        extra = sorted({p.name for p in HERE.glob("ops-*.json")} - set(rendered))
        for n in stale + extra:
            print(f"deploy/ecs/{n}: out of date; run python deploy/ecs/render.py", file=sys.stderr)
        return 1 if stale or extra else 0
    for name, text in rendered.items():
        (HERE / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
