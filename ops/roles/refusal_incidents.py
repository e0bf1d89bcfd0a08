"""Incidents for orders the broker refused: one per (kind, account, symbol), kept current.

What lives here: `RefusalIncidents`, used by the position manager (kind `exit-refused`)
and the dispatcher (`flatten-refused`, and `exit-refused` for exit signals). `refused()`
reports the refusal: the first opens the incident (the watchdog alerts on it like on any
role's incident), a repeat is the same incident seen again (the store moves its
`last_seen_at` and adds the process to `seen_by`), and its text is refreshed at once when
the cause changed, else at most every `update_every_s`, with the count of refusals.
`accepted()` closes it when a later order for the symbol is accepted; `sync()` reads which
ones are open (other processes, earlier lives of this one); `close()` closes one with its
reason (the incident's `close_reason`).
What does not: the words (ops.core.refusals), deciding when a condition has cleared (the roles).

Writes go through the Store (buffered during a Postgres outage); the text refresh is a
plain UPDATE that needs Postgres (skipped while it is away: the log has the text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ops.core import refusals
from ops.store import StorageUnavailable, Store
from ops.store.incidents import is_open, set_detail

log = logging.getLogger(__name__)

SQL_TIMEOUT_S = 5.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Open:
    detail: str  # the latest sentence (without the repeat count)
    first_at: datetime
    count: int = 1
    written: float = 0.0  # time.monotonic() of the last text written


class RefusalIncidents:
    """One account's open refusal incidents of one kind, as this process knows them."""

    def __init__(self, store: Store, *, kind: str, account: str, process: str,
                 update_every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.kind = kind
        self.account = account
        self.process = process
        self.update_every_s = update_every_s
        self._clock = clock
        self._open: dict[str, _Open] = {}
        self.opened = 0  # incidents opened by this process
        self.repeats = 0  # refusals of a symbol whose incident was open already
        self.closed = 0

    def key(self, symbol: str) -> str:
        return refusals.dedupe_key(self.kind, self.account, symbol)

    @property
    def open_symbols(self) -> set[str]:
        return set(self._open)

    async def refused(self, symbol: str, detail: str, at: datetime | None = None) -> bool:
        """Record a refusal; True when it opened the incident (first sight here)."""
        at = at or _utcnow()
        seen = self._open.get(symbol)
        # Opens it, or (open already, whoever opened it) records that it was seen again.
        await self.store.open_incident(self.kind, detail=detail[:2000], process=self.process,
                                       account=self.account, dedupe_key=self.key(symbol),
                                       at=at)
        if seen is None:
            log.error("account %s: %s", self.account, detail)
            # Open already (another process, or this one before a restart): the insert
            # kept the old text, so bring it up to date.
            await self._set_detail(symbol, detail)
            self._open[symbol] = _Open(detail, at, written=self._clock())
            self.opened += 1
            return True
        seen.count += 1
        self.repeats += 1
        changed = detail != seen.detail
        (log.error if changed else log.info)("account %s: %s (refusal %d)", self.account,
                                              detail, seen.count)
        if changed or self._clock() - seen.written >= self.update_every_s:
            seen.detail = detail
            seen.written = self._clock()
            await self._set_detail(symbol, f"{detail} [refused {seen.count} times since "
                                           f"{seen.first_at.isoformat(timespec='seconds')}, "
                                           f"last at {at.isoformat(timespec='seconds')}]")
        return False

    async def accepted(self, symbol: str, why: str, at: datetime | None = None) -> None:
        """A later order for `symbol` was accepted: the refusal's incident closes."""
        await self.close(symbol, why, at)

    async def close(self, symbol: str, why: str, at: datetime | None = None) -> bool:
        """Close the incident of `symbol` with a reason; False if none was open."""
        at = at or _utcnow()
        known = self._open.pop(symbol, None) is not None
        if not known and not await self._is_open(symbol):
            return False  # nothing open: no write, no log line
        log.warning("account %s: %s incident for %s closed: %s", self.account, self.kind,
                    symbol, why)
        await self.store.close_incident(dedupe_key=self.key(symbol), at=at, reason=why,
                                        by=self.process)
        self.closed += 1
        return True

    async def _is_open(self, symbol: str) -> bool:
        """Whether Postgres has it open (another process's, or a previous life's); False
        while Postgres is away (this process only closes what it knows of then)."""
        if not self.store.database_reachable:
            return False
        try:
            return await self.store.direct(is_open, self.key(symbol), timeout_s=SQL_TIMEOUT_S)
        except StorageUnavailable:
            return False

    async def close_all_but(self, keep: Iterable[str], why: Callable[[str], str],
                            at: datetime | None = None) -> int:
        """Close every known open incident whose symbol is not in `keep`."""
        kept = set(keep)
        n = 0
        for symbol in sorted(self.open_symbols - kept):
            n += await self.close(symbol, why(symbol), at)
        return n

    async def sync(self) -> set[str]:
        """Learn the open incidents of this kind and account from the store (Postgres, or
        the buffer's copy during an outage); returns their symbols."""
        snap = await self.store.open_incidents()
        found: dict[str, str] = {}
        for inc in snap.rows:
            symbol = refusals.symbol_of_key(self.kind, self.account, inc.dedupe_key)
            if inc.kind == self.kind and symbol is not None:
                found[symbol] = inc.detail
        for symbol, detail in found.items():
            if symbol not in self._open:
                self._open[symbol] = _Open(detail, _utcnow(), written=self._clock())
        if snap.source == "postgres":  # closed elsewhere (an operator, another process)
            for symbol in set(self._open) - set(found):
                del self._open[symbol]
        return set(self._open)

    async def _set_detail(self, symbol: str, text: str) -> None:
        if not self.store.database_reachable:
            return
        try:
            await self.store.direct(set_detail, self.key(symbol), text[:2000],
                                    timeout_s=SQL_TIMEOUT_S)
        except StorageUnavailable:
            pass
