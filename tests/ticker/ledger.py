"""In-memory test doubles of OUR protocols (`RunLedger`, `HeartbeatSink`).

They stand in for the store, which is a separate component with its own tests; they keep
what the ticker wrote so tests can assert on it, and can be told to fail.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ops.core.models import Heartbeat, RunRecord

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MemoryLedger:
    def __init__(self) -> None:
        self.writes: list[RunRecord] = []
        self.by_slot: dict[str, RunRecord] = {}
        self.fail_next = 0  # raise on this many upcoming writes

    async def record_run(self, rec: RunRecord) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("ledger unreachable")
        self.writes.append(rec)
        self.by_slot[rec.slot_id] = rec

    def finals(self) -> list[RunRecord]:
        """Final records (not "running"), in slot order."""
        done = [r for r in self.by_slot.values() if r.outcome != "running"]
        return sorted(done, key=lambda r: r.slot_time)


class MemorySink:
    def __init__(self) -> None:
        self.beats: list[Heartbeat] = []
        self.fail_next = 0

    async def heartbeat(self, hb: Heartbeat) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("sink unreachable")
        self.beats.append(hb)


def slot_us(t: datetime) -> int:
    """Microseconds since the epoch (exact integer)."""
    return (t - EPOCH) // timedelta(microseconds=1)
