"""The core never imports the UI: `ops` and every module under it load without textual."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import ops


def _ops_modules() -> list[str]:
    # ops.__main__ runs the CLI on import; everything else must import cleanly.
    return sorted(
        m.name
        for m in pkgutil.walk_packages(ops.__path__, prefix="ops.")
        if m.name != "ops.__main__"
    )


def test_ops_never_imports_textual() -> None:
    modules = _ops_modules()
    assert "ops.models" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m == 'textual' or m.startswith(('textual.', 'tui')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"ops imported UI modules: {out.stdout.strip()}"


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_trading_roles_do_not_load_pandas_until_something_uses_it() -> None:
    # alpaca-py imports pandas at the top of its trading modules but never uses it on our
    # paths: ~0.5 s and ~30 MB per role process (ops/broker/_sdk.py defers it).
    code = (
        "import sys\n"
        "import ops.roles.stream, ops.roles.position_manager, ops.roles.dispatcher\n"
        "from ops.broker import Broker\n"
        "print('pandas.core' in sys.modules)\n"
        # What alpaca-py does with its module-level `pd`: works, loading the real pandas.
        "import alpaca.trading.requests as r\n"
        "print(r.pd.Timestamp('2026-01-02').year, 'pandas.core' in sys.modules)\n"
    )
    assert _run(code).splitlines() == ["False", "2026 True"]


def test_market_data_loads_on_first_use() -> None:
    code = (
        "import sys\n"
        "from ops.broker import Broker, BrokerEndpoints\n"
        "from ops.credentials import Credentials\n"
        "b = Broker(BrokerEndpoints('http://127.0.0.1:1', 'ws://127.0.0.1:1/stream',\n"
        "           'http://127.0.0.1:1'), Credentials('t', 'x', 'KEYID', 'SECRET'))\n"
        "print('alpaca.data.historical' in sys.modules)\n"
        "b.market\n"
        "print('alpaca.data.historical' in sys.modules, b.market is b.market)\n"
        "b.close()\n"
        # The data models bind pandas and numpy at the top; neither is loaded for that...
        "print('pandas.core' in sys.modules, 'numpy.linalg' in sys.modules)\n"
        # ...and the one place alpaca-py uses them, the .df view, still works.
        "from alpaca.data.models.bars import BarSet\n"
        "bars = BarSet({'AAPL': [{'t': '2026-01-02T00:00:00Z', 'o': 1, 'h': 2, 'l': 0.5,\n"
        "                         'c': 1.5, 'v': 10, 'n': 1, 'vw': 1.2}]})\n"
        "df = bars.df\n"
        "print(len(df), float(df['close'].iloc[0]), 'pandas.core' in sys.modules)\n"
        # After the data import, `from pandas import ...` gets the real thing.
        "from pandas import DataFrame\n"
        "print(isinstance(df, DataFrame))\n"
    )
    assert _run(code).splitlines() == ["False", "True True", "False False", "1 1.5 True",
                                       "True"]
