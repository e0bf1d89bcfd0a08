"""The dispatcher against the real simulator (issue 14.4 and the dispatcher half of 14.1):
position_intent on the wire, options level and options buying power refused before
sending, the pattern-day-trading guard, the broker's PDT refusal of an exit, and the kill
switch's managed-only flatten next to flatten-all.

Fixtures: `sim` (tests/roles/conftest.py), `pg_url` (tests/conftest.py); the rig stores
every trade update as the stream role does, so ownership is read from real fills.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import pytest

from ops.broker import Broker, BrokerEndpoints, TradeStream
from ops.commands.control import read_kill_switch
from ops.core import refusals
from ops.core.exits import NEW_YORK, flatten_prefix
from ops.core.models import (
    KILL_SWITCH_KEY,
    KillSwitch,
    OptionSymbol,
    OrderRequest,
    OrderType,
    Side,
    TradeUpdate,
    kill_switch_from_value,
)
from ops.core.risk import PdtGuard, RiskLimits
from ops.roles import dispatcher as dmod
from ops.roles.dispatcher import Dispatcher
from ops.runtime.credentials import Credentials
from ops.sim import Simulator
from ops.store import signals as sq
from ops.store.ownership import managed_quantities
from ops.store.store import Store, order_op, trade_update_op
from tests.roles.test_dispatcher import FAST
from tests.support import eventually

D = Decimal
WIDE = RiskLimits(max_order_notional=D(10**6), max_symbol_notional=D(10**6),
                  max_open_positions=10, daily_loss_limit=D(10**6), max_qty=D(1000),
                  allow_options=True, signal_ttl_s=120.0)


@pytest.fixture
async def store(pg_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    from ops.runtime.env import RuntimeEnv

    env = RuntimeEnv(config_path=tmp_path / "ops.toml", home=tmp_path, database_url=pg_url)
    s = await Store.open(env, process="test-dispatcher", url=pg_url,
                         buffer_path=tmp_path / "buffer.sqlite3")
    try:
        yield s
    finally:
        await s.close()


@dataclass
class Rig:
    sim: Simulator
    store: Store
    broker: Broker
    account: str
    limits: RiskLimits = WIDE
    manage_external: bool = False

    def dispatcher(self) -> Dispatcher:
        """A fresh dispatcher (a new instance = a restarted process)."""
        async def ks() -> KillSwitch:
            return await read_kill_switch(self.store, self.account)

        return Dispatcher(store=self.store, broker=self.broker, account=self.account,
                          limits=lambda: self.limits, kill_switch=ks,
                          process=f"{self.account}-dispatcher",
                          manage_external=lambda: self.manage_external)

    async def signal(self, symbol: str, side: str, qty: str, *,
                     limit_price: Decimal | None = None) -> int:
        sid = await self.store.insert_signal(
            account=self.account, symbol=symbol, side=side, qty=D(qty),
            order_type="limit" if limit_price is not None else "market",
            limit_price=limit_price)
        assert sid is not None
        return sid

    async def row(self, sid: int) -> sq.SignalRow:
        r = await sq.get_signal(self.store.pool, sid)
        assert r is not None
        return r

    def sim_orders(self, prefix: str = "") -> list[Any]:
        st = self.sim.engine.states[self.account]
        return sorted((o for o in st.orders.values() if o.client_order_id.startswith(prefix)),
                      key=lambda o: o.seq)

    async def position(self, symbol: str) -> Decimal:
        p = await self.broker.get_position(symbol)
        return D(0) if p is None else p.qty

    async def by_hand(self, symbol: str, side: Side, qty: int | str, **kw: Any) -> str:
        """An order placed outside the pipeline (Alpaca's web UI): an external lot."""
        cid = f"web-{uuid.uuid4().hex[:12]}"
        res = await self.broker.submit_order(OrderRequest(symbol, side, cid, qty=D(qty), **kw))
        assert res.outcome == "accepted", res
        return cid

    async def switch(self, mode: KillSwitch) -> None:
        await self.store.set_control(self.account, KILL_SWITCH_KEY, {"mode": mode.value},
                                     by="test")

    async def managed(self, symbol: str) -> Decimal:
        got = await managed_quantities(self.store.pool, self.account, [symbol])
        return got.get(symbol, D(0))

    async def incidents(self, kind: str, symbol: str) -> list[dict[str, Any]]:
        rows = await self.store.pool.fetch(
            "SELECT detail, closed_at FROM incidents WHERE dedupe_key = $1",
            refusals.dedupe_key(kind, self.account, symbol))
        return [dict(r) for r in rows]


async def _rig(sim: Simulator, store: Store, account: str) -> AsyncIterator[Rig]:
    spec = sim.account(account)
    endpoints = BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url)
    creds = Credentials(f"test/{account}", account, spec.key_id, spec.secret)
    broker = Broker(endpoints, creds, FAST)
    await broker.bind_account(spec.account_number)

    async def on_update(u: TradeUpdate) -> None:
        await store.write_many([trade_update_op(account, u), order_op(account, u.order)])

    async def on_bad(msg: object, why: str) -> None:
        raise AssertionError(f"bad stream message: {why}")

    stream = TradeStream(endpoints, creds, on_update, on_bad)
    await stream.start()
    await sim.wait_stream(account)
    try:
        yield Rig(sim, store, broker, account)
    finally:
        await stream.stop()
        broker.close()


@pytest.fixture
async def tiny(sim: Simulator, store: Store) -> AsyncIterator[Rig]:
    async for r in _rig(sim, store, "tiny"):
        yield r


@pytest.fixture
async def large(sim: Simulator, store: Store) -> AsyncIterator[Rig]:
    async for r in _rig(sim, store, "large"):
        yield r


def option(underlying: str = "AAPL", days: int = 20, strike: int = 190) -> str:
    expiry = datetime.now(NEW_YORK).date() + timedelta(days=days)
    return str(OptionSymbol(underlying, expiry, "C", D(strike)))


def marketable(sim: Simulator, symbol: str) -> Decimal:
    """A buy limit 20 % through the simulator's price, on a 5-cent tick."""
    return (sim.market.price(symbol) * D("1.2") / D("0.05")).to_integral_value(
        ROUND_CEILING) * D("0.05")


async def _eq(rig: Rig, symbol: str, qty: Decimal) -> bool:
    return await rig.position(symbol) == qty


async def _managed_eq(rig: Rig, symbol: str, qty: Decimal) -> bool:
    return await rig.managed(symbol) == qty


async def fill(rig: Rig, d: Dispatcher, symbol: str, qty: str, *,
               limit_price: Decimal | None = None) -> int:
    """A signal's buy, submitted by `d`, filled and its fill stored (a managed lot)."""
    before = await rig.position(symbol)
    sid = await rig.signal(symbol, "buy", qty, limit_price=limit_price)
    await d.run_pass()
    r = await rig.row(sid)
    assert r.status == "submitted", r.reason
    await eventually(lambda: _eq(rig, symbol, before + D(qty)), f"{symbol} filled")
    await eventually(lambda: _managed_eq(rig, symbol, before + D(qty)), f"{symbol} stored")
    return sid


async def day_trades(rig: Rig, n: int, symbol: str = "NVDA") -> None:
    """n round trips opened and closed today, straight at the broker."""
    for _ in range(n):
        await rig.by_hand(symbol, Side.BUY, 1)
        await eventually(lambda: _eq(rig, symbol, D(1)), "bought")
        await rig.by_hand(symbol, Side.SELL, 1)
        await eventually(lambda: _eq(rig, symbol, D(0)), "sold")


# --- position_intent on the wire ----------------------------------------------------------------


async def test_every_option_order_carries_its_position_intent(large: Rig) -> None:
    d = large.dispatcher()
    sym = option()
    price = marketable(large.sim, sym)
    await fill(large, d, sym, "2", limit_price=price)
    [entry] = [o for o in large.sim_orders("ops-large-sig-") if o.symbol == sym]
    assert entry.position_intent == "buy_to_open"
    exit_sid = await large.signal(sym, "sell", "2",
                                  limit_price=(large.sim.market.price(sym) * D("0.5"))
                                  .quantize(D("0.05")))
    await d.run_pass()
    assert (await large.row(exit_sid)).status == "submitted"
    [exit_order] = [o for o in large.sim_orders("ops-large-sig-")
                    if o.symbol == sym and o.side == "sell"]
    assert exit_order.position_intent == "sell_to_close"
    # A stock order carries none.
    await fill(large, d, "NVDA", "1")
    assert all(o.position_intent is None for o in large.sim_orders("ops-large-sig-")
               if o.symbol == "NVDA")


# --- options level and options buying power, refused before sending --------------------------


async def test_options_level_is_checked_before_sending(tiny: Rig) -> None:
    st = tiny.sim.engine.states["tiny"]
    st.spec = dataclasses.replace(st.spec, options_trading_level=1)
    d = tiny.dispatcher()
    await d.run_pass()
    sym = option()
    sid = await tiny.signal(sym, "buy", "1", limit_price=D("0.05"))
    await d.run_pass()
    r = await tiny.row(sid)
    assert r.status == "rejected" and r.reason is not None
    assert r.reason.startswith(f"options_level: buy_to_open 1 {sym}")
    assert "needs options_trading_level 2, the account has level 1" in r.reason
    assert not [o for o in tiny.sim_orders() if o.symbol == sym]  # never sent
    # Level 2 (tiny's own): the same order goes out.
    st.spec = dataclasses.replace(st.spec, options_trading_level=2)
    again = await tiny.signal(sym, "buy", "1", limit_price=D("0.05"))
    await d.run_pass()
    assert (await tiny.row(again)).status == "submitted"
    [sent] = [o for o in tiny.sim_orders() if o.symbol == sym]
    assert sent.position_intent == "buy_to_open"


async def test_option_entries_are_sized_against_options_buying_power(large: Rig) -> None:
    d = large.dispatcher()
    await d.run_pass()
    account = await large.broker.get_account()
    assert account.options_buying_power is not None
    obp, bp = account.options_buying_power, account.buying_power
    assert obp < bp  # margin account: options are not margined
    sym = option()
    price = marketable(large.sim, sym)
    qty = ((obp + bp) / 2 / (price * 100)).to_integral_value(ROUND_CEILING)
    assert obp < qty * price * 100 < bp
    sid = await large.signal(sym, "buy", str(qty), limit_price=price)
    await d.run_pass()
    r = await large.row(sid)
    assert r.status == "rejected" and r.reason is not None
    assert r.reason.startswith("options_buying_power: option order notional")
    assert "exceeds options_buying_power" in r.reason
    assert not [o for o in large.sim_orders() if o.symbol == sym]


# --- pattern-day-trading guard and the broker's refusal -----------------------------------------


async def test_an_entry_at_the_pdt_limit_is_refused_before_sending(tiny: Rig) -> None:
    await day_trades(tiny, 3)
    account = await tiny.broker.get_account()
    assert account.daytrade_count == 3 and account.pattern_day_trader is False
    tiny.limits = dataclasses.replace(WIDE, pdt_guard=PdtGuard.STRICT)
    d = tiny.dispatcher()
    await d.run_pass()
    sid = await tiny.signal("AMD", "buy", "1")
    await d.run_pass()
    r = await tiny.row(sid)
    assert r.status == "rejected" and r.reason is not None
    assert r.reason.startswith("pdt: pattern-day-trading guard: the account is under "
                               "25,000.00")
    assert "3 day trade(s) in 5 business days" in r.reason
    assert "pdt_guard is strict" in r.reason
    assert not [o for o in tiny.sim_orders() if o.symbol == "AMD"]
    # normal: refused only when the exit rules would close it this session.
    tiny.limits = dataclasses.replace(WIDE, pdt_guard=PdtGuard.NORMAL, max_hold_s=60.0)
    if not (await tiny.broker.get_clock()).is_open:
        pytest.skip("the simulator's session clock is closed")  # clock "open" mode: never
    sid = await tiny.signal("AMD", "buy", "1")
    await d.run_pass()
    r = await tiny.row(sid)
    assert r.status == "rejected" and r.reason is not None and "max_hold_s 60" in r.reason


async def test_the_broker_refuses_a_4th_day_trade_even_an_exit(tiny: Rig) -> None:
    """pdt_guard normal without a same-day exit rule lets the entry through; its exit the
    same day is then refused by the broker (docs/broker-protocol.md 3.7a): an exit-refused incident
    that says to wait, and retry_after names the next session open."""
    d = tiny.dispatcher()
    await d.run_pass()
    await fill(tiny, d, "AMD", "1")
    await day_trades(tiny, 3)
    exit_sid = await tiny.signal("AMD", "sell", "1")
    await d.run_pass()
    r = await tiny.row(exit_sid)
    assert r.status == "rejected" and r.reason is not None
    assert r.reason == "broker: trade denied due to pattern day trading protection"
    [inc] = await tiny.incidents(refusals.EXIT_REFUSED, "AMD")
    assert inc["closed_at"] is None
    assert "pattern-day-trading protection (403 40310100)" in inc["detail"]
    clock = await tiny.broker.get_clock()
    when = refusals.retry_after(refusals.Refusal(403, 40310100, r.reason[len("broker: "):]),
                                clock)
    assert when == clock.next_open


# --- flatten: managed only vs everything --------------------------------------------------------


async def test_flatten_closes_the_managed_part_only_and_flatten_all_everything(
        tiny: Rig) -> None:
    d = tiny.dispatcher()
    await d.run_pass()
    await fill(tiny, d, "NVDA", "2")  # managed
    await tiny.by_hand("NVDA", Side.BUY, 3)  # external lot beside it
    await tiny.by_hand("AMD", Side.BUY, 1)  # external position
    await eventually(lambda: _eq(tiny, "NVDA", D(5)), "NVDA 5")
    await eventually(lambda: _eq(tiny, "AMD", D(1)), "AMD 1")
    ext_order = await tiny.by_hand("AAPL", Side.BUY, 1, order_type=OrderType.LIMIT,
                                   limit_price=D("1.00"))
    own_order = await tiny.broker.submit_order(OrderRequest(
        "AAPL", Side.BUY, "ops-tiny-exit-own-1", qty=D(1), order_type=OrderType.LIMIT,
        limit_price=D("1.00")))
    assert own_order.order is not None

    await tiny.switch(KillSwitch.FLATTEN)

    async def managed_closed() -> bool:
        await d.run_pass()
        return await tiny.position("NVDA") == D(3)

    await eventually(managed_closed, "the managed 2 NVDA closed")
    for _ in range(3):
        await d.run_pass()
    assert await tiny.position("NVDA") == D(3) and await tiny.position("AMD") == D(1)
    [flat] = tiny.sim_orders(flatten_prefix("tiny"))
    assert flat.symbol == "NVDA" and flat.side == "sell" and flat.qty == D(2)
    assert flat.client_order_id.endswith("-0")
    await eventually(lambda: _managed_eq(tiny, "NVDA", D(0)), "a managed reduction")
    open_cids = {o.client_order_id for o in await tiny.broker.list_orders(status="open")}
    assert ext_order in open_cids  # external orders untouched
    assert "ops-tiny-exit-own-1" not in open_cids  # the pipeline's own canceled
    counters = d.counters()
    assert counters["flatten_external_left"] == 2 and counters["flatten_ownership_unknown"] == 0

    await tiny.switch(KillSwitch.FLATTEN_ALL)

    async def flat_everywhere() -> bool:
        await d.run_pass()
        return (not await tiny.broker.list_positions()
                and not await tiny.broker.list_orders(status="open"))

    await eventually(flat_everywhere, "everything closed")
    # The external lots were sold by close-position: the ledger keeps them external.
    assert await tiny.managed("NVDA") == D(0) and await tiny.managed("AMD") == D(0)
    assert len(tiny.sim_orders(flatten_prefix("tiny"))) == 1
    assert d.counters()["flatten_external_left"] == 0


async def test_manage_external_makes_flatten_close_everything(tiny: Rig) -> None:
    tiny.manage_external = True
    d = tiny.dispatcher()
    await d.run_pass()
    await tiny.by_hand("AMD", Side.BUY, 2)
    await eventually(lambda: _eq(tiny, "AMD", D(2)), "AMD bought by hand")
    await tiny.switch(KillSwitch.FLATTEN)

    async def closed() -> bool:
        await d.run_pass()
        return await tiny.position("AMD") == D(0)

    await eventually(closed, "AMD closed as managed")
    [flat] = tiny.sim_orders(flatten_prefix("tiny"))
    assert flat.symbol == "AMD" and flat.qty == D(2)


async def test_without_ownership_a_managed_flatten_sells_nothing(
        tiny: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    d = tiny.dispatcher()
    await d.run_pass()
    await fill(tiny, d, "NVDA", "1")
    own = await tiny.broker.submit_order(OrderRequest(
        "AAPL", Side.BUY, "ops-tiny-exit-own-2", qty=D(1), order_type=OrderType.LIMIT,
        limit_price=D("1.00")))
    assert own.order is not None

    async def unreachable(*a: object, **kw: object) -> dict[str, Decimal]:
        raise ConnectionRefusedError("connection refused (test)")

    monkeypatch.setattr(dmod, "managed_quantities", unreachable)
    await tiny.switch(KillSwitch.FLATTEN)
    for _ in range(3):
        await d.run_pass()
    assert await tiny.position("NVDA") == D(1)  # nothing sold
    assert tiny.sim_orders(flatten_prefix("tiny")) == []
    assert own.order.id not in {o.id for o in await tiny.broker.list_orders(status="open")}
    counters = d.counters()
    assert counters["flatten_ownership_unknown"] == 1
    assert "ownership unknown" in str(counters["flatten_blocked_reason"])
    assert "NOTHING is closed" in caplog.text
    # flatten-all needs no ownership: every lot closed by the pipeline's own order.
    await tiny.switch(KillSwitch.FLATTEN_ALL)

    async def closed() -> bool:
        await d.run_pass()
        return await tiny.position("NVDA") == D(0)

    await eventually(closed, "NVDA closed by flatten-all")
    [flat] = tiny.sim_orders(flatten_prefix("tiny"))
    assert flat.symbol == "NVDA" and flat.qty == D(1)
    assert d.counters()["flatten_blocked_reason"] == ""


async def test_a_managed_close_is_never_sent_twice_across_restarts(tiny: Rig) -> None:
    d = tiny.dispatcher()
    await d.run_pass()
    await fill(tiny, d, "NVDA", "2")
    tiny.sim.faults.set_clock("closed")  # the close is accepted but cannot fill
    await tiny.switch(KillSwitch.FLATTEN)
    await d.run_pass()
    await d.run_pass()
    [first] = tiny.sim_orders(flatten_prefix("tiny"))
    for _ in range(2):  # restarted processes: the same id, found working
        await tiny.dispatcher().run_pass()
    assert tiny.sim_orders(flatten_prefix("tiny")) == [first]
    # Someone cancels it: the next pass sends the next attempt, once.
    await tiny.broker.cancel_order(first.id)
    fresh = tiny.dispatcher()
    await fresh.run_pass()
    await fresh.run_pass()
    orders = tiny.sim_orders(flatten_prefix("tiny"))
    assert len(orders) == 2 and orders[1].client_order_id.endswith("-1")
    assert orders[0].client_order_id[:-2] == orders[1].client_order_id[:-2]
    tiny.sim.faults.set_clock("open")
    await eventually(lambda: _eq(tiny, "NVDA", D(0)), "closed once open")
    await fresh.run_pass()
    assert len(tiny.sim_orders(flatten_prefix("tiny"))) == 2


def test_flatten_all_decodes_everywhere() -> None:
    assert kill_switch_from_value({"mode": "flatten-all"}) is KillSwitch.FLATTEN_ALL
    assert kill_switch_from_value('{"mode": "flatten-all"}') is KillSwitch.FLATTEN_ALL
    assert KillSwitch.FLATTEN_ALL.flattens and KillSwitch.FLATTEN.flattens
    assert not KillSwitch.REDUCE_ONLY.flattens
