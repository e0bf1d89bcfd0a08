"""Benchmark: the dashboard's History tab over a day of demo-sized history.

    .venv/bin/python bench/history.py [--fills 5000] [--loads 5]

Starts a throwaway embedded Postgres and seeds 24 h of the demo's run ledger (2 accounts:
dispatcher every 2 s, stream and position manager every 5 s, signal engine every 5 s,
watchdog every 1 s: ~260k runs, with one 6-hour hole), each account's summary one a
minute, `--fills` fills, and a few incidents. Then measures:
- first:  `HistoryData.load()` of the 24 h window with an empty P&L book (every fill read),
- load:   the same load again at each zoom (new fills only; runs in a worker, off the UI),
- show:   applying a loaded state to the tab (`HistoryView.show_state`, on the UI's path),
- paint:  then drawing the whole 160x48 frame with the tab shown,
- key:    a key press on the processes panel while polls run every second and the
          History tab is hidden (its loads then never run: the figure to compare with
          bench/dashboard.py), and `hist-key`: `z` on the History tab, each press landing
          while the load the previous one started runs (and the 1 s polls).
Prints the figures and the command. Not a test: machine speed varies.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textual import events  # noqa: E402
from textual.widget import Widget  # noqa: E402

from bench.dashboard import ms, timed, with_postgres  # noqa: E402
from ops.core.models import AccountInfo, Heartbeat  # noqa: E402
from ops.runtime.config import load_config  # noqa: E402
from ops.runtime.env import RuntimeEnv  # noqa: E402
from ops.store import Store  # noqa: E402
from ops.supervise.supervisor import ACCOUNT_ROLES, SupervisorClient, program_name  # noqa: E402
from tui.app import Dashboard  # noqa: E402
from tui.data import DashboardData  # noqa: E402
from tui.history import ZOOMS, HistoryData, TimelineTarget  # noqa: E402
from tui.widgets.history import HistoryView  # noqa: E402
from tui.widgets.processes import ProcessesTable  # noqa: E402

INTERVALS = {"dispatcher": 2.0, "stream": 5.0, "position-manager": 5.0}
_RUNS_SQL = """
INSERT INTO runs (slot_id, process, account, role, slot_time, scheduled_at, started_at,
                  finished_at, outcome, lateness_s)
SELECT $1 || ':' || extract(epoch FROM t)::text, $1, $2, $3, t, t, t,
       t + interval '20 milliseconds', 'ok', 0
FROM generate_series($4::timestamptz, $5::timestamptz, make_interval(secs => $6)) AS t
WHERE NOT (t > $7 AND t < $8)
"""
_FILLS_SQL = """
WITH o AS (
    INSERT INTO orders (id, account, client_order_id, symbol, side, order_type,
                        time_in_force, qty, filled_qty, filled_avg_price, status,
                        asset_class, created_at, updated_at)
    SELECT 'b' || i, a, 'c' || i, 'S' || (i % 40), CASE WHEN i % 3 = 0 THEN 'sell'
           ELSE 'buy' END, 'market', 'day', 1 + i % 5, 1 + i % 5, 100 + i % 17, 'filled',
           'us_equity', $2::timestamptz - make_interval(secs => i * 7),
           $2::timestamptz - make_interval(secs => i * 7)
    FROM generate_series(1, $1) AS i, (VALUES ('large'), ('tiny')) AS acc(a)
    WHERE (i % 2 = 0) = (a = 'large')
    RETURNING id, account, symbol, qty, filled_avg_price, created_at
)
INSERT INTO order_events (account, event_key, order_id, symbol, event, ts, price, qty,
                          cum_qty, raw)
SELECT account, 'f-' || id, id, symbol, 'fill', created_at, filled_avg_price, qty, qty, '{}'
FROM o
"""


async def presses(app: Dashboard, widget: Widget, key: str, action: str,
                  n: int) -> list[float]:
    """`n` key events, each timed from posting it to `widget`'s `action` having run (as
    bench/dashboard.py times them: not pilot.press, which waits for the app to go idle)."""
    out: list[float] = []
    handled = asyncio.Event()
    sent = [0.0]
    original = getattr(widget, action)

    def timed_action(*args: object) -> None:
        original(*args)
        out.append(time.perf_counter() - sent[0])
        handled.set()

    setattr(widget, action, timed_action)
    widget.focus()
    await asyncio.sleep(0.2)
    for _ in range(n):
        handled.clear()
        sent[0] = time.perf_counter()
        app.post_message(events.Key(key, None))
        await asyncio.wait_for(handled.wait(), 10)
        await asyncio.sleep(0.137)
    setattr(widget, action, original)
    return out


def targets(config_accounts: list[str]) -> list[TimelineTarget]:
    out = [TimelineTarget("watchdog", None, "watchdog", None),
           TimelineTarget("signal-engine", None, "signal-engine", 5.0, 60.0)]
    out += [TimelineTarget(program_name(r, a), a, r, INTERVALS[r], 30.0)
            for a in config_accounts for r in ACCOUNT_ROLES]
    return out


async def seed(store: Store, now: datetime, n_fills: int) -> int:
    start = now - timedelta(hours=24)
    hole = (now - timedelta(hours=14), now - timedelta(hours=8))
    for t in targets(["large", "tiny"]):
        await store.pool.execute(_RUNS_SQL, t.name, t.account, t.role, start, now,
                                 t.interval_s or 1.0, *hole)
        await store.heartbeat(Heartbeat(process=t.name, account=t.account, role=t.role,
                                        pid=1, ts=now, started_at=now - timedelta(hours=1)))
    for name in ("large", "tiny"):
        for minute in range(0, 1440):
            at = start + timedelta(minutes=minute, seconds=30)
            eq = Decimal(100000 + (minute * 37) % 500)
            await store.record_account(name, AccountInfo(
                account_id=name, account_number="PASIM", status="ACTIVE", currency="USD",
                cash=eq, equity=eq, last_equity=Decimal(100000), buying_power=eq), at)
    await store.pool.execute(_FILLS_SQL, n_fills, now)
    for i in range(6):
        await store.open_incident("stalled", detail="bench", process="large-dispatcher",
                                  dedupe_key=f"b{i}", at=now - timedelta(hours=4 * i + 1))
        await store.close_incident(dedupe_key=f"b{i}", at=now - timedelta(hours=4 * i))
    return int(await store.pool.fetchval("SELECT count(*) FROM runs"))


async def run(env: RuntimeEnv, n_fills: int, loads: int) -> None:
    config = load_config(ROOT / "conf" / "ops.toml")
    now = datetime.now(UTC).replace(microsecond=0)
    async with await Store.open(env, process="bench") as store:
        n_runs = await seed(store, now, n_fills)
        accounts = ["large", "tiny"]
        hd = HistoryData(store, lambda: now)
        t0 = time.perf_counter()
        await hd.load(ZOOMS[-1], targets(accounts), accounts)
        first = time.perf_counter() - t0
        per_zoom: dict[str, list[float]] = {}
        for span in ZOOMS:
            xs = per_zoom.setdefault(f"{span.total_seconds() / 3600:g}h", [])
            for _ in range(loads):
                t0 = time.perf_counter()
                await hd.load(span, targets(accounts), accounts)
                xs.append(time.perf_counter() - t0)

        data = DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                             lambda: now)
        app = Dashboard(data, refresh_s=3600)
        show_s: list[float] = []
        paint_s: list[float] = []
        async with app.run_test(size=(160, 48)) as pilot:
            while app.loads < 1:
                await pilot.pause(0.01)
            app.set_interval(1.0, app._poll_tick)
            key_s = await presses(app, app.query_one(ProcessesTable), "down",
                                  "action_cursor_down", 20)
            view = app.query_one(HistoryView)
            assert view.loads == 0, "the hidden History tab loaded"
            await pilot.press("6")
            while view.loads < 1:
                await pilot.pause(0.05)
            compositor = app.screen._compositor  # bench only: draws a frame synchronously
            for _ in range(loads):
                show_s.append(timed(view.show_state))
                await pilot.pause()
                paint_s.append(timed(compositor.render_full_update))
            # `z` zooms and so reloads: the next press lands while that load runs.
            hist_key_s = await presses(app, view, "z", "action_zoom", 20)
    print(f"history: {n_runs:,} runs in 24 h ({len(targets(accounts))} processes, one 6 h "
          f"hole), 2 x 1,440 account summaries, {n_fills:,} fills, 160x48")
    print(f"  first  (24 h, every fill read)    {ms([first])}")
    for label, xs in per_zoom.items():
        print(f"  load {label:>3} (worker, new fills only) {ms(xs)}")
    print(f"  show   (UI, apply a loaded state)  {ms(show_s)}")
    print(f"  paint  (UI, the frame after that)  {ms(paint_s)}")
    print(f"  key    (processes, polling; history hidden) {ms(key_s)}")
    print(f"  hist-key (history tab, reloading)  {ms(hist_key_s)}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=5000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=300, help="seconds before giving up")
    args = parser.parse_args()
    with_postgres("bench/history.py", args.timeout,
                  lambda env: run(env, args.fills, args.loads))


if __name__ == "__main__":
    main()
