"""The docs name what exists: every path and module they mention is in the tree, every
package of ops/ is on docs/architecture.md's map, every section of docs/broker-protocol.md
the code cites is there, and no document points outside the repository."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_PATH = re.compile(r"(?<![\w./-])((?:ops|tui|tests|scripts|docs|deploy|bench|conf)/[\w./*-]*\w)")
_DOTTED = re.compile(r"(?<![\w./-])((?:ops|tui)(?:\.\w+)+)")
_OUTPUTS = ("bench/results/",)  # written by a run, not in a clone
_FILES = (".py", ".toml", ".md", ".json", ".sql", ".log", ".sqlite3", ".conf")
_CITED = re.compile(r"broker-protocol\.md,? (?:sections? )?(\d+(?:\.\d+)?a?)"
                    r"((?:(?:,| and| /) \d+(?:\.\d+)?a?)*)")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        module = ".".join(parts[:k])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj: object = importlib.import_module(module)
            for attr in parts[k:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_and_module_named_exists(doc: Path) -> None:
    text = doc.read_text()
    missing = sorted({p for p in _PATH.findall(text) if not p.startswith(_OUTPUTS)
                      and not any(REPO.glob(p.rstrip("/.")))})
    unknown = sorted({d for d in _DOTTED.findall(text)
                      if not d.endswith(_FILES) and not _resolves(d.rstrip("."))})
    assert (missing, unknown) == ([], [])


def test_every_package_is_on_the_map() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    packages = sorted(p.parent.name for p in (REPO / "ops").glob("*/__init__.py"))
    assert "core" in packages
    assert [p for p in packages if not re.search(rf"^  {p}/ ", text, re.M)] == []


def test_the_cited_protocol_sections_exist() -> None:
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?a?)[. ]",
                              (REPO / "docs" / "broker-protocol.md").read_text(), re.M))
    cited: dict[str, str] = {}
    for path in [*REPO.glob("ops/**/*.py"), *REPO.glob("tests/**/*.py"), REPO / "pyproject.toml",
                 *DOCS]:
        for first, more in _CITED.findall(path.read_text()):
            for section in [first, *re.findall(r"\d+(?:\.\d+)?a?", more)]:
                cited.setdefault(section, str(path.relative_to(REPO)))
    assert {"4.4", "3.7a", "6.5"} <= cited.keys()  # the search sees the citations
    assert {s: where for s, where in cited.items() if s not in headings} == {}


def test_no_document_outside_the_repository_is_referred_to() -> None:
    outside = re.compile(r"\.\./shared|alpaca-wire|design\.md|style\.md")
    found = sorted(str(p.relative_to(REPO))
                   for folder in ("ops", "tui", "tests", "docs", "bench", "deploy", "scripts")
                   for p in (REPO / folder).rglob("*")
                   if p.suffix in {".py", ".md", ".toml", ".sh"} and p.name != "test_docs.py"
                   and outside.search(p.read_text()))
    assert found == []
