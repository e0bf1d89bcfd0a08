"""Errors of the storage layer that callers act on, and how a buffer failure is recognised.

- `StorageUnavailable`: the store cannot serve the call right now. Either Postgres is
  unreachable or unusable for a call that needs it (a direct read or write, a
  Postgres-only read: the driver's error is its `__cause__`, its message the driver's
  message), or a write could be stored nowhere (Postgres unreachable *and* the buffer
  unwritable). The one outage type callers outside ops/store catch: which driver errors
  are outages is decided in one place, `ops.store.postgres.is_outage`. Writers keep the
  write and retry it later (the stream keeps its batch, the ticker logs the run as
  failed) instead of treating it as one bad row.
- `BufferUnwritable`: the SQLite buffer cannot take a write (disk full, read-only file
  system, I/O error). Reading it usually still works.

Both derive from `StoreError`, and neither from OSError on purpose: `is_outage` treats
every OSError as "Postgres is unreachable", and a buffer failure must never be mistaken
for a reason to buffer.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

# Primary result codes (the low byte of an extended code) meaning "cannot write here now".
_SQLITE_UNWRITABLE = {
    8: "SQLITE_READONLY",
    10: "SQLITE_IOERR",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
}
_OS_UNWRITABLE = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EACCES,
                  errno.EPERM}


def is_unwritable(exc: BaseException) -> bool:
    """True when `exc` says the buffer's file system refuses writes (full, read-only, I/O)."""
    if isinstance(exc, BufferUnwritable):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return (code & 0xFF) in _SQLITE_UNWRITABLE
        text = str(exc).lower()
        return "disk is full" in text or "readonly" in text or "disk i/o" in text
    if isinstance(exc, OSError):
        return exc.errno in _OS_UNWRITABLE
    return False


class StoreError(Exception):
    """Base of the errors the storage layer raises itself."""


class BufferUnwritable(StoreError):
    """The buffer at `path` refused a write; `reason` is the underlying error, one line."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"outage buffer {path} is not writable: {reason}")
        self.path = path
        self.reason = reason

    @classmethod
    def wrap(cls, path: Path, exc: BaseException) -> BufferUnwritable:
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        return cls(path, f"{name}: {exc}")


class StorageUnavailable(StoreError):
    """Postgres is away for a call that needs it, or neither Postgres nor the outage buffer
    could take a write: nothing was read or stored. A driver error that meant the outage
    is the `__cause__`."""


__all__ = ["BufferUnwritable", "StorageUnavailable", "StoreError", "is_unwritable"]
