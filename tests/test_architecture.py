"""The layout's promises beyond the layer contracts (.importlinter, `lint-imports`): no
import cycle anywhere in ops or tui, and a simulator that reaches nothing of ops outside
ops/sim. Every import counts: at module level, inside a function (lazy), under
TYPE_CHECKING. docs/architecture.md draws the layout."""

from __future__ import annotations

from collections.abc import Iterator

import grimp
import pytest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("ops", "tui", cache_dir=None)


def _cycles(graph: grimp.ImportGraph) -> Iterator[list[str]]:
    """One module chain `a -> ... -> a` per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    first = min(group)
                    back = next(m for m in sorted(graph.find_modules_directly_imported_by(first))
                                if m in group)
                    chain = graph.find_shortest_chain(importer=back, imported=first)
                    yield [first, *(chain or (back, first))]


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    cycles = [" -> ".join(chain) for chain in _cycles(graph)]
    assert cycles == [], "import cycles (move the shared piece down a layer):\n" + "\n".join(
        cycles)


def test_the_cycle_finder_finds_one() -> None:
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=a, imported=b)
    assert list(_cycles(graph)) == [["p.a", "p.b", "p.c", "p.a"]]


def test_the_simulator_imports_only_itself(graph: grimp.ImportGraph) -> None:
    outside = sorted(
        f"{module} -> {imported}"
        for module in graph.find_descendants("ops.sim") | {"ops.sim"}
        for imported in graph.find_modules_directly_imported_by(module)
        if not (imported == "ops.sim" or imported.startswith("ops.sim."))
    )
    assert outside == []
