"""What is imported is declared, and what is declared is locked.

- every third-party package imported by ops/, tui/, tests/, bench/ or deploy/ is a direct
  dependency in pyproject.toml (runtime or the `dev` extra), not something another package
  happens to pull in;
- requirements-dev.lock pins a version satisfying every declared requirement, on CPython
  3.11 and 3.13 on Linux x86_64 (the lock is universal: markers select per Python);
- requirements.lock (the container's, runtime only) pins the same versions.
A failure here means: declare the package, or run scripts/lock.sh.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"ops", "tui", "tests", "bench", "deploy"}


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in
            [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def _pins(lock: str) -> dict[str, list[tuple[str, Marker | None]]]:
    """name -> [(version, marker)] from a `uv pip compile` output (hash lines skipped)."""
    pins: dict[str, list[tuple[str, Marker | None]]] = {}
    for line in (REPO / lock).read_text().splitlines():
        if not line or line[0] in " #-":
            continue
        req = Requirement(line.rstrip(" \\"))
        (version,) = (spec.version for spec in req.specifier if spec.operator == "==")
        pins.setdefault(canonicalize_name(req.name), []).append((version, req.marker))
    return pins


def _linux_cpython(version: str) -> dict[str, str]:
    return {"python_version": version, "python_full_version": f"{version}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "platform_machine": "x86_64", "extra": ""}


def _imported_modules() -> dict[str, str]:
    """Top-level third-party module -> one file importing it."""
    found: dict[str, str] = {}
    for folder in sorted(FIRST_PARTY):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if (top not in sys.stdlib_module_names and top not in FIRST_PARTY
                            and top != "__future__"):
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared() -> None:
    declared = {canonicalize_name(r.name) for r in _declared()}
    installed = importlib.metadata.packages_distributions()
    imported = _imported_modules()
    assert {"asyncpg", "textual", "pytest"} <= imported.keys()  # the walk sees imports
    missing = []
    for module, where in sorted(imported.items()):
        # Not installed here (pgserver on 3.13): the module is named as its distribution.
        dists = {canonicalize_name(d) for d in installed.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} ({where}; from {', '.join(sorted(dists))})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


@pytest.mark.parametrize("python", ["3.11", "3.13"])
def test_the_dev_lock_satisfies_pyproject(python: str) -> None:
    env = _linux_cpython(python)
    pins = _pins("requirements-dev.lock")
    problems = []
    for req in _declared():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        chosen = [version for version, marker in pins.get(canonicalize_name(req.name), [])
                  if marker is None or marker.evaluate(env)]
        if len(chosen) != 1 or chosen[0] not in req.specifier:
            problems.append(f"{req} -> locked {chosen or 'nothing'}")
    assert not problems, f"requirements-dev.lock is stale (run scripts/lock.sh): {problems}"


def test_pgserver_is_locked_only_below_python_3_13() -> None:
    ((_, marker),) = _pins("requirements-dev.lock")["pgserver"]
    assert marker is not None
    assert marker.evaluate(_linux_cpython("3.12"))
    assert not marker.evaluate(_linux_cpython("3.13"))


def test_the_runtime_lock_has_the_dev_locks_versions() -> None:
    dev = _pins("requirements-dev.lock")
    runtime = _pins("requirements.lock")
    assert "textual" in runtime and "pytest" not in runtime
    differ = {name: (versions, dev.get(name)) for name, versions in runtime.items()
              if {v for v, _ in versions} != {v for v, _ in dev.get(name, [])}}
    assert not differ, f"requirements.lock differs from requirements-dev.lock: {differ}"
