"""Render every deployment file from one source of truth: deploy/spec.toml plus the
accounts of the config it names.

    python deploy/render.py            # rewrite deploy/ecs/** and deploy/k8s/**
    python deploy/render.py --check    # exit 1 naming each file that differs, is missing
                                       # or is not rendered any more

Both orchestrators get the same units: one per (account, role) for the per-account
roles, one per shared role (signal-engine, monitor), and the schema migration. Each runs
`ops run ROLE [--account TIER]` as PID 1 and is health-checked by `ops health ROLE
[--account TIER]` (Kubernetes readiness adds `--ready`: this copy holds the role's lock).

Output (paths under deploy/):
- ecs/ops-<unit>.json: Fargate task definitions; ecs/services/ops-<unit>.json: service
  definitions (`aws ecs create-service --cli-input-json`); the migration is a task only.
- k8s/base: namespace, service accounts (IRSA), the External Secrets store and secrets,
  the config as a ConfigMap, the migration Job. k8s/overlays/shared: signal-engine and
  monitor. k8s/overlays/<account>: that account's three roles. k8s/kustomization.yaml:
  all of it. Overlays do not include the base (see docs/scaling.md: deleting one
  account's overlay must not delete what every account shares).
"""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ops.core.config import ConfigError
from ops.runtime.config import load_config
from ops.runtime.credentials import env_var_for

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
SPEC = DEPLOY / "spec.toml"
HEADER = "# Rendered by deploy/render.py from deploy/spec.toml: edit those, not this file.\n"
APP = "ops-pipeline"
# What each orchestrator's files are; anything else there is reported (or removed).
MANAGED = (("ecs", "ops-*.json"), ("ecs/services", "ops-*.json"), ("k8s", "**/*"))

Obj = dict[str, Any]


# --------------------------------------------------------------------------- the spec


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Model):
    """Kubernetes requests/limits of one unit."""

    cpu: str
    cpu_limit: str
    memory: str
    memory_limit: str


class RoleSpec(Resources):
    per_account: bool
    """`ops run ROLE --account TIER` once per account, else once per deployment."""
    alpaca_keys: Literal["account", "all", "none"]
    """Whose Alpaca keys the role reads: its account's, every account's, or none."""


class AwsSpec(_Model):
    account_id: str = Field(pattern=r"^\d{12}$")
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    database_url_secret: str
    log_group: str


class HealthSpec(_Model):
    # Bounds are ECS's (interval 5-300, timeout 2-60, retries 1-10, startPeriod 0-300).
    period_s: int = Field(ge=5, le=300)
    timeout_s: int = Field(ge=2, le=60)
    failure_threshold: int = Field(ge=1, le=10)
    start_s: int = Field(ge=0, le=300)
    kill_grace_s: int = Field(ge=1)


class EcsSpec(_Model):
    cluster: str
    execution_role: str
    task_role: str
    subnets: list[str]
    security_groups: list[str]
    cpu: str
    memory: str


class K8sSpec(_Model):
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    pod_role: str
    secrets_role: str
    external_secrets_api: str
    secrets_refresh: str


class Spec(_Model):
    image: str
    config: str
    config_path: str
    home: str
    uid: int = Field(gt=0)
    stop_timeout_s: int = Field(ge=2, le=120)  # ECS Fargate allows up to 120
    aws: AwsSpec
    health: HealthSpec
    ecs: EcsSpec
    k8s: K8sSpec
    roles: dict[str, RoleSpec]
    migrate: Resources


class SpecError(Exception):
    """deploy/spec.toml or the config it names is unusable; one `FILE: KEY: PROBLEM` a line."""


def load_spec(path: Path = SPEC) -> Spec:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: {exc}") from None
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                 + ("" if e["type"] == "missing" else f" (got {e['input']!r})")
                 for e in exc.errors()]
        raise SpecError("\n".join(lines)) from None


# --------------------------------------------------------------------------- units


@dataclass(frozen=True, slots=True)
class Unit:
    """One long-running process of the deployment: a role, for one account or shared."""

    role: str
    account: str | None
    spec: RoleSpec

    @property
    def name(self) -> str:
        """The process name (heartbeat rows, health file): `large-stream`, `monitor`."""
        return f"{self.account}-{self.role}" if self.account else self.role

    def _scope(self) -> list[str]:
        return ["--account", self.account] if self.account else []

    def run(self) -> list[str]:
        return ["ops", "run", self.role, *self._scope()]

    def health(self, *, ready: bool = False) -> list[str]:
        return ["ops", "health", self.role, *self._scope(), *(["--ready"] if ready else [])]


@dataclass(frozen=True, slots=True)
class Deployment:
    spec: Spec
    accounts: Mapping[str, str]  # account -> its secret_id
    config_text: str  # the config as Kubernetes mounts it

    def units(self) -> Iterator[Unit]:
        for account in self.accounts:
            for role, rs in self.spec.roles.items():
                if rs.per_account:
                    yield Unit(role, account, rs)
        for role, rs in self.spec.roles.items():
            if not rs.per_account:
                yield Unit(role, None, rs)

    def keys_of(self, unit: Unit) -> list[str]:
        """The accounts whose Alpaca keys `unit` reads."""
        if unit.spec.alpaca_keys == "account":
            return [unit.account] if unit.account else []
        return list(self.accounts) if unit.spec.alpaca_keys == "all" else []


def env_provider_config(text: str, source: str) -> str:
    """The config text with `[credentials] provider = "env"`: on Kubernetes the keys come
    from Secrets as OPS_SECRET_<ID> variables (`ops.runtime.credentials.EnvProvider`)."""
    line = 'provider = "env"  # set by deploy/render.py: keys from Kubernetes Secrets'
    table = re.search(r"(?m)^\[credentials\][ \t]*(#.*)?$", text)
    if table is None:
        out = text.rstrip("\n") + f"\n\n[credentials]\n{line}\n"
    else:
        end = re.search(r"(?m)^\[", text[table.end():])
        stop = table.end() + end.start() if end else len(text)
        body = text[table.end():stop]
        body, n = re.subn(r'(?m)^provider\s*=\s*"[a-z]+"[^\n]*$', line, body)
        if n == 0:
            body = f"\n{line}" + body
        out = text[:table.end()] + body + text[stop:]
    try:
        want = tomllib.loads(text)
        got = tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: {exc}") from None
    want.setdefault("credentials", {})["provider"] = "env"
    if got != want:
        raise SpecError(f"{source}: could not set credentials.provider = \"env\" "
                        "(write the [credentials] table with one `provider = ...` line)")
    return out


def load_deployment(spec_path: Path = SPEC) -> Deployment:
    spec = load_spec(spec_path)
    config_file = ROOT / spec.config
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        raise SpecError(f"{spec_path}: config: {exc}") from None
    text = env_provider_config(config_file.read_text(encoding="utf-8"), str(config_file))
    accounts = {name: acct.secret_id for name, acct in config.accounts.items()}
    return Deployment(spec, accounts, text)


# --------------------------------------------------------------------------- ECS


def _arn(spec: Spec, service: str, resource: str) -> str:
    region = "" if service == "iam" else spec.aws.region
    return f"arn:aws:{service}:{region}:{spec.aws.account_id}:{resource}"


def ecs_task(spec: Spec, family: str, name: str, command: list[str],
             health: list[str] | None) -> Obj:
    container: Obj = {
        "name": name,
        "image": spec.image,
        "essential": True,
        "user": f"{spec.uid}:{spec.uid}",
        # Exec form: the role is PID 1 and gets ECS's SIGTERM itself.
        "command": command,
        "environment": [
            {"name": "OPS_CONFIG", "value": spec.config_path},
            {"name": "OPS_HOME", "value": spec.home},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        # The URL carries a password: injected by ECS from Secrets Manager, never inline.
        # The Alpaca keys are read by the process (config [credentials] provider "aws").
        "secrets": [{"name": "OPS_DATABASE_URL",
                     "valueFrom": _arn(spec, "secretsmanager",
                                       f"secret:{spec.aws.database_url_secret}")}],
        "stopTimeout": spec.stop_timeout_s,
        "readonlyRootFilesystem": True,
        "mountPoints": [{"sourceVolume": "ops-home", "containerPath": spec.home},
                        {"sourceVolume": "tmp", "containerPath": "/tmp"}],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": spec.aws.log_group,
                        "awslogs-region": spec.aws.region,
                        "awslogs-stream-prefix": name},
        },
    }
    if health is not None:
        h = spec.health
        container["healthCheck"] = {
            "command": ["CMD", *health],
            "interval": h.period_s,
            "timeout": h.timeout_s,
            "retries": h.failure_threshold,
            "startPeriod": h.start_s,
        }
    return {
        "family": family,
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": spec.ecs.cpu,
        "memory": spec.ecs.memory,
        "executionRoleArn": _arn(spec, "iam", f"role/{spec.ecs.execution_role}"),
        "taskRoleArn": _arn(spec, "iam", f"role/{spec.ecs.task_role}"),
        # Task storage: survives a container restart inside the task, not a new task
        # (docs/scaling.md on the outage buffer).
        "volumes": [{"name": "ops-home"}, {"name": "tmp"}],
        "containerDefinitions": [container],
    }


def ecs_service(spec: Spec, family: str) -> Obj:
    return {
        "cluster": spec.ecs.cluster,
        "serviceName": family,
        "taskDefinition": family,
        "desiredCount": 1,
        "launchType": "FARGATE",
        # Rolling hand-over: the new task waits on the role's advisory lock, healthy as a
        # standby (`ops health` without --ready); once it is, ECS stops the old one and
        # the new one takes the lock within about a second.
        "deploymentConfiguration": {
            "minimumHealthyPercent": 100,
            "maximumPercent": 200,
            "deploymentCircuitBreaker": {"enable": True, "rollback": True},
        },
        "networkConfiguration": {"awsvpcConfiguration": {
            "subnets": spec.ecs.subnets,
            "securityGroups": spec.ecs.security_groups,
            "assignPublicIp": "DISABLED",
        }},
    }


def render_ecs(dep: Deployment) -> dict[str, Obj]:
    out: dict[str, Obj] = {}
    for unit in dep.units():
        family = f"ops-{unit.name}"
        out[f"ecs/{family}.json"] = ecs_task(dep.spec, family, unit.name, unit.run(),
                                             unit.health())
        out[f"ecs/services/{family}.json"] = ecs_service(dep.spec, family)
    # A one-off run-task: its outcome is its exit code, so no health check.
    out["ecs/ops-migrate.json"] = ecs_task(dep.spec, "ops-migrate", "migrate",
                                           ["ops", "db", "migrate"], None)
    return out


# --------------------------------------------------------------------------- Kubernetes

SA = APP  # the roles' service account
SECRETS_SA = f"{APP}-secrets"
STORE = "aws-secrets-manager"
DB_SECRET = "ops-database"
CONFIG_MAP = "ops-config"


def alpaca_secret(account: str) -> str:
    return f"ops-alpaca-{account}"


def labels(component: str, instance: str, account: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": APP,
           "app.kubernetes.io/component": component,
           "app.kubernetes.io/instance": instance}
    if account:
        out["ops-pipeline/account"] = account
    return out


def _meta(name: str, lab: Mapping[str, str], **extra: Any) -> Obj:
    return {"name": name, "labels": dict(lab), **extra}


def _probe(argv: list[str], h: HealthSpec, threshold: int) -> Obj:
    return {"exec": {"command": argv}, "periodSeconds": h.period_s,
            "timeoutSeconds": h.timeout_s, "failureThreshold": threshold}


def pod_spec(dep: Deployment, name: str, command: list[str], res: Resources,
             keys: list[str], unit: Unit | None) -> Obj:
    spec = dep.spec
    env: list[Obj] = [
        {"name": "OPS_CONFIG", "value": spec.config_path},
        {"name": "OPS_HOME", "value": spec.home},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "OPS_DATABASE_URL",
         "valueFrom": {"secretKeyRef": {"name": DB_SECRET, "key": "url"}}},
    ]
    # Each account's secret JSON as the variable `ops.runtime.credentials.EnvProvider` reads.
    env += [{"name": env_var_for(dep.accounts[a]),
             "valueFrom": {"secretKeyRef": {"name": alpaca_secret(a), "key": "secret"}}}
            for a in keys]
    container: Obj = {
        "name": name,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": env,
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory},
                      "limits": {"cpu": res.cpu_limit, "memory": res.memory_limit}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "ops-home", "mountPath": spec.home},
            {"name": "tmp", "mountPath": "/tmp"},
            # The directory, not a subPath: ConfigMap updates reach it, and the roles'
            # hot reload watches the directory.
            {"name": "config", "mountPath": str(PurePosixPath(spec.config_path).parent),
             "readOnly": True},
        ],
    }
    if unit is not None:
        h = spec.health
        container["startupProbe"] = _probe(unit.health(), h,
                                           max(1, math.ceil(h.start_s / h.period_s)))
        container["livenessProbe"] = {**_probe(unit.health(), h, h.failure_threshold),
                                      "terminationGracePeriodSeconds": h.kill_grace_s}
        container["readinessProbe"] = _probe(unit.health(ready=True), h, 1)
    return {
        "serviceAccountName": SA,
        "automountServiceAccountToken": False,  # no role talks to the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.stop_timeout_s,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.uid,
            "runAsGroup": spec.uid,
            "fsGroup": spec.uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "ops-home", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            {"name": "config", "configMap": {
                "name": CONFIG_MAP,
                "items": [{"key": PurePosixPath(spec.config_path).name,
                           "path": PurePosixPath(spec.config_path).name}]}},
        ],
    }


def k8s_deployment(dep: Deployment, unit: Unit) -> Obj:
    lab = labels(unit.role, unit.name, unit.account)
    selector = {k: lab[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(unit.name, lab),
        "spec": {
            "replicas": 1,
            # Recreate: the old pod is gone before the new one starts. A rolling update
            # would stall: the new pod is not ready (--ready) while the old one holds
            # the lock, and the old one is not removed until the new one is ready.
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": lab},
                "spec": pod_spec(dep, unit.role, unit.run(), unit.spec,
                                 dep.keys_of(unit), unit),
            },
        },
    }


def release(image: str) -> str:
    """The image's tag (or the start of its digest) as a DNS label: `1.0.0` -> `1-0-0`."""
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        tag = last.split("@", 1)[1].split(":")[-1][:12]
    else:
        tag = last.split(":", 1)[1] if ":" in last else "latest"
    return re.sub(r"[^a-z0-9-]+", "-", tag.lower()).strip("-")[:40].strip("-") or "latest"


def migrate_job(dep: Deployment) -> Obj:
    # One Job per image: a Job's pod template cannot change, and a new release is a new
    # migration run (idempotent: a no-op when the schema is current).
    name = f"migrate-{release(dep.spec.image)}"
    lab = labels("migrate", name)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(name, lab),
        "spec": {
            "backoffLimit": 4,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": lab},
                "spec": {**pod_spec(dep, "migrate", ["ops", "db", "migrate"],
                                    dep.spec.migrate, [], None),
                         "restartPolicy": "Never"},
            },
        },
    }


def service_account(dep: Deployment, name: str, role: str) -> Obj:
    arn = _arn(dep.spec, "iam", f"role/{role}")
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(name, labels("identity", name),
                          annotations={"eks.amazonaws.com/role-arn": arn}),
        "automountServiceAccountToken": False,
    }


def external_secret(dep: Deployment, name: str, key: str, remote: str,
                    account: str | None = None) -> Obj:
    return {
        "apiVersion": dep.spec.k8s.external_secrets_api,
        "kind": "ExternalSecret",
        "metadata": _meta(name, labels("secret", name, account)),
        "spec": {
            "refreshInterval": dep.spec.k8s.secrets_refresh,
            "secretStoreRef": {"name": STORE, "kind": "SecretStore"},
            "target": {"name": name, "creationPolicy": "Owner"},
            # No `property`: the whole SecretString, i.e. the JSON document
            # {"api_key", "api_secret", "account_name"} the env provider parses.
            "data": [{"secretKey": key, "remoteRef": {"key": remote}}],
        },
    }


def render_k8s(dep: Deployment) -> dict[str, Obj | list[Obj] | str]:
    spec = dep.spec
    ns = spec.k8s.namespace
    out: dict[str, Obj | list[Obj] | str] = {}

    def kustomization(resources: list[str], **extra: Any) -> Obj:
        return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "namespace": ns, "resources": resources, **extra}

    config_name = PurePosixPath(spec.config_path).name
    out["k8s/base/namespace.yaml"] = {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": _meta(ns, {"app.kubernetes.io/name": APP})}
    out["k8s/base/serviceaccounts.yaml"] = [
        service_account(dep, SA, spec.k8s.pod_role),
        service_account(dep, SECRETS_SA, spec.k8s.secrets_role)]
    out["k8s/base/secretstore.yaml"] = {
        "apiVersion": spec.k8s.external_secrets_api,
        "kind": "SecretStore",
        "metadata": _meta(STORE, labels("secret", STORE)),
        "spec": {"provider": {"aws": {
            "service": "SecretsManager",
            "region": spec.aws.region,
            "auth": {"jwt": {"serviceAccountRef": {"name": SECRETS_SA}}}}}},
    }
    out["k8s/base/externalsecrets.yaml"] = [
        external_secret(dep, DB_SECRET, "url", spec.aws.database_url_secret),
        *(external_secret(dep, alpaca_secret(a), "secret", sid, a)
          for a, sid in dep.accounts.items())]
    out["k8s/base/migrate-job.yaml"] = migrate_job(dep)
    out[f"k8s/base/{config_name}"] = dep.config_text
    out["k8s/base/kustomization.yaml"] = kustomization(
        ["namespace.yaml", "serviceaccounts.yaml", "secretstore.yaml",
         "externalsecrets.yaml", "migrate-job.yaml"],
        configMapGenerator=[{"name": CONFIG_MAP, "files": [config_name],
                             "options": {"labels": labels("config", CONFIG_MAP)}}],
        # A stable name: pods are not rolled by a config edit; the roles hot-reload it
        # (URLs, keys, account numbers need `kubectl rollout restart`).
        generatorOptions={"disableNameSuffixHash": True},
    )
    groups: dict[str, list[Unit]] = {}
    for unit in dep.units():
        groups.setdefault(unit.account or "shared", []).append(unit)
    for group, units in groups.items():
        for unit in units:
            out[f"k8s/overlays/{group}/{unit.role}.yaml"] = k8s_deployment(dep, unit)
        out[f"k8s/overlays/{group}/kustomization.yaml"] = kustomization(
            [f"{u.role}.yaml" for u in units])
    out["k8s/kustomization.yaml"] = kustomization(
        ["base", *(f"overlays/{g}" for g in groups)])
    return out


# --------------------------------------------------------------------------- files


def _yaml(obj: Obj | list[Obj]) -> str:
    docs = obj if isinstance(obj, list) else [obj]
    return HEADER + yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False,
                                       width=100)


def render(dep: Deployment) -> dict[str, str]:
    """Relative path under deploy/ -> file text."""
    files = {path: json.dumps(obj, indent=2) + "\n" for path, obj in render_ecs(dep).items()}
    for path, k8s in render_k8s(dep).items():
        files[path] = k8s if isinstance(k8s, str) else _yaml(k8s)
    return files


def managed_files(deploy: Path) -> set[str]:
    return {p.relative_to(deploy).as_posix()
            for sub, pattern in MANAGED for p in (deploy / sub).glob(pattern) if p.is_file()}


def main(argv: list[str]) -> int:
    try:
        files = render(load_deployment())
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    extra = sorted(managed_files(DEPLOY) - set(files))
    if "--check" in argv:
        bad = [f"deploy/{p}: {'missing' if not (DEPLOY / p).exists() else 'out of date'}"
               for p, text in files.items()
               if not (DEPLOY / p).exists() or (DEPLOY / p).read_text() != text]
        bad += [f"deploy/{p}: not rendered any more" for p in extra]
        for line in bad:
            print(f"{line}; run python deploy/render.py", file=sys.stderr)
        return 1 if bad else 0
    for p, text in files.items():
        (DEPLOY / p).parent.mkdir(parents=True, exist_ok=True)
        (DEPLOY / p).write_text(text)
    for p in extra:
        (DEPLOY / p).unlink()
    for d in sorted((DEPLOY / "k8s").rglob("*"), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
