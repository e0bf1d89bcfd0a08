"""The demo strategy drives a whole stack of real role processes: within 60 s both accounts
have orders, fills and positions in Postgres, sized to each account's limits.

Processes: stream, dispatcher and position-manager per account, and the signal engine,
each `python -m ops run ...` against the in-process simulator and a fresh database; risk
limits as in conf/ops.toml (tiny: 100 per order, max_qty 10, no options; large: 5,000).
"""

from __future__ import annotations

import time

import pytest

from ops.store import Store
from tests.roles.conftest import DEMO, RoleEnv, config_text
from tests.support import eventually

pytestmark = pytest.mark.system  # seven role processes at once

GENERIC_RISK = """max_order_notional = 50000
max_symbol_notional = 100000
max_open_positions = 10
daily_loss_limit = 5000
max_qty = 1000
"""
LARGE_RISK = """max_order_notional = 5000
max_symbol_notional = 15000
max_open_positions = 10
daily_loss_limit = 2000
max_qty = 500
allow_options = true
"""
TINY_RISK = """max_order_notional = 100
max_symbol_notional = 250
max_open_positions = 3
daily_loss_limit = 50
max_qty = 10
"""


def demo_config(role_env: RoleEnv) -> str:
    text = config_text(role_env.sim, dispatcher_s=1.0, position_manager_s=2.0,
                       signal_engine_s=2.0, extra=DEMO)
    large, tiny = text.split("[accounts.tiny]")
    assert GENERIC_RISK in large and GENERIC_RISK in tiny
    return large.replace(GENERIC_RISK, LARGE_RISK) + "[accounts.tiny]" + tiny.replace(
        GENERIC_RISK, TINY_RISK)


async def test_demo_trades_on_both_accounts_within_a_minute(role_env: RoleEnv) -> None:
    role_env.write_config_text(demo_config(role_env))
    started = time.monotonic()
    procs = [await role_env.spawn(role, account)
             for account in ("large", "tiny")
             for role in ("stream", "dispatcher", "position-manager")]
    procs.append(await role_env.spawn("signal-engine"))
    store = await Store.open(role_env.env, process="test-reader")
    try:
        async def traded() -> bool:
            rows = await store.pool.fetch(
                """
                SELECT a.account,
                       (SELECT count(*) FROM orders o WHERE o.account = a.account) AS orders,
                       (SELECT count(*) FROM fills f WHERE f.account = a.account) AS fills,
                       (SELECT count(*) FROM position_history h
                         WHERE h.account = a.account) AS history
                FROM (VALUES ('large'), ('tiny')) AS a(account)
                """)
            return all(r["orders"] and r["fills"] and r["history"] for r in rows)
        await eventually(traded, "orders, fills and positions on both accounts",
                         timeout_s=60 - (time.monotonic() - started))

        async def round_trips() -> bool:
            rows = await store.pool.fetch(
                "SELECT DISTINCT account FROM orders WHERE side = 'sell' AND filled_qty > 0")
            return {r["account"] for r in rows} == {"large", "tiny"}
        await eventually(round_trips, "a filled sell (a position closing) on both accounts",
                         timeout_s=60 - (time.monotonic() - started))

        async def option_held() -> bool:
            n = await store.pool.fetchval(
                "SELECT count(*) FROM position_history WHERE account = 'large'"
                " AND asset_class = 'us_option'")
            return bool(n)
        # One slot in four on average (2 s slots here): practically certain within 60 s.
        await eventually(option_held, "an option position on large",
                         timeout_s=60 - (time.monotonic() - started))
        tiny_options = await store.pool.fetchval(
            "SELECT count(*) FROM signals WHERE account = 'tiny' AND symbol ~ '[0-9]'")
        assert tiny_options == 0

        # Sized to each account's limits: tiny's orders stay within 100 and 10 shares.
        tiny = await store.pool.fetch(
            "SELECT symbol, qty, notional, filled_qty, filled_avg_price FROM orders"
            " WHERE account = 'tiny'")
        for o in tiny:
            assert o["notional"] is None or o["notional"] <= 100, dict(o)
            assert o["qty"] is None or o["qty"] <= 10, dict(o)
        rejected = await store.pool.fetch(
            "SELECT account, symbol, reason FROM signals WHERE status = 'rejected'")
        assert not [r for r in rejected if "max_order_notional" in (r["reason"] or "")
                    or "sanity" in (r["reason"] or "")], rejected
    finally:
        await store.close()
    for p in procs:
        assert await p.stop() == 0, p.log_text()[-3000:]
