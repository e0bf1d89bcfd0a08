"""Non-trade activities through the position manager, against the real simulator, real
alpaca-py and real Postgres (the Rig of test_position_manager): a 2:1 and a 1:2 split
cause no exit and no drift block; an expired, an exercised and an assigned contract end
with stored positions equal to the broker's and the underlying shares owned correctly
(managed vs external, ops/core/ownership.py); each activity is applied once, across restarts."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from ops.core.exits import NEW_YORK, ExitRules
from ops.core.models import OptionSymbol, Side
from ops.core.ownership import split
from ops.roles.activities import ActivityRun
from ops.roles.position_manager import DRIFT_CONTROL, PositionManager
from ops.sim.accounts import PositionState
from ops.sim.wire import stable_uuid
from ops.store import activities as aq
from ops.store import positions as pq
from ops.store.ownership import Adjustment, managed_quantities, record_adjustment
from tests.roles.test_position_manager import ACCOUNT, Rig, rig

__all__ = ["rig"]  # the fixture, shared with test_position_manager


def contract(rig: Rig, underlying: str, right: str, offset: int, days: int = 7) -> str:
    spot = rig.sim.market.price(underlying)
    expiry = datetime.now(NEW_YORK).date() + timedelta(days=days)
    return str(OptionSymbol(underlying, expiry, right, Decimal(int(spot) + offset)))


async def not_blocked(rig: Rig) -> None:
    block = await rig.control(DRIFT_CONTROL)
    assert block is None or not block.get("blocked"), block
    assert await rig.open_drift_incidents() == []


async def stored_equals_broker(rig: Rig) -> dict[str, Decimal]:
    """The positions table (the last sync) equals the broker's positions; returns them."""
    broker = {p.symbol: p.qty for p in await rig.broker.list_positions() if p.qty}
    rows = await rig.store.pool.fetch(
        "SELECT symbol, qty FROM positions WHERE account = $1 AND qty <> 0", ACCOUNT)
    assert {r["symbol"]: Decimal(r["qty"]) for r in rows} == broker
    return broker


async def owned(rig: Rig, symbol: str) -> tuple[Decimal, Decimal]:
    """(managed, external) of `symbol` as the position manager splits it."""
    pos = await rig.broker.get_position(symbol)
    held = pos.qty if pos else Decimal(0)
    raw = (await managed_quantities(rig.store.pool, ACCOUNT, [symbol])).get(symbol, Decimal(0))
    h = split(symbol, held, raw)
    return h.managed, h.external


async def ticks(pm: PositionManager, n: int = 3) -> None:
    for _ in range(n):
        await pm.tick()


# --- splits ---------------------------------------------------------------------------------


async def test_a_2_for_1_split_fires_no_exit_and_no_drift_block(rig: Rig) -> None:
    rig.rules = ExitRules(stop_loss_pct=Decimal(5), trailing_stop_pct=Decimal(3),
                          take_profit_pct=Decimal(50))
    await rig.buy("AAPL", 10)
    await rig.wait_fills(1)
    pm = rig.manager()
    await ticks(pm, 2)
    before = (await pq.load_exit_states(rig.store.pool, ACCOUNT))["AAPL"].state
    checks = pm.counters.drift_checks

    rig.sim.faults.split("AAPL", "2:1")
    await ticks(pm)

    assert rig.sim_exit_orders("AAPL") == []
    await not_blocked(rig)
    assert pm.counters.drift_checks > checks and pm.counters.drift_mismatches == 0
    assert await stored_equals_broker(rig) == {"AAPL": Decimal(20)}
    assert await owned(rig, "AAPL") == (Decimal(20), Decimal(0))  # managed x 2
    after = (await pq.load_exit_states(rig.store.pool, ACCOUNT))["AAPL"].state
    assert after.opened_at == before.opened_at
    # Re-based by 2 (then walked on by the new prices, a few steps at most).
    assert before.high_water / 2 <= after.high_water < before.high_water * Decimal("0.52")
    (rec,) = await aq.records(rig.store.pool, ACCOUNT)
    assert (rec.type, rec.symbol, rec.qty_delta, rec.managed_delta) == (
        "SPLIT", "AAPL", Decimal(10), Decimal(10))
    assert "split 2:1" in rec.effect and "re-based" in rec.effect


async def test_a_1_for_2_reverse_split_of_a_short_fires_no_exit(rig: Rig) -> None:
    """A short's trailing stop reads its low-water mark: a reverse split doubling the price
    would read as a 100 % rise if the mark were not re-based."""
    rig.rules = ExitRules(stop_loss_pct=Decimal(5), trailing_stop_pct=Decimal(3))
    await rig.buy("MSFT", 10, Side.SELL)
    await rig.wait_fills(1)
    pm = rig.manager()
    await ticks(pm, 2)
    before = (await pq.load_exit_states(rig.store.pool, ACCOUNT))["MSFT"].state

    rig.sim.faults.split("MSFT", "1:2")
    await ticks(pm)

    assert rig.sim_exit_orders("MSFT") == []
    await not_blocked(rig)
    assert await stored_equals_broker(rig) == {"MSFT": Decimal(-5)}
    assert await owned(rig, "MSFT") == (Decimal(-5), Decimal(0))
    after = (await pq.load_exit_states(rig.store.pool, ACCOUNT))["MSFT"].state
    assert before.low_water * Decimal("1.98") < after.low_water <= before.low_water * 2


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
async def test_a_split_seen_before_its_activity_holds_exits_and_the_stop(
        rig: Rig, restart: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker shows the split before its activity can be read (published late, or
    between the tick's activity read and its position read; or while the process was
    down): the position changed like a split, nothing re-based it yet, so its exits and
    its protective stop wait, instead of reading a 2:1 split as a 50 % loss."""
    rig.rules = ExitRules(stop_loss_pct=Decimal(5), trailing_stop_pct=Decimal(3))
    await rig.buy("AAPL", 10)
    await rig.wait_fills(1)
    pm = rig.manager(protective_stops=lambda: True)
    await ticks(pm, 2)
    assert [o.client_order_id for o in await rig.broker.list_orders(status="open")
            if o.symbol == "AAPL"] != []  # its stop rests
    rig.sim.faults.split("AAPL", "2:1")  # cancels the stop, halves the price
    if restart:
        pm = rig.manager(protective_stops=lambda: True)
    async def unpublished(*_: object) -> ActivityRun:
        return ActivityRun()
    monkeypatch.setattr(pm.activities, "run", unpublished)  # not published yet
    await pm.tick()
    assert pm.counters.split_held == 1
    assert rig.sim_exit_orders("AAPL") == []
    assert [o for o in await rig.broker.list_orders(status="open") if o.symbol == "AAPL"] == []
    assert await rig.broker.get_position("AAPL") is not None

    monkeypatch.undo()  # published: re-based, exits and the stop resume
    await pm.tick()
    assert pm.counters.split_held == 0
    assert rig.sim_exit_orders("AAPL") == []
    assert await owned(rig, "AAPL") == (Decimal(20), Decimal(0))
    (rec,) = await aq.records(rig.store.pool, ACCOUNT)
    assert "split 2:1" in rec.effect and "re-based" in rec.effect, rec.effect


async def test_a_split_with_a_restart_in_between_is_applied_once(rig: Rig) -> None:
    await rig.buy("NVDA", 6)
    await rig.buy("NVDA", 4, by_hand=True)
    await rig.wait_fills(2)
    pm = rig.manager()
    await ticks(pm, 2)
    rig.sim.faults.split("NVDA", 3)
    await ticks(pm, 1)
    await ticks(rig.manager(), 2)  # a restarted process reads the same activity again
    recs = await aq.records(rig.store.pool, ACCOUNT)
    assert [(r.type, r.qty_delta, r.managed_delta) for r in recs] == [
        ("SPLIT", Decimal(20), Decimal(12))]
    assert await owned(rig, "NVDA") == (Decimal(18), Decimal(12))  # both lots x 3
    await not_blocked(rig)


# --- options -------------------------------------------------------------------------------


async def test_an_expired_managed_contract_leaves_nothing_managed(rig: Rig) -> None:
    otm = contract(rig, "AAPL", "C", 40, days=3)
    await rig.buy(otm, 2)
    await rig.wait_fills(1)
    pm = rig.manager()
    await ticks(pm, 2)
    assert await owned(rig, otm) == (Decimal(2), Decimal(0))

    occ = OptionSymbol.parse(otm)
    assert occ is not None
    (done,) = rig.sim.faults.expire_options(occ.expiry.isoformat())
    assert done["outcome"] == "expired"
    await ticks(pm)

    assert await stored_equals_broker(rig) == {}
    await not_blocked(rig)
    raw = await managed_quantities(rig.store.pool, ACCOUNT, [otm])
    assert raw.get(otm, Decimal(0)) == 0
    (rec,) = await aq.records(rig.store.pool, ACCOUNT)
    # The simulator sends OPEXP's qty unsigned ("2"): applied toward zero.
    assert (rec.type, rec.qty_delta, rec.managed_delta) == ("OPEXP", Decimal(-2), Decimal(-2))


async def test_an_exercised_managed_contract_delivers_managed_shares(rig: Rig) -> None:
    itm = contract(rig, "AAPL", "C", -20)
    await rig.buy(itm, 1)
    await rig.wait_fills(1)
    pm = rig.manager()
    await ticks(pm, 2)

    rig.sim.faults.exercise(ACCOUNT, itm)
    await ticks(pm)

    assert await stored_equals_broker(rig) == {"AAPL": Decimal(100)}
    await not_blocked(rig)
    assert await owned(rig, "AAPL") == (Decimal(100), Decimal(0))
    assert (await managed_quantities(rig.store.pool, ACCOUNT, [itm])).get(itm) == 0
    opexc, optrd = await aq.records(rig.store.pool, ACCOUNT)
    assert (opexc.type, opexc.qty_delta, opexc.managed_delta) == (
        "OPEXC", Decimal(-1), Decimal(-1))
    assert (optrd.type, optrd.qty_delta, optrd.managed_delta, optrd.paired_with) == (
        "OPTRD", Decimal(100), Decimal(100), opexc.activity_id)


async def test_an_exercised_external_contract_delivers_external_shares(rig: Rig) -> None:
    itm = contract(rig, "MSFT", "C", -20)
    await rig.buy(itm, 2, by_hand=True)
    await rig.wait_fills(1)
    pm = rig.manager()
    await ticks(pm, 2)

    rig.sim.faults.exercise(ACCOUNT, itm)
    await ticks(pm)

    assert await stored_equals_broker(rig) == {"MSFT": Decimal(200)}
    await not_blocked(rig)
    assert await owned(rig, "MSFT") == (Decimal(0), Decimal(200))  # never sold by the pipeline


def give_short(rig: Rig, symbol: str, qty: int) -> None:
    """A short option written earlier (the simulator opens none by order)."""
    rig.sim.engine.states[ACCOUNT].positions[symbol] = PositionState(
        symbol, "us_option", stable_uuid("asset", symbol), Decimal(-qty), Decimal("2.5"))


async def test_an_assigned_contract_managed_and_external(rig: Rig) -> None:
    """Two short calls written before the pipeline started: one adopted (managed), one the
    trader's. Assigned: the adopted one's delivered shares are the pipeline's short, the
    other's the trader's."""
    managed_call = contract(rig, "SPY", "C", -10)
    external_call = contract(rig, "QQQ", "C", -10)
    give_short(rig, managed_call, 1)
    give_short(rig, external_call, 1)
    pm = rig.manager()
    await ticks(pm, 2)
    await record_adjustment(rig.store.pool, Adjustment(
        ACCOUNT, managed_call, Decimal(-1), "adopt", "adopt:test", "", "cli:tester",
        rig.now()))
    assert await owned(rig, managed_call) == (Decimal(-1), Decimal(0))

    rig.sim.faults.assign(ACCOUNT, managed_call)
    rig.sim.faults.assign(ACCOUNT, external_call)
    await ticks(pm)

    assert await stored_equals_broker(rig) == {"SPY": Decimal(-100), "QQQ": Decimal(-100)}
    await not_blocked(rig)
    assert await owned(rig, "SPY") == (Decimal(-100), Decimal(0))
    assert await owned(rig, "QQQ") == (Decimal(0), Decimal(-100))
    assert (await managed_quantities(rig.store.pool, ACCOUNT, [managed_call])).get(
        managed_call) == 0
    kinds = [(r.type, r.symbol, r.managed_delta) for r in await aq.records(rig.store.pool,
                                                                          ACCOUNT)]
    assert kinds == [("OPASN", managed_call, Decimal(1)), ("OPASN", external_call, Decimal(0)),
                     ("OPTRD", "SPY", Decimal(-100)), ("OPTRD", "QQQ", Decimal(0))]


async def test_activities_before_the_first_read_are_history(rig: Rig) -> None:
    """An account's first read starts from that day: an expiry the broker filed under an
    earlier date is history (the first baseline holds it) and is not applied."""
    await rig.buy("AMD", 5)
    await rig.wait_fills(1)
    rig.sim.faults.split("AMD", 2)
    st = rig.sim.engine.states[ACCOUNT]
    st.activities[-1]["date"] = (datetime.now(NEW_YORK).date() - timedelta(days=2)).isoformat()
    pm = rig.manager()
    await ticks(pm, 2)
    assert await aq.records(rig.store.pool, ACCOUNT) == []
    reads = await aq.load_reads(rig.store.pool, ACCOUNT)
    assert reads is not None and reads.since == datetime.now(NEW_YORK).date()
    await not_blocked(rig)


async def test_a_split_whose_ratio_cannot_be_told_resets_tracking_and_never_exits(
        rig: Rig) -> None:
    """Fills on both sides of the split spoil both readings of its ratio (21:10 from the
    last sync, 23:12 from the broker now): the exit state is tracked afresh instead of
    guessed, nothing is sold, and the drift check still agrees (the activity's quantity is
    the broker's)."""
    rig.rules = ExitRules(trailing_stop_pct=Decimal(3))
    await rig.buy("TSLA", 10)
    await rig.wait_fills(1)
    pm = rig.manager()
    await ticks(pm, 2)
    before = (await pq.load_exit_states(rig.store.pool, ACCOUNT))["TSLA"].state
    await rig.buy("TSLA", 1)
    await rig.wait_fills(2)
    rig.sim.faults.split("TSLA", 2)
    await rig.buy("TSLA", 1)
    await rig.wait_fills(3)
    await ticks(pm)

    assert rig.sim_exit_orders("TSLA") == []
    await not_blocked(rig)
    assert await stored_equals_broker(rig) == {"TSLA": Decimal(23)}
    (rec,) = await aq.records(rig.store.pool, ACCOUNT)
    assert rec.qty_delta == 11 and "ratio not derivable" in rec.effect
    after = (await pq.load_exit_states(rig.store.pool, ACCOUNT))["TSLA"].state
    assert after.opened_at > before.opened_at  # tracked afresh, from post-split prices
    assert after.high_water < before.high_water * Decimal("0.6")
