"""The simulator's market clock: always open, real NYSE regular hours, or forced closed.

Sessions are Mon-Fri 09:30-16:00 America/New_York (holidays are not modelled). The mode
can be switched at runtime (fault/admin API), and `freeze()` pins "now" for tests of the
NYSE schedule. Nothing here knows about orders; the engine asks `is_open()`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")
SESSION_OPEN = time(9, 30)
SESSION_CLOSE = time(16, 0)
ClockMode = Literal["open", "nyse", "closed"]
CLOCK_MODES: tuple[ClockMode, ...] = ("open", "nyse", "closed")


def check_mode(mode: str) -> ClockMode:
    for m in CLOCK_MODES:
        if m == mode:
            return m
    raise ValueError(f"clock mode must be one of {', '.join(CLOCK_MODES)}, got {mode!r}")


def is_session_day(day: date) -> bool:
    return day.weekday() < 5


def session_bounds(day: date) -> tuple[datetime, datetime]:
    """Open and close of the regular session on `day`, as aware Eastern datetimes."""
    return (
        datetime.combine(day, SESSION_OPEN, tzinfo=EASTERN),
        datetime.combine(day, SESSION_CLOSE, tzinfo=EASTERN),
    )


def in_nyse_session(ts: datetime) -> bool:
    local = ts.astimezone(EASTERN)
    if not is_session_day(local.date()):
        return False
    start, end = session_bounds(local.date())
    return start <= local < end


class SimClock:
    """Wall clock plus market-hours policy."""

    def __init__(self, mode: str = "open") -> None:
        self.mode: ClockMode = check_mode(mode)
        self._frozen: datetime | None = None

    def set_mode(self, mode: str) -> None:
        self.mode = check_mode(mode)

    def freeze(self, at: datetime) -> None:
        """Pin `now()` (tests of the NYSE schedule); `at` must be timezone-aware."""
        if at.tzinfo is None:
            raise ValueError("freeze() needs an aware datetime")
        self._frozen = at

    def unfreeze(self) -> None:
        self._frozen = None

    def now(self) -> datetime:
        return self._frozen if self._frozen is not None else datetime.now(UTC)

    def is_open(self, at: datetime | None = None) -> bool:
        if self.mode == "open":
            return True
        if self.mode == "closed":
            return False
        return in_nyse_session(at or self.now())

    def next_open(self, at: datetime | None = None) -> datetime:
        """The next regular-session open strictly after `at` (Eastern)."""
        local = (at or self.now()).astimezone(EASTERN)
        day = local.date()
        while True:
            if is_session_day(day):
                start, _ = session_bounds(day)
                if start > local:
                    return start
            day += timedelta(days=1)

    def next_close(self, at: datetime | None = None) -> datetime:
        """The next regular-session close strictly after `at` (Eastern)."""
        local = (at or self.now()).astimezone(EASTERN)
        day = local.date()
        while True:
            if is_session_day(day):
                _, end = session_bounds(day)
                if end > local:
                    return end
            day += timedelta(days=1)

    def today(self) -> date:
        return self.now().astimezone(EASTERN).date()

    def clock_json(self) -> dict[str, object]:
        now = self.now()
        return {
            "timestamp": now.astimezone(EASTERN).isoformat(),
            "is_open": self.is_open(now),
            "next_open": self.next_open(now).isoformat(),
            "next_close": self.next_close(now).isoformat(),
        }

    def calendar_json(self, start: date, end: date) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        day = start
        while day <= end and len(out) < 5000:
            if is_session_day(day):
                out.append(
                    {
                        "date": day.isoformat(),
                        "open": SESSION_OPEN.strftime("%H:%M"),
                        "close": SESSION_CLOSE.strftime("%H:%M"),
                        "session_open": "0400",
                        "session_close": "2000",
                        "settlement_date": (day + timedelta(days=1)).isoformat(),
                    }
                )
            day += timedelta(days=1)
        return out
