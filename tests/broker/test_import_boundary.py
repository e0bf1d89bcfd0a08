"""Only ops/broker imports alpaca-py (style.md convention 2): grep the source trees."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_IMPORT = re.compile(r"^\s*(from\s+alpaca[\s.]|import\s+alpaca\b)", re.MULTILINE)


def test_only_ops_broker_imports_alpaca() -> None:
    offenders: list[str] = []
    scanned = 0
    for tree in ("ops", "tui"):
        for path in sorted((ROOT / tree).rglob("*.py")) if (ROOT / tree).exists() else []:
            scanned += 1
            rel = path.relative_to(ROOT).as_posix()
            if _IMPORT.search(path.read_text(encoding="utf-8")) and not rel.startswith(
                "ops/broker/"
            ):
                offenders.append(rel)
    assert scanned > 5
    assert offenders == [], f"alpaca-py imported outside ops/broker: {offenders}"


def test_within_ops_broker_only_the_sdk_module_imports_alpaca() -> None:
    # _sdk.py: TradingStream for stream.py, until the stream has its own client.
    importers = sorted(
        p.name for p in (ROOT / "ops" / "broker").glob("*.py") if _IMPORT.search(p.read_text())
    )
    assert set(importers) <= {"_sdk.py"}, importers


_SDK = re.compile(r"^\s*from\s+ops\.broker(\s+import\s+_sdk\b|\._sdk\b)", re.MULTILINE)


def test_rest_and_market_data_do_not_go_through_alpaca() -> None:
    # REST is our own requests session (transport.py): none of these reach alpaca-py,
    # directly or through _sdk.
    rest = ("client", "transport", "orders", "marketdata", "convert", "settings", "errors")
    for name in rest:
        text = (ROOT / "ops" / "broker" / f"{name}.py").read_text()
        assert not _IMPORT.search(text) and not _SDK.search(text), name
    assert _SDK.search("from ops.broker import _sdk as sdk\n")
    assert _SDK.search("from ops.broker._sdk import TradingStream\n")


def test_pattern_catches_both_import_forms() -> None:
    assert _IMPORT.search("from alpaca.trading.client import TradingClient\n")
    assert _IMPORT.search("    import alpaca\n")
    assert not _IMPORT.search("from alpacas import x\n")
