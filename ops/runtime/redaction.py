"""Secret redaction: the one masked form of a secret, and the registry of secret
values masked wherever they would appear in a log line.

`ops.runtime.credentials` registers every key and secret it reads;
`ops.runtime.logs` masks every record through `mask_secrets`.
"""

from __future__ import annotations

import re
import threading


def mask(value: str) -> str:
    """A recognisable but useless form of a secret: first 2 chars and the length."""
    if len(value) <= 4:
        return "****"
    return f"{value[:2]}****({len(value)})"


#: Shorter values are not masked: replacing every "ab" in every log line would garble the
#: logs and real API keys are 20+ characters anyway.
MIN_SECRET_LENGTH = 6

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Mask `value` in every log line from now on (idempotent, thread-safe)."""
    global _secrets, _pattern
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets = _secrets | {value}
        # Longest first, so a secret containing another is masked as a whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def any_registered() -> bool:
    """Whether any secret is registered (nothing to mask otherwise)."""
    return _pattern is not None


def mask_secrets(text: str) -> str:
    """`text` with every registered secret replaced by `mask(secret)`."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(lambda m: mask(m.group(0)), text)
