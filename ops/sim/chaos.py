"""Persistent stream chaos: trade updates duplicated and reordered at random, per account.

Unlike the one-shot knobs of `EventFaults` (drop/duplicate/reorder the next n events),
this mode stays on until turned off and decides per event with a seeded RNG, so a long
run sees the duplicates and reorderings of docs/broker-protocol.md section 6 (items 1 and 4)
mixed into ordinary traffic, reproducibly.

Rules, per account:
- duplicate (probability p_dup): the event goes out, and the same frame goes out again
  after at least one other frame of that account, or after `HOLD_S` if none comes.
- reorder (probability p_reorder): the event is held back and goes out after the next
  frame of that account, or after `HOLD_S` if none comes (nothing is held forever).
Reproducibility: one `random.Random(seed)` per configuration; every routed event takes
two draws from it, in this order: `random() < p_dup`, then `random() < p_reorder`.
A held frame belongs to the connection it was published to: if that connection is gone
when the frame is due, the frame is lost, as every event is that finds nobody listening.

What does not live here: the sockets and the mute buffer (`StreamHub`), the admin
surface (`FaultController.set_stream_chaos`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HOLD_S = 0.5
"""The longest a reordered event or a duplicate's copy waits for a next frame."""

# (account name, the connection the frame was published to, frames) -> None
Send = Callable[[str, object, list[bytes]], None]


@dataclass
class _Held:
    payload: bytes
    conn: object
    release_after: int  # goes out once the account's sent-frame count reaches this
    deadline: float  # loop time when it goes out anyway
    copy: bool  # duplicate: once sent, schedule the copy


@dataclass
class _Account:
    sent: int = 0
    held: list[_Held] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class StreamChaos:
    """Per-account duplicate/reorder probabilities and the frames held back because of them."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.settings: dict[str, tuple[float, float]] = {}  # account or "*" -> (dup, reorder)
        self.seed: int | None = None
        self._rng = random.Random(0)
        self._accounts: dict[str, _Account] = {}
        self.duplicated = 0
        self.reordered = 0

    # -- configuration ---------------------------------------------------------------------
    def configure(self, duplicate: float, reorder: float, account: str | None,
                  seed: int | None) -> int:
        """Set the mode for `account` (None = every account); 0/0 turns it off. Returns the
        seed in use (drawn at random when None, and reported, so a run can be replayed)."""
        duplicate, reorder = float(duplicate), float(reorder)
        for value, name in ((duplicate, "duplicate"), (reorder, "reorder")):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        self.seed = int(seed)
        self._rng = random.Random(self.seed)
        key = account or "*"
        if account is None:
            self.settings.clear()  # one setting for every account replaces per-account ones
        if duplicate or reorder:
            self.settings[key] = (duplicate, reorder)
            return self.seed
        if account is not None and "*" in self.settings:
            self.settings[key] = (0.0, 0.0)  # off here, still on for the others
        else:
            self.settings.pop(key, None)
        self.flush(account)  # what is held goes out now: off means off
        return self.seed

    def active_for(self, name: str) -> tuple[float, float] | None:
        """The (duplicate, reorder) probabilities for `name`, None when the mode is off."""
        probs = self.settings.get(name, self.settings.get("*"))
        return probs if probs is not None and any(probs) else None

    # -- routing ---------------------------------------------------------------------------
    def route(self, name: str, conn: object, payload: bytes) -> None:
        """Send (or hold) one trade update of account `name` under the current settings."""
        dup_p, reorder_p = self.active_for(name) or (0.0, 0.0)
        # Both draws always happen, so one seed gives one sequence whatever the outcomes.
        dup = self._rng.random() < dup_p
        hold = self._rng.random() < reorder_p
        acct = self._accounts.setdefault(name, _Account())
        if hold:
            self.reordered += 1
            acct.held.append(_Held(payload, conn, acct.sent + 1, self._deadline(), dup))
            self._arm(name, acct)
            return
        self._out(name, acct, [(payload, conn, dup)])

    def _out(self, name: str, acct: _Account, queue: list[tuple[bytes, object, bool]]) -> None:
        """Send frames in order; each one sent may make held frames due, which follow it."""
        while queue:
            payload, conn, dup = queue.pop(0)
            self._send(name, conn, [payload])
            acct.sent += 1
            if dup:
                self.duplicated += 1
                acct.held.append(_Held(payload, conn, acct.sent + 1, self._deadline(), False))
            due = [h for h in acct.held if h.release_after <= acct.sent]
            if due:
                acct.held = [h for h in acct.held if h.release_after > acct.sent]
                queue.extend((h.payload, h.conn, h.copy) for h in due)
        self._arm(name, acct)

    @staticmethod
    def _deadline() -> float:
        return asyncio.get_running_loop().time() + HOLD_S

    def _arm(self, name: str, acct: _Account) -> None:
        if acct.timer is not None:
            acct.timer.cancel()
            acct.timer = None
        if acct.held:
            loop = asyncio.get_running_loop()
            first = min(h.deadline for h in acct.held)
            acct.timer = loop.call_at(first, self._expire, name)

    def _expire(self, name: str) -> None:
        acct = self._accounts.get(name)
        if acct is None:
            return
        acct.timer = None
        now = asyncio.get_running_loop().time()
        due = [h for h in acct.held if h.deadline <= now]
        acct.held = [h for h in acct.held if h.deadline > now]
        self._out(name, acct, [(h.payload, h.conn, h.copy) for h in due])

    def flush(self, name: str | None = None) -> int:
        """Send everything held (for one account, or all) now, in hold order, without new
        copies. Returns the number of frames sent."""
        names = list(self._accounts) if name is None else [name]
        n = 0
        for acct_name in names:
            acct = self._accounts.get(acct_name)
            if acct is None:
                continue
            if acct.timer is not None:
                acct.timer.cancel()
                acct.timer = None
            held, acct.held = acct.held, []
            for h in held:
                self._send(acct_name, h.conn, [h.payload])
                acct.sent += 1
                n += 1
        return n

    def off(self) -> None:
        """Turn the mode off for every account; what is held goes out now."""
        self.settings.clear()
        self.flush()

    def close(self) -> None:
        """Turn the mode off and forget what is held (server shutdown)."""
        for acct in self._accounts.values():
            if acct.timer is not None:
                acct.timer.cancel()
        self._accounts.clear()
        self.settings.clear()

    def state(self) -> dict[str, Any]:
        return {
            "settings": {k: {"duplicate": d, "reorder": r} for k, (d, r) in self.settings.items()},
            "seed": self.seed,
            "held": {k: len(a.held) for k, a in self._accounts.items() if a.held},
            "duplicated": self.duplicated,
            "reordered": self.reordered,
        }
