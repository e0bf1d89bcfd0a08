"""`Store.signals()` / `Store.signal()` against real Postgres: newest first, the filters
(account, operator state words, since, limit), the order a signal became joined in, the
operator's words for the stored statuses, and an outage raised (never a buffer guess)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from ops.core.models import Order
from ops.runtime.env import RuntimeEnv
from ops.store import StorageUnavailable, Store
from ops.store.signal_records import STATES, state_of, statuses_of

T = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)


async def _signal(store: Store, account: str, symbol: str, minutes_ago: int) -> int:
    sid = await store.insert_signal(account=account, symbol=symbol, side="buy",
                                    qty=Decimal(1), created_at=T - timedelta(minutes=minutes_ago))
    assert sid is not None
    return sid


async def test_newest_first_filters_and_the_order_it_became(ops_store: Store) -> None:
    s = ops_store
    old = await _signal(s, "large", "AAPL", 120)
    sub = await _signal(s, "large", "MSFT", 30)
    rej = await _signal(s, "tiny", "NVDA", 20)
    exp = await _signal(s, "tiny", "AMD", 10)
    queued = await _signal(s, "tiny", "SPY", 1)
    cid = "ops-large-sig-" + str(sub)
    await s.record_signal_decision(sub, "submitted", reason="allowed: buy 1 MSFT",
                                   client_order_id=cid, broker_order_id="b-1", attempts=1)
    await s.upsert_orders("large", [Order(
        id="b-1", client_order_id=cid, symbol="MSFT", side="buy", order_type="market",
        time_in_force="day", status="filled", created_at=T, updated_at=T, submitted_at=T,
        qty=Decimal(1), filled_qty=Decimal(1), filled_avg_price=Decimal("420.5"))])
    await s.record_signal_decision(rej, "rejected", reason="sanity: qty 1 exceeds max_qty 0",
                                   client_order_id="ops-tiny-sig-" + str(rej), attempts=1)
    await s.record_signal_decision(exp, "expired", reason="expiry: signal is 601.0s old")

    everything = await s.signals()
    assert [r.id for r in everything] == [queued, exp, rej, sub, old]
    assert [r.state for r in everything] == ["queued", "expired", "rejected", "submitted",
                                             "queued"]
    by_id = {r.id: r for r in everything}
    submitted = by_id[sub]
    assert submitted.decided and submitted.order is not None
    assert (submitted.order.id, submitted.order.status, submitted.order.filled_qty,
            submitted.order.filled_avg_price) == ("b-1", "filled", Decimal(1), Decimal("420.5"))
    assert by_id[rej].reason == "sanity: qty 1 exceeds max_qty 0" and by_id[rej].order is None
    assert not by_id[queued].decided

    assert [r.id for r in await s.signals(account="tiny")] == [queued, exp, rej]
    assert [r.id for r in await s.signals(states=["rejected", "expired"])] == [exp, rej]
    assert [r.id for r in await s.signals(states=["queued"])] == [queued, old]
    assert [r.id for r in await s.signals(since=T - timedelta(minutes=25))] == [
        queued, exp, rej]
    assert [r.id for r in await s.signals(limit=2)] == [queued, exp]
    assert [r.id for r in await s.signals(account="large", states=["submitted"])] == [sub]

    full = await s.signal(sub)
    assert full is not None and full.reason == "allowed: buy 1 MSFT"
    assert full.client_order_id == cid and full.order_id == "b-1" and full.attempts == 1
    assert await s.signal(10**12) is None


def test_state_words_cover_every_stored_status() -> None:
    stored = {"pending", "claimed", "submitted", "rejected", "unknown", "expired", "filled",
              "canceled"}  # the CHECK constraint of 0001_initial.sql
    assert {x for xs in STATES.values() for x in xs} == stored
    assert state_of("claimed") == "queued" and state_of("filled") == "submitted"
    with pytest.raises(ValueError, match="signal state 'done': expected one of queued"):
        statuses_of(["done"])


async def test_a_bad_limit_is_refused(ops_store: Store) -> None:
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        await ops_store.signals(limit=0)


async def test_an_outage_is_raised_not_guessed(tmp_path: Path) -> None:
    down = f"postgresql://postgres@/nodb?host={tmp_path / 'no-such-socket-dir'}"
    env = RuntimeEnv(config_path=tmp_path / "ops.toml", home=tmp_path, database_url=down)
    async with await Store.open(env, process="test", url=down) as store:
        with pytest.raises(StorageUnavailable) as caught:
            await store.signal(1)
        assert isinstance(caught.value.__cause__, OSError)  # the socket is not there
