"""Persistence: Postgres first, a SQLite outage buffer when Postgres is away.

- `store.py`     `Store`: the one write API (Postgres or buffer, drained in order) + reads;
                 its parts: `core.py` (settings, shared state), `replay.py` (the drainer),
                 `reads.py` (Postgres, the buffer, or both merged), `codec.py` (payloads
                 <-> read models)
- `ops.py`       typed, idempotent write operations (kind + JSON payload + batch apply)
- `buffer.py`    the host-wide SQLite buffer (pending writes, latest state, dead rows)
- `postgres.py`  asyncpg pools/connections, JSON codecs, `is_outage` (which errors are
                 outages: the one classification)
- `errors.py`    `StorageUnavailable` (Postgres away, or a write stored nowhere: the one
                 error callers outside ops/store catch for an outage), `BufferUnwritable`
- query modules  signals.py, positions.py, fills.py, incidents.py, ownership.py,
                 activities.py, status.py, history.py, signal_records.py: the SQL of what
                 has no buffered copy, run through `Store.direct()` from outside ops/store
- `embedded.py`  the embedded PostgreSQL under $OPS_HOME/pg (pgserver's or the system's binaries)
- `migrate.py`   versioned migrations (`migrations/NNNN_*.sql`) and `ops db migrate`
"""

from __future__ import annotations

from ops.store.buffer import BufferStatus
from ops.store.errors import StorageUnavailable
from ops.store.ops import Op
from ops.store.store import (
    AccountState,
    Control,
    Incident,
    Snapshot,
    Store,
    StoredPosition,
    StoreSettings,
    order_op,
    trade_update_op,
)

__all__ = [
    "AccountState",
    "BufferStatus",
    "Control",
    "Incident",
    "Op",
    "Snapshot",
    "StorageUnavailable",
    "Store",
    "StoreSettings",
    "StoredPosition",
    "order_op",
    "trade_update_op",
]
