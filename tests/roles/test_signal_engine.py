"""SignalEngine against the real simulator (prices, positions) and real Postgres; the role
as a real `python -m ops run signal-engine` subprocess; bad strategy config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ops.broker import Broker, BrokerEndpoints, BrokerSettings
from ops.core.backoff import Backoff
from ops.core.config import Config
from ops.core.models import Side
from ops.core.risk import RiskLimits
from ops.roles.signal_engine import (
    STRATEGY_ERROR_KIND,
    AccountFeed,
    SignalEngine,
    idempotency_key,
    load_strategies,
)
from ops.runtime.config import load_config
from ops.runtime.credentials import Credentials
from ops.sim import Simulator
from ops.store import Store
from ops.strategies import ProposedSignal, StrategyContext, StrategyError
from tests.roles.conftest import DEMO, RoleEnv
from tests.support import eventually

FAST = BrokerSettings(rest_timeout_s=2.0,
                      retry=Backoff(initial_s=0.05, max_s=0.2, max_attempts=4, deadline_s=10))
SLOT = datetime(2026, 1, 5, 15, 0, 5, tzinfo=UTC)


TINY_RISK = RiskLimits(max_order_notional=Decimal(100), max_symbol_notional=Decimal(250),
                       max_open_positions=3, daily_loss_limit=Decimal(50),
                       max_qty=Decimal(10))
LARGE_RISK = RiskLimits(max_order_notional=Decimal(5000), max_symbol_notional=Decimal(15000),
                        max_open_positions=10, daily_loss_limit=Decimal(2000),
                        max_qty=Decimal(500), allow_options=True)
LIMITS = {"tiny": TINY_RISK, "large": LARGE_RISK}

broken = {"raise": True}


def flaky(ctx: StrategyContext) -> list[ProposedSignal]:
    """A strategy that raises while `broken["raise"]`, else proposes one valid signal."""
    if broken["raise"]:
        raise RuntimeError("strategy bug")
    return [ProposedSignal("AAPL", Side.BUY, qty=Decimal(1))]


def half_bad(ctx: StrategyContext) -> list[ProposedSignal]:
    """One valid signal, one invalid everywhere (both qty and notional), one option."""
    return [
        ProposedSignal("SPY", Side.BUY, notional=Decimal(20)),
        ProposedSignal("SPY", Side.BUY, qty=Decimal(1), notional=Decimal(20)),
        ProposedSignal("AAPL260619C00190000", Side.BUY, qty=Decimal(1)),
    ]


async def async_strategy(ctx: StrategyContext) -> list[ProposedSignal]:
    await asyncio.sleep(0)
    return [ProposedSignal("MSFT", Side.BUY, qty=Decimal(1), ttl_s=30)]


def feed(sim: Simulator, account: str, keys_of: str | None = None) -> AccountFeed:
    spec = sim.account(keys_of or account)
    creds = Credentials(f"test/{account}", account, spec.key_id, spec.secret)
    broker = Broker(BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url), creds, FAST)
    return AccountFeed(account, broker, sim.account(account).account_number)


def config_with(role_env: RoleEnv, strategies: str) -> Config:
    role_env.write_config(extra=strategies)
    return load_config(role_env.config_path)


def strategy_block(name: str, fn: str, accounts: str = '["large", "tiny"]',
                   params: str = "{}") -> str:
    return (f'\n[[signal_engine.strategies]]\nname = "{name}"\ncallable = "{fn}"\n'
            f"accounts = {accounts}\nparams = {params}\n")


@pytest.fixture
async def engine_for(role_env: RoleEnv, ops_store: Store) -> AsyncIterator[Any]:
    made: list[SignalEngine] = []

    def make(strategies: str, feeds: Mapping[str, AccountFeed] | None = None) -> SignalEngine:
        config = config_with(role_env, strategies)
        engine = SignalEngine(
            store=ops_store, process="signal-engine", strategies=load_strategies(config),
            feeds=feeds or {a: feed(role_env.sim, a) for a in ("large", "tiny")},
            limits=LIMITS.get)
        made.append(engine)
        return engine

    try:
        yield make
    finally:
        for e in made:
            e.close()


async def signals(store: Store) -> list[Any]:
    return list(await store.pool.fetch(
        "SELECT account, symbol, side, qty, notional, strategy, idempotency_key, expires_at,"
        " created_at FROM signals ORDER BY id"))


async def test_demo_inserts_for_both_accounts_and_a_rerun_inserts_nothing(
    engine_for: Any, ops_store: Store
) -> None:
    engine: SignalEngine = engine_for(DEMO)
    first = await engine.run_slot(SLOT)
    assert first.failed == [] and first.invalid == [] and first.data_errors == []
    rows = await signals(ops_store)
    assert {r["account"] for r in rows} == {"large", "tiny"}
    assert all(r["strategy"] == "demo" for r in rows)
    for r in rows:
        assert r["idempotency_key"].startswith(f"demo:{r['account']}:20260105T150005")
        assert r["expires_at"] > r["created_at"]
        if r["account"] == "tiny":
            assert (r["notional"] or 0) <= 100 and (r["qty"] or 0) <= 10
    per_account = {a: sum(r["account"] == a for r in rows) for a in ("large", "tiny")}
    assert all(1 <= n <= 2 for n in per_account.values()), per_account

    again = await engine.run_slot(SLOT)  # the same slot (a restart re-running it)
    assert again.inserted == [] and sorted(again.duplicates) == sorted(first.inserted)
    assert len(await signals(ops_store)) == len(rows)

    later = await engine.run_slot(SLOT.replace(second=10))
    assert later.inserted and len(await signals(ops_store)) == len(rows) + len(later.inserted)


async def test_a_raising_strategy_does_not_stop_the_others(
    engine_for: Any, ops_store: Store
) -> None:
    broken["raise"] = True
    engine: SignalEngine = engine_for(
        strategy_block("flaky", "tests.roles.test_signal_engine:flaky")
        + strategy_block("asyncish", "tests.roles.test_signal_engine:async_strategy"))
    report = await engine.run_slot(SLOT)
    assert sorted(report.failed) == ["flaky/large: RuntimeError: strategy bug",
                                     "flaky/tiny: RuntimeError: strategy bug"]
    rows = await signals(ops_store)
    assert sorted((r["strategy"], r["account"]) for r in rows) == [
        ("asyncish", "large"), ("asyncish", "tiny")]
    open_ = (await ops_store.open_incidents()).rows
    assert sorted((i.kind, i.account) for i in open_) == [
        (STRATEGY_ERROR_KIND, "large"), (STRATEGY_ERROR_KIND, "tiny")]
    assert "strategy bug" in open_[0].detail
    await engine.run_slot(SLOT.replace(second=10))  # still failing: still one incident each
    assert len((await ops_store.open_incidents()).rows) == 2
    broken["raise"] = False
    fixed = await engine.run_slot(SLOT.replace(second=15))
    assert fixed.failed == []
    assert (await ops_store.open_incidents()).rows == []
    assert engine.counters.runs_failed == 4


async def test_invalid_proposals_are_dropped_with_reasons(
    engine_for: Any, ops_store: Store
) -> None:
    engine: SignalEngine = engine_for(
        strategy_block("half", "tests.roles.test_signal_engine:half_bad"))
    report = await engine.run_slot(SLOT)
    rows = await signals(ops_store)
    # SPY notional on both; the option only on large (tiny has allow_options = false).
    assert sorted((r["account"], r["symbol"]) for r in rows) == [
        ("large", "AAPL260619C00190000"), ("large", "SPY"), ("tiny", "SPY")]
    assert len(report.invalid) == 3
    assert any("options are not allowed for account tiny" in r for r in report.invalid)
    assert sum("exactly one of qty or notional" in r for r in report.invalid) == 2
    # The index in the strategy's output is part of the key: stable across re-runs.
    assert idempotency_key("half", "tiny", SLOT, 0) in {r["idempotency_key"] for r in rows}


async def test_account_with_another_accounts_keys_is_refused_others_served(
    engine_for: Any, role_env: RoleEnv, ops_store: Store
) -> None:
    sim = role_env.sim
    engine: SignalEngine = engine_for(DEMO, feeds={"large": feed(sim, "large", keys_of="tiny"),
                                                   "tiny": feed(sim, "tiny")})
    await engine.run_slot(SLOT)
    await engine.run_slot(SLOT.replace(second=10))
    rows = await signals(ops_store)
    assert rows and {r["account"] for r in rows} == {"tiny"}
    [incident] = (await ops_store.open_incidents()).rows
    assert incident.kind == "account-mismatch" and incident.account == "large"
    assert sim.account("tiny").account_number in incident.detail
    assert engine.counters.accounts_refused == 1


def test_bad_callable_is_a_clear_error_naming_key_and_value(role_env: RoleEnv) -> None:
    cases = {
        "ops.strategies.demo:nope": "has no attribute 'nope'",
        "ops.strategies.nosuch:generate": "cannot import module 'ops.strategies.nosuch'",
        "ops.strategies.demo:NEW_YORK_FRIDAY": "not a callable",
    }
    for value, why in cases.items():
        config = config_with(role_env, DEMO + strategy_block("bad", value))
        with pytest.raises(StrategyError) as err:
            load_strategies(config)
        assert f"signal_engine.strategies[1].callable = {value!r}" in str(err.value)
        assert why in str(err.value)


async def test_role_process_runs_the_demo_for_both_accounts(role_env: RoleEnv) -> None:
    role_env.write_config(signal_engine_s=0.5, extra=DEMO)
    proc = await role_env.spawn("signal-engine")
    store = await Store.open(role_env.env, process="test-reader")
    try:
        async def both() -> bool:
            rows = await store.pool.fetch("SELECT DISTINCT account FROM signals")
            return {r["account"] for r in rows} == {"large", "tiny"}
        await eventually(both, "demo signals for both accounts", timeout_s=30)

        async def ran_ok() -> bool:  # the run record is written when the slot finishes
            runs = await store.pool.fetchval(
                "SELECT count(*) FROM runs WHERE process = 'signal-engine' AND outcome = 'ok'")
            return int(runs) >= 1
        await eventually(ran_ok, "an 'ok' signal-engine run in the ledger", timeout_s=30)
    finally:
        await store.close()
    assert await proc.stop() == 0, proc.log_text()


async def test_role_process_with_a_bad_callable_exits_2_naming_it(role_env: RoleEnv) -> None:
    role_env.write_config(extra=strategy_block("bad", "ops.strategies.demo:nope"))
    proc = await role_env.spawn("signal-engine")
    code = await asyncio.wait_for(proc.proc.wait(), 60)
    assert code == 2, proc.log_text()
    text = proc.log_text()
    assert "signal_engine.strategies[0].callable = 'ops.strategies.demo:nope'" in text
    assert "Traceback" not in text


async def test_hot_reload_swaps_strategies_and_refuses_a_bad_callable(
    engine_for: Any, role_env: RoleEnv, ops_store: Store
) -> None:
    from ops.roles.runtime import RoleContext
    from ops.roles.signal_engine import reload_strategies

    engine: SignalEngine = engine_for(DEMO)
    ctx = RoleContext(env=role_env.env, role="signal-engine", account=None, store=ops_store,
                      config=load_config(role_env.config_path))
    bad = config_with(role_env, strategy_block("demo", "ops.strategies.demo:gone"))
    assert await reload_strategies(ctx, engine, bad) is False
    assert [s.name for s in engine.strategies] == ["demo"]
    [incident] = (await ops_store.open_incidents()).rows
    assert incident.kind == "strategy-load"
    assert "signal_engine.strategies[0].callable = 'ops.strategies.demo:gone'" in incident.detail

    good = config_with(role_env, strategy_block(
        "only_tiny", "tests.roles.test_signal_engine:async_strategy", accounts='["tiny"]'))
    assert await reload_strategies(ctx, engine, good) is True
    assert [(s.name, s.accounts) for s in engine.strategies] == [("only_tiny", ("tiny",))]
    assert (await ops_store.open_incidents()).rows == []
    report = await engine.run_slot(SLOT)
    assert [k.split(":")[:2] for k in report.inserted] == [["only_tiny", "tiny"]]
