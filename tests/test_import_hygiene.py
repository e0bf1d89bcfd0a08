"""The core never imports the UI: `ops` and every module under it load without textual."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import ops

pytestmark = pytest.mark.integration  # each check imports in a fresh interpreter


def _ops_modules() -> list[str]:
    # ops.__main__ runs the CLI on import; everything else must import cleanly.
    return sorted(
        m.name
        for m in pkgutil.walk_packages(ops.__path__, prefix="ops.")
        if m.name != "ops.__main__"
    )


def test_ops_never_imports_textual() -> None:
    modules = _ops_modules()
    assert "ops.core.models" in modules
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


def test_no_role_loads_alpaca_py_or_pandas() -> None:
    # Every role's imports: the broker adapter is our own client (REST, market data and
    # the trade stream), so neither alpaca-py nor pandas/numpy is loaded (~0.5 s and
    # ~30 MB per role process when they were).
    code = (
        "import sys\n"
        "import ops.roles.stream, ops.roles.position_manager, ops.roles.dispatcher\n"
        "import ops.roles.signal_engine, ops.roles.watchdog\n"
        "from ops.broker import Broker, TradeStream\n"
        "print(sorted({m.split('.')[0] for m in sys.modules\n"
        "              if m.split('.')[0] in ('alpaca', 'pandas', 'numpy')}))\n"
    )
    assert _run(code) == "[]"


def test_rest_and_market_data_load_neither_alpaca_data_nor_pandas() -> None:
    # REST and market data are our own HTTP calls (ops/broker/transport.py): real calls to
    # the simulator load neither alpaca-py nor pandas or numpy.
    code = (
        "import asyncio, sys\n"
        "from datetime import UTC, datetime, timedelta\n"
        "from ops.broker import Broker, BrokerEndpoints\n"
        "from ops.runtime.credentials import Credentials\n"
        "from ops.sim import SimConfig, Simulator\n"
        "async def main():\n"
        "    sim = Simulator(SimConfig(seed=7, clock='open'))\n"
        "    await sim.start(host='127.0.0.1', port=0)\n"
        "    spec = sim.account('large')\n"
        "    try:\n"
        "        async with Broker(BrokerEndpoints(sim.rest_url, sim.stream_url,\n"
        "                          sim.data_url), Credentials('t', 'large', spec.key_id,\n"
        "                          spec.secret)) as b:\n"
        "            await b.get_account()\n"
        "            q = await b.latest_quotes(['AAPL'])\n"
        "            bars = await b.bars(['AAPL'], '5Min', datetime.now(UTC)\n"
        "                                - timedelta(hours=1))\n"
        "            print(q['AAPL'].bid > 0, len(bars['AAPL']) > 0)\n"
        "    finally:\n"
        "        await sim.stop()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.startswith(('alpaca', 'pandas', 'numpy'))))\n"
    )
    assert _run(code).splitlines() == ["True True", "[]"]


def test_roles_load_neither_pydantic_nor_aiohttp() -> None:
    # Each costs a role process about 11-18 MB of RSS (target: <= 50 MB a role). The config
    # validates with ops/core/schema.py; aiohttp is imported by the alert sinks on their
    # first webhook or dead-man ping only.
    code = (
        "import sys\n"
        "import ops.roles.stream, ops.roles.position_manager, ops.roles.dispatcher\n"
        "import ops.roles.signal_engine, ops.roles.watchdog, ops.roles.monitor\n"
        "print(sorted({m.split('.')[0] for m in sys.modules\n"
        "              if m.split('.')[0] in ('pydantic', 'pydantic_core', 'aiohttp')}))\n"
    )
    assert _run(code) == "[]"


def test_roles_load_neither_requests_nor_charset_normalizer() -> None:
    # The broker's REST calls use urllib3 directly (ops/broker/transport.py); requests with
    # charset_normalizer (and idna, certifi) added about 4.5 MB of RSS to every role.
    code = (
        "import sys\n"
        "import ops.roles.stream, ops.roles.position_manager, ops.roles.dispatcher\n"
        "import ops.roles.signal_engine, ops.roles.watchdog, ops.roles.monitor\n"
        "from ops.broker import Broker\n"
        "tops = {m.split('.')[0] for m in sys.modules}\n"
        "print('urllib3' in tops, sorted(tops & {'requests', 'charset_normalizer'}))\n"
    )
    assert _run(code) == "True []"
