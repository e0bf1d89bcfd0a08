"""The store boundary, checked on the source: outside ops/store nothing touches the asyncpg
pool or a raw connection, nor decides which database errors are outages. Callers go
through `Store` (`Store.direct` with a query function of ops/store) and catch
`StorageUnavailable`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: What only ops/store may use: the driver, raw connections and pools, the classifier.
STORE_ONLY_MODULES = {"asyncpg"}
STORE_ONLY_NAMES = {"is_outage", "connect", "create_pool"}
STORE_ONLY_ATTRIBUTES = {"pool", "_pool"}


def violations(source: str, where: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in STORE_ONLY_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.split(".")[0] in STORE_ONLY_MODULES:
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
            elif node.module.startswith("ops.store"):
                found += [f"{where}:{node.lineno}: {a.name} from {node.module}"
                          for a in node.names if a.name in STORE_ONLY_NAMES]
        elif isinstance(node, ast.Attribute) and node.attr in STORE_ONLY_ATTRIBUTES:
            found.append(f"{where}:{node.lineno}: {ast.unparse(node.value)}.{node.attr}")
    return found


def test_nothing_outside_the_store_reaches_the_pool_or_classifies_errors() -> None:
    files = sorted(f for f in [*(ROOT / "ops").rglob("*.py"), *(ROOT / "tui").rglob("*.py")]
                   if ROOT / "ops" / "store" not in f.parents)
    assert len(files) > 50  # the walk found the tree
    found = [v for f in files for v in violations(f.read_text(), str(f.relative_to(ROOT)))]
    assert found == []


def test_the_check_sees_each_kind_of_violation() -> None:
    source = ("import asyncpg\nfrom ops.store.postgres import connect, is_outage, redact_url\n"
              "async def f(store):\n    return await store.pool.fetch('SELECT 1')\n")
    assert [v.split(": ", 1)[1] for v in violations(source, "x.py")] == [
        "import asyncpg", "connect from ops.store.postgres", "is_outage from ops.store.postgres",
        "store.pool"]
