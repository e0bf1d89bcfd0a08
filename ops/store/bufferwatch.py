"""`BufferWatch`: the "buffer-unwritable" incident, from a periodic write probe of the buffer.

With Postgres up, a full or read-only disk under the outage buffer changes nothing visible:
writes go to Postgres. But the safety net is gone, and the next Postgres outage would find
writes stored nowhere. So one process per host (the watchdog, every pass) calls `check()`:
at most every `interval_s` it runs `Store.probe_buffer()` (free room + a durable SQLite
write), opens the incident (dedupe key `buffer-unwritable:<host>`) when the probe fails
and closes it when the probe passes again. A previous watchdog's open incident is found
and closed on the first good probe.

The incident goes through the Store like any other, so `ops status`, the dashboard and the
watchdog's alerting of role incidents show it. When it cannot be stored (Postgres down too)
`check()` says so in the change it returns, and the caller alerts directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ops.store.store import Store

log = logging.getLogger(__name__)

KIND = "buffer-unwritable"


@dataclass(frozen=True, slots=True)
class BufferChange:
    """The incident opened or closed; `stored` False: only the log (and the caller) know."""

    event: Literal["opened", "closed"]
    detail: str
    stored: bool


class BufferWatch:
    def __init__(self, store: Store, *, host: str, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.key = f"{KIND}:{host}"
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self.problem: str | None = None  # the last probe's finding; None = writable
        self.open: bool | None = None  # None until the first probe: unknown
        self._stored = False

    async def check(self) -> BufferChange | None:
        """Probe if due; the incident's change, if any."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_s:
            return None
        self._last = now
        self.problem = await self.store.probe_buffer()
        if self.problem is not None:
            detail = (f"{self.problem}. Writes go to Postgres while it is up, but a Postgres "
                      "outage now would find them stored nowhere (writers retry, nothing is "
                      "acknowledged). Free space on, or repair, the buffer's file system.")
            if self.open:
                if not self._stored:  # Postgres was away when it opened: record it now
                    self._stored = await self._record_open(detail)
                return None
            log.error("INCIDENT OPEN %s on %s: %s", KIND, self.key, detail)
            self.open = True
            self._stored = await self._record_open(detail)
            return BufferChange("opened", detail, self._stored)
        if self.open is None:
            # First probe: a previous watchdog may have left the incident open.
            snap = await self.store.open_incidents()
            self.open = any(i.dedupe_key == self.key for i in snap.rows)
            self._stored = self.open
        if not self.open:
            return None
        detail = f"outage buffer {self.store.buffer.path} is writable again"
        stored = True
        if self._stored:
            try:
                await self.store.close_incident(dedupe_key=self.key, reason=detail)
            except Exception as exc:
                log.error("%s: cannot record the close yet (%s: %s); retrying", self.key,
                          type(exc).__name__, exc)
                return None
        else:
            stored = False
        log.warning("INCIDENT CLOSED %s on %s: %s", KIND, self.key, detail)
        self.open, self._stored = False, False
        return BufferChange("closed", detail, stored)

    async def _record_open(self, detail: str) -> bool:
        try:
            await self.store.open_incident(KIND, detail=detail, dedupe_key=self.key)
        except Exception as exc:
            log.error("%s: the incident cannot be stored either (%s: %s): only this log and "
                      "the alert outbox carry it", self.key, type(exc).__name__, exc)
            return False
        return True


__all__ = ["KIND", "BufferChange", "BufferWatch"]
