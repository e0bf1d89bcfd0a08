"""The History tab's read path (tui/history.py, ops/store/history.py): run-slot strips,
account series and realised P&L, read from a real Postgres through the real Store. The tab
on screen: test_history_tab.py.

The run ledger is seeded with SQL (generate_series: a 5 s role over 20 h is ~11k rows,
too many to write one by one through the Store); everything else goes through the Store.
The frozen clock is `T`; the 24 h window in 48 columns makes each column 30 minutes, so
every seeded event falls on a known column.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from ops.core.models import TradeUpdate
from ops.store import Store
from tests.tui.conftest import T
from tests.tui.fixtures import OPTION, account_info, order
from tui.history import HistoryData, TimelineTarget, realised_pnl

PM = TimelineTarget("large-position-manager", "large", "position-manager", 5.0, 30.0)
# tiny's dispatcher ran until two hours ago, and never since.
TINY = TimelineTarget("tiny-dispatcher", "tiny", "dispatcher", 2.0, 20.0)
DAY = timedelta(hours=24)

_RUNS_SQL = """
INSERT INTO runs (slot_id, process, account, role, slot_time, scheduled_at, started_at,
                  finished_at, outcome, lateness_s)
SELECT $1 || ':' || extract(epoch FROM t)::text, $1, $2, $3, t, t, t, t,
       CASE WHEN t >= $6 AND t < $7 THEN 'error' ELSE 'ok' END, 0
FROM generate_series($4::timestamptz, $5::timestamptz, make_interval(secs => $8)) AS t
WHERE NOT (t > $9 AND t < $10) AND NOT (t > $11 AND t < $12)
ON CONFLICT DO NOTHING
"""


async def seed_runs(store: Store) -> None:
    """large-position-manager every 5 s from T-20h to T-5s, with: a 6 h hole (T-14h to
    T-8h), a 20 s gap at T-3h (late: over late_after(5) = 15 s, under the 30 s bound), and
    failing runs from T-1h for 2 minutes. tiny-dispatcher every 2 s until T-2h."""
    t = T
    await store.pool.execute(
        _RUNS_SQL, PM.name, "large", PM.role, t - timedelta(hours=20), t - timedelta(seconds=5),
        t - timedelta(hours=1), t - timedelta(hours=1) + timedelta(minutes=2), 5.0,
        t - timedelta(hours=14), t - timedelta(hours=8),
        t - timedelta(hours=3), t - timedelta(hours=3) + timedelta(seconds=20))
    await store.pool.execute(
        _RUNS_SQL, TINY.name, "tiny", TINY.role, t - timedelta(hours=3), t - timedelta(hours=2),
        t, t, 2.0, t, t, t, t)


async def test_strip_shows_the_six_hour_hole_late_and_failed(ops_store: Store) -> None:
    await seed_runs(ops_store)
    state = await HistoryData(ops_store, lambda: T).load(DAY, [PM, TINY], ["large", "tiny"])
    pm, tiny = state.processes
    slots = pm.slots(48)
    assert slots[:8] == ["none"] * 8  # before its first run (T-20h)
    assert slots[20:32] == ["missed"] * 12  # T-14h .. T-8h: 12 columns of 30 min
    assert slots[19] == "ok" and slots[32] == "ok"  # the hole's edges are runs
    assert slots[42] == "late"  # the 20 s gap at T-3h
    assert slots[46] == "failed"  # errors from T-1h
    assert {i for i, s in enumerate(slots) if s not in ("ok", "none")} == {
        *range(20, 32), 42, 46}
    # The gaps are the ones `ops gaps` would list (longer than late_after(5) = 15 s).
    assert [(g.start, g.end) for g in pm.gaps] == [
        (T - timedelta(hours=14), T - timedelta(hours=8)),
        (T - timedelta(hours=3), T - timedelta(hours=3) + timedelta(seconds=20))]
    # tiny-dispatcher: silent for the last two hours, an ongoing gap.
    assert tiny.slots(48)[-4:] == ["missed"] * 4
    assert tiny.gaps[-1].ongoing

    # Zoomed to 1 h: tiny's last run is before the window, the whole strip is a hole.
    hour = await HistoryData(ops_store, lambda: T).load(
        timedelta(hours=1), [PM, TINY], ["large", "tiny"])
    assert hour.processes[1].slots(30) == ["missed"] * 30
    assert "missed" not in hour.processes[0].slots(30)


async def seed_tiny_equity(store: Store) -> dict[datetime, Decimal]:
    """tiny's equity every 2 minutes over the day (1000, 1001, ...; previous close 995),
    none from T-12h to T-6h, and 2000 in the last minute; what each minute keeps."""
    # tiny's equity every 2 minutes (1000, 1001, ...), none from T-12h to T-6h.
    seeded = {}
    for i in range(720):
        at = T - DAY + timedelta(minutes=1 + 2 * i)
        if T - timedelta(hours=12) < at < T - timedelta(hours=6):
            continue
        seeded[at] = Decimal(1000 + i)
        await store.record_account("tiny", account_info("tiny", str(1000 + i), "995"), at)
    # A second summary in the same minute replaces the first (one row a minute).
    last_at = T - timedelta(minutes=1)
    await store.record_account(
        "tiny", account_info("tiny", "2000", "995"), last_at + timedelta(seconds=20))
    seeded[last_at] = Decimal(2000)
    return seeded


async def test_equity_series_and_realised_pnl(ops_store: Store) -> None:
    seeded = await seed_tiny_equity(ops_store)
    # A second summary in the same minute replaced the first (one row a minute).
    assert await ops_store.pool.fetchval(
        "SELECT count(*) FROM account_history WHERE account = 'tiny'") == len(seeded)

    # Fills for large, by hand (average cost):
    #   NVDA buy 10 @ 100, buy 10 @ 110  -> 20 @ 105
    #        sell 5 @ 120 (yesterday)     -> +75.00, 15 @ 105
    #        sell 20 @ 100                -> -75.00 on 15, short 5 @ 100
    #        buy 5 @ 90                   -> +50.00 (short closed)
    #   option buy 2 @ 3.50, sell 1 @ 4.00 -> +50.00 (x100)
    # total +100.00; today (since midnight New York) +25.00
    fills = [("NVDA", "buy", "10", "100", DAY + timedelta(hours=2)),
             ("NVDA", "buy", "10", "110", DAY + timedelta(hours=1)),
             ("NVDA", "sell", "5", "120", DAY),
             ("NVDA", "sell", "20", "100", timedelta(hours=3)),
             ("NVDA", "buy", "5", "90", timedelta(hours=2)),
             (OPTION, "buy", "2", "3.50", timedelta(hours=2)),
             (OPTION, "sell", "1", "4.00", timedelta(hours=1))]
    for n, (symbol, side, qty, price, ago) in enumerate(fills):
        o = order(f"h-{n}", symbol, side, qty, "filled", T - ago, price)
        await ops_store.upsert_orders("large", [o])
        await ops_store.record_trade_updates("large", [TradeUpdate(
            event="fill", order=o, timestamp=T - ago, execution_id=f"hx-{n}",
            price=Decimal(price), qty=Decimal(qty))])

    state = await HistoryData(ops_store, lambda: T).load(DAY, [], ["large", "tiny"])
    large, tiny = state.accounts
    assert (large.realised_total, large.realised_today) == (Decimal("100"), Decimal("25"))
    assert tiny.realised_total == 0
    # The series: 288 buckets of 5 minutes, each its last value, carried forward.
    expected: list[float | None] = [None] * 288
    for at, equity in sorted(seeded.items()):
        expected[int((at - (T - DAY)) / (DAY / 288))] = float(equity)
    for i, v in enumerate(expected):
        expected[i] = v if v is not None else expected[i - 1] if i else 1000.0
    assert list(tiny.equity) == expected
    assert tiny.equity[-1] == 2000.0 and tiny.day_pl[-1] == 1005.0
    # The six hours without a summary are a hole, said in words.
    assert [(g.start, g.end) for g in tiny.holes] == [
        (T - timedelta(hours=12, minutes=1), T - timedelta(hours=5, minutes=59))]

    # A later load reads only new fills; a fill stored late with an older execution time
    # makes the book start over, with the same answer as a fresh one.
    hd = HistoryData(ops_store, lambda: T)
    await hd.load(DAY, [], ["large"])
    late = order("h-late", "NVDA", "buy", "1", "filled", T - DAY - timedelta(hours=3), "50")
    await ops_store.upsert_orders("large", [late])
    await ops_store.record_trade_updates("large", [TradeUpdate(
        event="fill", order=late, timestamp=late.created_at, execution_id="hx-late",
        price=Decimal("50"), qty=Decimal("1"))])
    again = await hd.load(DAY, [], ["large"])
    fresh = realised_pnl(await ops_store.fills_after(0))
    assert again.accounts[0].realised_total == fresh.total("large") != Decimal("100")
