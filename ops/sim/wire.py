"""Wire encoding shared by the simulator modules: decimals, timestamps, ids, error bodies.

Alpaca sends money and quantities as decimal strings and timestamps as ISO-8601 with a
zone; alpaca-py's pydantic models reject numbers where they expect strings
(docs/broker-protocol.md section 1.6), so everything the simulator emits goes through these helpers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

SIM_NAMESPACE = uuid.UUID("5d1f7b8e-2c4a-4f0e-9b6d-0a1c2e3f4a5b")
CENT = Decimal("0.01")


def dec(value: Decimal) -> str:
    """A decimal as Alpaca writes it: plain notation, no exponent, no trailing zeros."""
    if value == 0:
        return "0"
    text = f"{value.normalize():f}"
    return text


def opt_dec(value: Decimal | None) -> str | None:
    return None if value is None else dec(value)


def iso_z(ts: datetime) -> str:
    """UTC timestamp with microseconds and a Z suffix."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def opt_iso(ts: datetime | None) -> str | None:
    return None if ts is None else iso_z(ts)


def stable_uuid(*parts: str) -> str:
    """A deterministic UUID for a name (asset ids, account ids)."""
    return str(uuid.uuid5(SIM_NAMESPACE, "/".join(parts)))


def parse_decimal(value: Any, name: str) -> Decimal:
    """A JSON number or numeric string as Decimal; ValueError naming the field otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"invalid {name}: {value!r}")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"invalid {name}: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"invalid {name}: {value!r}")
    return result


def parse_time(value: str, name: str) -> datetime:
    """An ISO-8601 timestamp or date from a query string; naive means UTC (as alpaca-py)."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid {name}: {value!r}") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts


def parse_bool(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes")


@dataclass
class ApiError(Exception):
    """An Alpaca-shaped error response: HTTP status plus JSON body `{code, message, ...}`."""

    status: int
    code: int | None
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.code is not None:
            out["code"] = self.code
        out["message"] = self.message
        out.update(self.extra)
        return out

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


def unprocessable(message: str, code: int = 40010001) -> ApiError:
    return ApiError(422, code, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, 40410000, message)


def forbidden(message: str, **extra: Any) -> ApiError:
    return ApiError(403, 40310000, message, dict(extra))


def unauthorized() -> ApiError:
    return ApiError(401, 40110000, "request is not authorized")
