"""A real role-like process for the daemon lifecycle tests: one Daemon, a Ticker, heartbeats.

Usage: python daemon_proc.py LEDGER_PATH MODE GRACE_S
MODE: "finish" (each scheduled job takes 0.8 s), "hang" (the job never returns),
"idle" (hourly interval; only SIGUSR1 "run now" makes it run). Run records and heartbeats
go as JSON lines to LEDGER_PATH so the test can watch from outside the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from ops.core.models import Heartbeat, RunRecord
from ops.runtime.daemon import Daemon
from ops.runtime.ticker import HeartbeatTask, Slot, Ticker


class FileLedger:
    def __init__(self, path: str) -> None:
        self.path = path

    def _append(self, obj: dict[str, object]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")

    async def record_run(self, rec: RunRecord) -> None:
        self._append({"kind": "run", "slot_id": rec.slot_id, "outcome": rec.outcome,
                      "error": rec.error})

    async def heartbeat(self, hb: Heartbeat) -> None:
        self._append({"kind": "heartbeat", "pid": hb.pid})


async def main(path: str, mode: str, grace_s: float) -> int:
    ledger = FileLedger(path)

    async def job(slot: Slot) -> None:
        if slot.manual:
            return
        if mode == "hang":
            await asyncio.Event().wait()
        await asyncio.sleep(0.8)

    interval = 3600.0 if mode == "idle" else 0.1
    ticker = Ticker("job", interval, job, process="proc", account="acct", role="unit",
                    ledger=ledger)
    beat = HeartbeatTask("proc", "acct", "unit", ledger, 0.2, ticker.counters)
    daemon = Daemon("proc", [ticker, beat], grace_s=grace_s)
    daemon.on_run_now(ticker.trigger)
    return await daemon.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
