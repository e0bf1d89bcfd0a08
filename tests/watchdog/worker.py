"""A stand-in role for the watchdog tests: the real Ticker, HeartbeatTask, Store and Daemon,
no broker. Run by supervisord as `python -m tests.watchdog.worker --process NAME ...`.

Modes: `normal` (a quick job every interval), `closed` (the market gate says closed: runs
are recorded as idle-market-closed), `crash` (exits 3 at once: never counts as started).
Any mode hangs its job forever, while the heartbeat goes on, once the file
`$OPS_HOME/hang-<process>` holds this process's pid ("alive but not trading").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from ops.runtime.daemon import Daemon
from ops.runtime.env import runtime_env
from ops.runtime.logs import configure_logging
from ops.runtime.ticker import HeartbeatTask, Slot, Ticker
from ops.store import Store


def _hang_requested(flag: Path) -> bool:
    try:
        return flag.read_text().strip() == str(os.getpid())
    except FileNotFoundError:
        return False


async def main(a: argparse.Namespace) -> int:
    if a.mode == "crash":
        print(f"{a.process}: crashing on start, on purpose", file=sys.stderr)
        return 3
    env = runtime_env()
    store = await Store.open(env, process=a.process)
    flag = env.home / f"hang-{a.process}"

    async def job(slot: Slot) -> None:
        if await asyncio.to_thread(_hang_requested, flag):
            print(f"{a.process}: job hangs now", file=sys.stderr)
            await asyncio.Event().wait()  # awaited forever

    async def closed() -> bool:
        return False

    ticker = Ticker(a.role, a.interval, job, process=a.process, account=a.account, role=a.role,
                    ledger=store, market_gate=closed if a.mode == "closed" else None)
    beat = HeartbeatTask(a.process, a.account, a.role, store, 1.0, ticker.counters)
    return await Daemon(a.process, [ticker, beat], shutdown=store.close).run()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--process", required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--mode", choices=("normal", "closed", "crash"), default="normal")
    args = p.parse_args()
    configure_logging(args.process)
    sys.exit(asyncio.run(main(args)))
