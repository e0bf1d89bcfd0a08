"""Nothing in ops or tui imports alpaca-py: grep the source trees."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_IMPORT = re.compile(r"^\s*(from\s+alpaca[\s.]|import\s+alpaca\b)", re.MULTILINE)


def test_nothing_in_ops_or_tui_imports_alpaca() -> None:
    # REST, market data and the trade stream are our own clients of the documented wire
    # (ops/broker/transport.py, stream.py): alpaca-py is a test dependency only.
    offenders: list[str] = []
    scanned = 0
    for tree in ("ops", "tui"):
        for path in sorted((ROOT / tree).rglob("*.py")):
            scanned += 1
            if _IMPORT.search(path.read_text(encoding="utf-8")):
                offenders.append(path.relative_to(ROOT).as_posix())
    assert scanned > 5
    assert offenders == [], f"alpaca-py imported by: {offenders}"


def test_pattern_catches_both_import_forms() -> None:
    assert _IMPORT.search("from alpaca.trading.client import TradingClient\n")
    assert _IMPORT.search("    import alpaca\n")
    assert not _IMPORT.search("from alpacas import x\n")
