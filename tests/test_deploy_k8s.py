"""The Kubernetes manifests in deploy/k8s/ (rendered by deploy/render.py; the renderer's
own tests and ECS are tests/test_deploy.py).

Structural checks, always run on the committed files (each can fail): every (account,
role) of the deployed config, the signal engine and the monitor have exactly one
Deployment, in the account's overlay or the shared one; replicas 1 with `Recreate`; the
command and the startup / liveness / readiness probes are ones the `ops` CLI accepts,
the probes `ops health` for the Deployment's own role and account (readiness alone with
`--ready`), timed so a hung role is restarted within 15 s, and run through the CLI they
judge the heartbeat file of the process the Deployment runs (named as that process: a
standby alive but not ready, the active copy both, a stale one neither); the pod runs as
the image's non-root user with a read-only root, no privilege escalation, no capabilities, the
runtime's seccomp profile, writable emptyDirs only at OPS_HOME and /tmp; requests and
limits; the IRSA service account with no API token; the config mounted where OPS_CONFIG
points, from a ConfigMap whose config reads keys as the env provider does, and every key
and the database URL from Secrets made by ExternalSecrets (never inline); the migration
Job. With kubectl present: `kubectl kustomize` renders the base, each overlay and the
whole, and renders exactly the objects in those files.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from ops.cli import ROLE_CHOICES, build_parser
from ops.roles.runtime import PER_ACCOUNT_ROLES
from ops.runtime.config import load_config, load_config_text
from ops.runtime.credentials import env_var_for
from ops.runtime.daemon import DEFAULT_GRACE_S
from ops.supervise.healthcheck import HealthFile, health_path, process_name, write_health_file

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
SPEC: dict[str, Any] = tomllib.loads((ROOT / "deploy" / "spec.toml").read_text())
CONFIG = load_config(ROOT / SPEC["config"])
HUNG_RESTARTED_WITHIN_S = 15
SECRET_WORDS = ("SECRET", "PASSWORD", "API_KEY", "TOKEN", "DATABASE_URL")

Obj = dict[str, Any]


def docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests(directory: Path = K8S) -> Iterator[tuple[Path, Obj]]:
    for path in sorted(directory.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in docs(path):
                yield path, doc


def of_kind(kind: str) -> dict[str, tuple[Path, Obj]]:
    return {d["metadata"]["name"]: (p, d) for p, d in manifests() if d["kind"] == kind}


DEPLOYMENTS = of_kind("Deployment")


def container(obj: Obj) -> Obj:
    (cont,) = obj["spec"]["template"]["spec"]["containers"]
    return dict(cont)


def parse(argv: list[str], where: str) -> argparse.Namespace:
    assert argv[0] == "ops", f"{where}: {argv} does not run ops"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        raise AssertionError(f"{where}: `{' '.join(argv)}` is refused by the ops CLI") from None


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def dockerfile_uid() -> int:
    text = (ROOT / "Dockerfile").read_text()
    words = text.split("useradd", 1)[1].split()
    return int(words[words.index("--uid") + 1])


# --------------------------------------------------------------------------- structure


def test_one_deployment_per_unit_in_its_overlay() -> None:
    shared = set(ROLE_CHOICES) - PER_ACCOUNT_ROLES
    want = ({(a, r) for a in CONFIG.accounts for r in PER_ACCOUNT_ROLES}
            | {(None, r) for r in shared})
    seen: dict[tuple[str | None, str], str] = {}
    for name, (path, dep) in DEPLOYMENTS.items():
        args = parse(container(dep)["command"], name)
        assert args.command == "run", name
        key = (args.account, args.role)
        assert key not in seen, f"{name} and {seen.get(key)} both run {key}"
        seen[key] = name
        assert path.parent == K8S / "overlays" / (args.account or "shared"), path
        assert name == (f"{args.account}-{args.role}" if args.account else args.role)
    assert set(seen) == want
    assert "monitor" in DEPLOYMENTS and "signal-engine" in DEPLOYMENTS


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_singleton_strategy(name: str) -> None:
    spec = DEPLOYMENTS[name][1]["spec"]
    assert spec["replicas"] == 1
    # A rolling update would stall: the new pod is not ready while the old one holds
    # the lock. Recreate removes the old pod first.
    assert spec["strategy"] == {"type": "Recreate"}
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert labels["app.kubernetes.io/instance"] == name


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_probes_run_ops_health_for_this_role(name: str) -> None:
    cont = container(DEPLOYMENTS[name][1])
    run = parse(cont["command"], name)
    for probe, ready in (("startupProbe", False), ("livenessProbe", False),
                         ("readinessProbe", True)):
        assert probe in cont, f"{name}: no {probe}"
        check = parse(cont[probe]["exec"]["command"], f"{name} {probe}")
        assert check.command == "health"
        assert (check.role, check.account) == (run.role, run.account), f"{name} {probe}"
        # A standby waiting on the lock is alive: only readiness asks for the lock.
        assert check.ready is ready, f"{name} {probe}"
    live = cont["livenessProbe"]
    stale = CONFIG.watchdog.heartbeat_stale_by_role_s.get(
        run.role, CONFIG.watchdog.heartbeat_stale_s)
    # Stale after `stale` s, then `failureThreshold` failed checks: restart ordered; the
    # hung process is SIGKILLed `terminationGracePeriodSeconds` later (not the pod's 30).
    assert stale + live["periodSeconds"] * live["failureThreshold"] <= HUNG_RESTARTED_WITHIN_S
    # Long enough for a live (failing) role's graceful stop, short for a hung one.
    assert DEFAULT_GRACE_S < live["terminationGracePeriodSeconds"] <= 2 * DEFAULT_GRACE_S
    assert live["failureThreshold"] >= 2, "one slow check must not restart a role"
    # `ops health` answers in < 1 s; the timeout leaves room, and stays under the period.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert 1 < cont[probe]["timeoutSeconds"] < cont[probe]["periodSeconds"]
    start = cont["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 30, "room to boot"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_probes_judge_the_file_this_role_writes(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Each probe, run through the `ops` CLI as the kubelet runs it (the container's
    OPS_HOME), reads the heartbeat file of the process this Deployment runs: a standby is
    alive but not ready, the active copy both, a stale one neither."""
    cont = container(DEPLOYMENTS[name][1])
    env = {e["name"]: e.get("value") for e in cont["env"]}
    home = tmp_path / str(env["OPS_HOME"]).strip("/")
    monkeypatch.setenv("OPS_HOME", str(home))
    run = parse(cont["command"], name)
    assert process_name(run.role, run.account) == name, "Deployment named as its process"
    path = health_path(home, name)

    def probe(which: str) -> int:
        args = parse(cont[which]["exec"]["command"], f"{name} {which}")
        code = int(args.handler(args))
        assert len(capsys.readouterr().out.strip().splitlines()) == 1
        return code

    assert probe("livenessProbe") == 2, "no file yet"
    for active, ts, want in ((False, time.time(), (0, 0, 1)), (True, time.time(), (0, 0, 0)),
                             (True, time.time() - 60, (1, 1, 1))):
        write_health_file(path, HealthFile(
            process=path.stem, pid=os.getpid(), ts=ts, interval_s=1.0, stale_s=5.0,
            active=active, failing=False, failing_reason=None))
        got = tuple(probe(p) for p in ("startupProbe", "livenessProbe", "readinessProbe"))
        assert got == want, (active, ts)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_pod_security(name: str) -> None:
    pod = DEPLOYMENTS[name][1]["spec"]["template"]["spec"]
    ctx = pod["securityContext"]
    uid = dockerfile_uid()
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == ctx["runAsGroup"] == ctx["fsGroup"] == uid
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    cont = container(DEPLOYMENTS[name][1])
    c = cont["securityContext"]
    assert c["allowPrivilegeEscalation"] is False
    assert c["readOnlyRootFilesystem"] is True
    assert c["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in c and "runAsUser" not in c
    assert pod["terminationGracePeriodSeconds"] > DEFAULT_GRACE_S


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_writable_paths_and_config_mount(name: str) -> None:
    pod = DEPLOYMENTS[name][1]["spec"]["template"]["spec"]
    cont = container(DEPLOYMENTS[name][1])
    env = {e["name"]: e.get("value") for e in cont["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in cont["volumeMounts"]}
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    assert writable == {env["OPS_HOME"], "/tmp"}
    for path in writable:
        assert "emptyDir" in volumes[mounts[path]["name"]]
    config = PurePosixPath(str(env["OPS_CONFIG"]))
    mount = mounts[str(config.parent)]
    assert mount["readOnly"] is True and "subPath" not in mount, "hot reload needs the dir"
    source = volumes[mount["name"]]["configMap"]
    assert source["name"] in generated_config_maps()
    assert {"key": config.name, "path": config.name} in source["items"]


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_resources(name: str) -> None:
    res = container(DEPLOYMENTS[name][1])["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    request, limit = mebibytes(res["requests"]["memory"]), mebibytes(res["limits"]["memory"])
    # A role is ~60-70 MB; a health check adds up to 40 MB while it runs.
    assert 128 <= request <= limit <= 512


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_identity_and_secrets(name: str) -> None:
    pod = DEPLOYMENTS[name][1]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    sa = of_kind("ServiceAccount")[pod["serviceAccountName"]][1]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
        "arn:aws:iam::")
    cont = container(DEPLOYMENTS[name][1])
    made = external_secret_targets()
    run = parse(cont["command"], name)
    refs: dict[str, tuple[str, str]] = {}
    for e in cont["env"]:
        if "value" in e:
            assert not any(w in e["name"].upper() for w in SECRET_WORDS), e["name"]
            assert "://" not in e["value"], f"{name}: {e['name']} looks like a URL"
            continue
        ref = e["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) in made, f"{name}: {ref} is made by no ExternalSecret"
        refs[e["name"]] = made[(ref["name"], ref["key"])]
    assert refs.pop("OPS_DATABASE_URL") == ("database", "ops-pipeline/database-url")
    # The keys this role reads, under the names ops.runtime.credentials.EnvProvider looks up.
    needs = (list(CONFIG.accounts) if run.role == "signal-engine"
             else [run.account] if run.account else [])
    want = {env_var_for(CONFIG.accounts[a].secret_id): ("alpaca", CONFIG.accounts[a].secret_id)
            for a in needs}
    assert refs == want


def external_secret_targets() -> dict[tuple[str, str], tuple[str, str]]:
    """(Secret name, key) -> ("database" | "alpaca", Secrets Manager id) for every secret
    an ExternalSecret makes."""
    stores = of_kind("SecretStore")
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for _, es in of_kind("ExternalSecret").values():
        spec = es["spec"]
        assert spec["secretStoreRef"]["name"] in stores
        for item in spec["data"]:
            assert "property" not in item["remoteRef"], "the whole JSON document is the secret"
            kind = "database" if item["secretKey"] == "url" else "alpaca"
            out[(spec["target"]["name"], item["secretKey"])] = (kind, item["remoteRef"]["key"])
    return out


def test_secret_store_and_no_inline_secrets() -> None:
    kinds = {d["kind"] for _, d in manifests()}
    assert "Secret" not in kinds, "secrets come from ExternalSecrets, never from a file here"
    (store,) = [d for _, (_, d) in of_kind("SecretStore").items()]
    aws = store["spec"]["provider"]["aws"]
    assert aws["service"] == "SecretsManager"
    sa_name = aws["auth"]["jwt"]["serviceAccountRef"]["name"]
    sa = of_kind("ServiceAccount")[sa_name][1]
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    ids = {remote for kind, remote in external_secret_targets().values() if kind == "alpaca"}
    assert ids == {a.secret_id for a in CONFIG.accounts.values()}
    assert {"ops-pipeline/alpaca", "ops-pipeline/alpaca/tiny"} <= ids


def generated_config_maps() -> dict[str, Path]:
    """ConfigMap name -> its one file, from the base kustomization's generator."""
    kust = docs(K8S / "base" / "kustomization.yaml")[0]
    assert kust["generatorOptions"]["disableNameSuffixHash"] is True, "a stable name"
    return {g["name"]: K8S / "base" / g["files"][0] for g in kust["configMapGenerator"]}


def test_mounted_config_reads_keys_from_the_secrets() -> None:
    (path,) = generated_config_maps().values()
    mounted = load_config_text(path.read_text(), str(path))
    assert mounted.credentials.provider == "env"
    # Otherwise the very config that is deployed.
    assert replace(mounted, credentials=CONFIG.credentials) == CONFIG


def test_migration_job() -> None:
    (job,) = [d for _, (_, d) in of_kind("Job").items()]
    pod = job["spec"]["template"]["spec"]
    (cont,) = pod["containers"]
    assert cont["command"] == ["ops", "db", "migrate"]
    assert pod["restartPolicy"] == "Never"
    assert cont["image"] in {container(d)["image"] for _, d in DEPLOYMENTS.values()}
    assert job["metadata"]["name"].endswith(cont["image"].rsplit(":", 1)[1].replace(".", "-"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert cont["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in cont["env"]}
    assert "secretKeyRef" in env["OPS_DATABASE_URL"]["valueFrom"]
    assert not any(n.startswith("OPS_SECRET_") for n in env), "migration needs no broker keys"


def test_one_image_everywhere() -> None:
    images = {c["image"] for _, d in manifests() if d["kind"] in ("Deployment", "Job")
              for c in (d["spec"]["template"]["spec"]["containers"])}
    assert images == {SPEC["image"]}


# --------------------------------------------------------------------------- kustomize

KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def kubectl_kustomize(directory: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not run (the structural "
                    "checks above ran on the same files)")
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def identity(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.mark.integration
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomize_renders_exactly_the_files(directory: Path) -> None:
    """What kubectl applies is what the structural checks read, in the namespace."""
    namespace = SPEC["k8s"]["namespace"]
    want: dict[tuple[str, str], Obj] = {}
    for _, obj in manifests(directory):
        obj = copy.deepcopy(obj)
        if obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = namespace
        want[identity(obj)] = obj
    got = {identity(d): d for d in kubectl_kustomize(directory)}
    maps = generated_config_maps() if directory in (K8S, K8S / "base") else {}
    for name, path in maps.items():
        cm = got.pop(("ConfigMap", name), None)
        assert cm is not None, f"{directory}: no ConfigMap {name}"
        assert cm["metadata"]["namespace"] == namespace
        assert cm["data"] == {path.name: path.read_text()}
    assert set(got) == set(want)
    for key, obj in got.items():
        assert obj == want[key], key


def test_an_overlay_holds_only_its_account() -> None:
    """Deleting one account's overlay must not delete what every account shares."""
    for directory in (K8S / "overlays").iterdir():
        kinds = {d["kind"] for _, d in manifests(directory)}
        assert kinds == {"Deployment"}, directory
        kust = docs(directory / "kustomization.yaml")[0]
        assert not any(r.startswith("..") for r in kust["resources"]), directory
