"""Benchmark: the dashboard's refresh with 2 accounts x 1,000 positions and 20 processes.

    .venv/bin/python bench/dashboard.py [--loads 20]

Starts a throwaway embedded Postgres, writes the positions (prices move between loads,
so every refresh changes cells), heartbeats and runs through the real Store, then runs
the real `Dashboard` headless at 160x48 and measures:
- load:   `DashboardData.load()` (all reads; runs in the poll worker, off the UI's path),
- render: applying a new state to every widget (`render_state`, on the UI's path),
- paint:  then drawing the whole 160x48 frame (Textual's compositor: every widget's
          changed lines), which a real terminal pays on the next screen update,
- tick:   the 1 s clock pass (ages and gap status, no I/O),
- key:    a key press (cursor down) handled while polls run every second, timed from
          the key event to the cursor having moved, on the processes panel and on the
          positions panel (`pos-key`); `idle-key` is the same press with no polls.
Prints the figures and the command. Not a test: machine speed varies. The embedded
Postgres is stopped however the run ends (error, --timeout, SIGTERM, Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textual import events  # noqa: E402
from textual.widget import Widget  # noqa: E402

from ops.core.config import Config, default_secret_id  # noqa: E402
from ops.core.models import Heartbeat, Position, RunRecord  # noqa: E402
from ops.runtime.config import load_config  # noqa: E402
from ops.runtime.env import RuntimeEnv  # noqa: E402
from ops.store import Store  # noqa: E402
from ops.store.embedded import EmbeddedPostgres  # noqa: E402
from ops.store.migrate import migrate  # noqa: E402
from ops.supervise.supervisor import ACCOUNT_ROLES, SupervisorClient, program_name  # noqa: E402
from tui.app import Dashboard  # noqa: E402
from tui.data import DashboardData  # noqa: E402
from tui.widgets.positions import PositionsTable  # noqa: E402
from tui.widgets.processes import ProcessesTable  # noqa: E402

N_POSITIONS = 1000


def bench_config() -> Config:
    """The demo config plus four accounts: 6 x 3 roles + signal-engine + watchdog = 20
    processes (positions only in large and tiny). Each a copy of tiny with its own secret
    and account number (a valid config: `replace` validates)."""
    base = load_config(ROOT / "conf" / "ops.toml")
    tiny = base.accounts["tiny"]
    accounts = dict(base.accounts)
    for i in range(1, 5):
        name = f"extra{i}"
        accounts[name] = replace(tiny, secret_id=default_secret_id(name),
                                 expected_account_number=f"PASIM000010{i}")
    return replace(base, accounts=accounts)


def positions(step: int) -> list[Position]:
    out = []
    for i in range(N_POSITIONS):
        avg = Decimal(100 + i % 50)
        last = avg + Decimal((i * 7 + step * 13) % 21 - 10) / 10
        qty = Decimal(1 + i % 9)
        out.append(Position(symbol=f"S{i:04d}", qty=qty, avg_entry_price=avg,
                            cost_basis=qty * avg, market_value=qty * last, current_price=last,
                            unrealized_pl=qty * (last - avg),
                            unrealized_plpc=(last - avg) / avg))
    return out


async def write(store: Store, config: Config, at: datetime, step: int) -> None:
    for holder in ("large", "tiny"):
        await store.sync_positions(holder, positions(step), at)
    names: list[tuple[str, str | None, str]] = [
        ("signal-engine", None, "signal-engine"), ("watchdog", None, "watchdog")]
    names += [(program_name(r, a), a, r) for a in config.enabled_accounts()
              for r in ACCOUNT_ROLES]
    for name, acct, role in names:
        await store.heartbeat(Heartbeat(process=name, account=acct, role=role, pid=1, ts=at,
                                        started_at=at - timedelta(hours=1)))
        await store.record_run(RunRecord(
            slot_id=RunRecord.make_slot_id(acct, role, at), process=name, account=acct,
            role=role, slot_time=at, scheduled_at=at, started_at=at, finished_at=at,
            outcome="ok", lateness_s=0.0))


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return (f"mean {statistics.mean(xs) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  "
            f"max {xs[-1] * 1000:7.1f} ms  (n={len(xs)})")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


async def presses(app: Dashboard, table: Widget, n: int) -> list[float]:
    """`n` cursor key events (15 down, 15 up, ...), 137 ms apart (so they land at every
    phase of the 1 s poll cycle), each timed from posting the key to the table's cursor
    action having run: how long a key waits behind whatever the event loop is doing (a
    poll's reads and row building, a render, a paint). Not `pilot.press`, which also
    waits for the whole app to go idle (about 64 ms of test-pilot overhead per press)."""
    out: list[float] = []
    handled = asyncio.Event()
    sent = [0.0]
    for name in ("action_cursor_down", "action_cursor_up"):
        original = getattr(table, name)

        def timed_action(original: Callable[[], object] = original) -> None:
            original()
            out.append(time.perf_counter() - sent[0])
            handled.set()

        setattr(table, name, timed_action)  # the binding looks the action up on the table
    try:
        table.focus()
        await asyncio.sleep(0.2)
        for i in range(n):
            handled.clear()
            sent[0] = time.perf_counter()
            app.post_message(events.Key("down" if i // 15 % 2 == 0 else "up", None))
            await asyncio.wait_for(handled.wait(), 10)
            await asyncio.sleep(0.137)
    finally:
        for name in ("action_cursor_down", "action_cursor_up"):
            delattr(table, name)
    return out


async def run(loads: int, env: RuntimeEnv) -> None:
    config = bench_config()
    now = [datetime.now(UTC)]
    async with await Store.open(env, process="bench") as store:
        await write(store, config, now[0], 0)
        data = DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=1),
                             lambda: now[0])
        app = Dashboard(data, refresh_s=3600)  # the benchmark drives the loads itself
        load_s: list[float] = []
        render_s: list[float] = []
        paint_s: list[float] = []
        tick_s: list[float] = []
        async with app.run_test(size=(160, 48)) as pilot:
            while app.loads < 1:
                await pilot.pause(0.01)
            state = await data.load()
            n_proc, n_pos = len(state.processes), len(state.positions)
            # Private, but the one call that draws a frame synchronously (bench only).
            compositor = app.screen._compositor
            for step in range(1, loads + 1):
                now[0] += timedelta(seconds=1)
                await write(store, config, now[0], step)
                t0 = time.perf_counter()
                app.state = await data.load()
                load_s.append(time.perf_counter() - t0)
                render_s.append(timed(app.render_state))
                paint_s.append(timed(compositor.render_full_update))
                now[0] += timedelta(milliseconds=500)
                tick_s.append(timed(lambda: app.render_state(data_changed=False)))
                await pilot.pause()
            idle_key_s = await presses(app, app.query_one(ProcessesTable), 20)
            # Key presses while the app polls every second by itself (as `ops dash` does).
            app.set_interval(1.0, app._poll_tick)
            key_s = await presses(app, app.query_one(ProcessesTable), 80)
            await pilot.press("2")
            pos_key_s = await presses(app, app.query_one(PositionsTable), 80)
    print(f"dashboard refresh: {n_pos} positions (2 accounts x {N_POSITIONS}), "
          f"{n_proc} processes, 160x48")
    print(f"  load   (worker, off the UI path)  {ms(load_s)}")
    print(f"  render (UI, new prices each time) {ms(render_s)}")
    print(f"  paint  (UI, the frame after that) {ms(paint_s)}")
    print(f"  tick   (UI, 1 s clock, no I/O)    {ms(tick_s)}")
    print(f"  key    (press -> handled, polling) {ms(key_s)}")
    print(f"  pos-key (positions panel, polling) {ms(pos_key_s)}")
    print(f"  idle-key (no polls)                {ms(idle_key_s)}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")


class Interrupted(Exception):
    """SIGALRM (--timeout) or SIGTERM: unwinds so that `finally` stops Postgres."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def with_postgres(label: str, timeout_s: int,
                  body: Callable[[RuntimeEnv], Coroutine[Any, Any, None]]) -> None:
    """Run `body` against a throwaway migrated embedded Postgres (fsync off) and a fresh
    OPS_HOME on the demo config; Postgres is stopped however the run ends (error,
    `timeout_s`, SIGTERM, Ctrl-C). `label` names the benchmark in the interruption."""
    # Exceptions, not exit: faulthandler's exit and the default SIGTERM skip `finally`
    # and left the embedded Postgres running.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGALRM, _interrupt)
    signal.alarm(timeout_s)
    faulthandler.dump_traceback_later(max(1, timeout_s - 5))  # where it hung
    base = Path(tempfile.mkdtemp(prefix="ops-bench-", dir="/tmp"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "pg", options=("-c", "fsync=off"))
    try:
        server.start()
        asyncio.run(migrate(server.url()))
        (base / "home").mkdir()
        env = RuntimeEnv(config_path=ROOT / "conf" / "ops.toml", home=base / "home",
                         database_url=server.url())
        asyncio.run(body(env))
    except Interrupted as exc:
        sys.exit(f"{label} interrupted ({exc}); Postgres stopped")
    finally:
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        # No SIGTERM/SIGALRM may cut the cleanup short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            server.stop(mode="immediate")
        finally:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--timeout", type=int, default=240, help="seconds before giving up")
    args = parser.parse_args()
    with_postgres("bench/dashboard.py", args.timeout, lambda env: run(args.loads, env))


if __name__ == "__main__":
    main()
