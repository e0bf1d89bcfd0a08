"""Logging setup for entry points, and masking of registered secret values.

`configure_logging` is called once by each entry point (a role's main, the CLI); library
modules only use `logging.getLogger(__name__)`. Output is one line per event — text
(`ts level process logger: message`) or JSON (`ts, level, process, logger, message, exc`)
— and every value passed to `register_secret` is replaced by its masked form wherever it
would appear: message, arguments, exception text, stack, extra fields.
"""

from __future__ import annotations

import json as _json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from ops.runtime.redaction import any_registered, mask_secrets

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class SecretMaskFilter(logging.Filter):
    """Masks registered secrets in a record: message and args (rendered once), exception
    text and stack. Attached to handlers, so records from every logger pass through it."""

    _exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not any_registered():
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the event
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = mask_secrets(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, mask_secrets(value))
        return True


def _timestamp(record: logging.LogRecord) -> str:
    ts = datetime.fromtimestamp(record.created, tz=UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    parts = [p for p in (record.exc_text, record.stack_info) if p]
    return "\n".join(parts)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class TextFormatter(logging.Formatter):
    """`ts LEVEL process logger: message key=value ... exc=...` on one line
    (newlines inside message or traceback are written as a literal backslash-n)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record)} {record.levelname} {self.process} {record.name}: "
            f"{record.getMessage()}"
        )
        for key, value in _extras(record).items():
            line += f" {key}={value}"
        if exc := _exception_text(self, record):
            line += f" exc={exc}"
        return mask_secrets(line).replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, process, logger, message, extras, exc."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "process": self.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc.setdefault(key, value)
        if exc := _exception_text(self, record):
            doc["exc"] = exc
        # Masking the serialised line also covers extras of any type (rendered by str()).
        return mask_secrets(_json.dumps(doc, default=str, ensure_ascii=False))


_HANDLER_MARK = "_ops_logs_handler"


def configure_logging(
    process: str,
    level: str | int = "INFO",
    json: bool = False,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Configure the root logger for an entry point: one handler, secret masking.

    Calling it again replaces the handler it installed before (handlers others installed,
    such as pytest's capture, are left alone). Returns the handler.
    """
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}")
        level = resolved
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(process) if json else TextFormatter(process))
    handler.addFilter(SecretMaskFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
