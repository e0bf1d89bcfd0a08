"""The back-off schedule every retry follows: exponential with equal jitter (each delay
in [cap/2, cap]), bounded by attempts and an overall deadline. Pure; the retry loop
that sleeps is ops/runtime/retry.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry bounds. `max_attempts` counts the first try; 0 means unbounded (deadline only)."""

    initial_s: float = 0.2
    max_s: float = 5.0
    multiplier: float = 2.0
    max_attempts: int = 5
    deadline_s: float | None = 30.0
    jitter: bool = True

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The sleep before each retry (attempt 2, 3, ...); infinite, callers bound it."""
        r = rng or random
        cap = self.initial_s
        while True:
            yield r.uniform(cap / 2, cap) if self.jitter else cap
            cap = min(self.max_s, cap * self.multiplier)
