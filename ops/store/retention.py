"""Retention of the high-volume history tables, so that the database does not grow forever.

What is pruned: the run ledger (`runs`, one row per scheduled slot of every process: about
200k rows a day in the demo), `position_history` (every position at every sync) and
`account_history` (each account's summary, one row a minute: the dashboard's history), rows
older than `[database] history_retention_days`. What never is: orders, order_events,
signals, incidents, exits, controls — the audit trail of what was traded and why.

`Pruner.step()` is called by the watchdog after each of its passes. It deletes at most
`batch` expired rows per table per call (an indexed, short transaction: the watchdog's
pass must stay quick), calls again at once while rows remain, then rests `every_s`.
After a failure (an outage, or anything else: logged by the caller) it tries again a
minute later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.store.postgres import is_outage

if TYPE_CHECKING:
    from ops.store.store import Store

log = logging.getLogger(__name__)

#: table -> the statement deleting at most $2 of its rows older than $1 (indexed column).
_DELETE: dict[str, str] = {
    "runs": "WITH gone AS (DELETE FROM runs WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM runs WHERE slot_time < $1 LIMIT $2)) RETURNING 1) "
            "SELECT count(*) FROM gone",
    "position_history": "WITH gone AS (DELETE FROM position_history WHERE ctid = ANY(ARRAY("
                        "SELECT ctid FROM position_history WHERE synced_at < $1 LIMIT $2)) "
                        "RETURNING 1) SELECT count(*) FROM gone",
    "account_history": "WITH gone AS (DELETE FROM account_history WHERE ctid = ANY(ARRAY("
                       "SELECT ctid FROM account_history WHERE minute < $1 LIMIT $2)) "
                       "RETURNING 1) SELECT count(*) FROM gone",
}
_RETRY_AFTER_OUTAGE_S = 60.0


class Pruner:
    def __init__(self, pool: asyncpg.Pool, keep: timedelta, *, batch: int = 5000,
                 every_s: float = 3600.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if keep <= timedelta(0) or batch < 1 or every_s < 0:
            raise ValueError(f"bad retention settings: keep={keep}, batch={batch}, "
                             f"every_s={every_s}")
        self._pool = pool
        self.keep = keep
        self.batch = batch
        self.every_s = every_s
        self._monotonic = monotonic
        self._next = 0.0
        self.deleted: dict[str, int] = dict.fromkeys(_DELETE, 0)

    @classmethod
    def of(cls, store: Store, keep: timedelta) -> Pruner:
        """The pruner of `store`'s database (the watchdog's, the monitor's)."""
        return cls(store.pool, keep)

    async def step(self, now: datetime) -> int:
        """Delete up to `batch` expired rows per table (when due); the rows deleted."""
        if self._monotonic() < self._next:
            return 0
        cutoff = now - self.keep
        total, more = 0, False
        try:
            for table, sql in _DELETE.items():
                n = int(await self._pool.fetchval(sql, cutoff, self.batch))
                self.deleted[table] += n
                total += n
                more = more or n == self.batch
        except Exception as exc:
            # Outage or not, retry in a minute (a failing delete must not run every pass).
            self._next = self._monotonic() + _RETRY_AFTER_OUTAGE_S
            if not is_outage(exc):
                raise
            return total
        if not more:
            self._next = self._monotonic() + self.every_s
        if total:
            log.info("retention: deleted %d row(s) older than %s (%s)", total,
                     cutoff.isoformat(timespec="seconds"),
                     ", ".join(f"{t} {n}" for t, n in self.deleted.items()))
        return total
