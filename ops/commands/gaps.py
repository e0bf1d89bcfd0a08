"""`ops gaps [--since 24h] [--json]`: past last-run gaps, incidents and undelivered alerts.

A *gap* here is a stretch with no completed run longer than the process's `late_after`
bound (ops.core.gaps): between two consecutive runs in the ledger, or from the last run until
now (ongoing). Runs the market gate skipped (outcome idle-market-closed) are runs, so a
closed market is never a gap. The old system's 6 h 17 min of silence would be one line.

Past gaps need Postgres (the run ledger has no buffered copy); during an outage the
report says so, still lists the open incidents (from the buffer) and the alert outbox,
and exits 1. Exit 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ops.core.config import Config
from ops.core.gaps import late_after
from ops.runtime.env import RuntimeEnv
from ops.runtime.errors import describe_db_error

_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: No interval is shorter than 1 s, so no gap is shorter than late_after(1) = 11 s.
_MIN_GAP_S = late_after(1.0)

def parse_since(text: str) -> timedelta:
    """'90m', '24h', '7d', '30s' -> timedelta; ValueError naming the bad value."""
    m = _SINCE_RE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--since {text!r}: expected a positive number followed by "
                         "s, m, h or d (e.g. 90m, 24h, 7d)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def listing_problem(since: str | None, limit: int) -> str | None:
    """What is wrong with a listing's `--since` and `--limit` (ops incidents / signal
    list), or None."""
    if since is not None:
        try:
            parse_since(since)
        except ValueError as exc:
            return str(exc)
    if limit < 1:
        return f"--limit {limit}: must be at least 1"
    return None


@dataclass(frozen=True, slots=True)
class Gap:
    process: str
    account: str | None
    role: str
    start: datetime  # the last run before the gap finished
    end: datetime | None  # the next run began; None = ongoing
    gap_s: float
    expected_interval_s: float | None
    bound_s: float  # late_after(interval): longer than this is a gap


@dataclass(frozen=True, slots=True)
class PastIncident:
    id: str
    kind: str
    process: str | None
    account: str | None
    detail: str
    opened_at: datetime
    closed_at: datetime | None
    duration_s: float
    restarts: int


@dataclass(frozen=True, slots=True)
class AlertsSummary:
    pending: int
    sent: int
    dead: int
    oldest_pending_age_s: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class GapsReport:
    since: datetime
    as_of: datetime
    database_reachable: bool
    gaps: list[Gap] = field(default_factory=list)
    incidents: list[PastIncident] = field(default_factory=list)
    alerts: AlertsSummary | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list):
                return [conv(x) for x in v]
            if isinstance(v, datetime):
                return v.isoformat()
            if isinstance(v, float):
                return round(v, 3)
            return v

        out: dict[str, Any] = conv(dataclasses.asdict(self))
        return out


def _bound(config: Config, role: str, account: str | None) -> tuple[float | None, float]:
    """(the role's interval, the gap bound it gives): `Config.role_interval`, except that
    the report also judges the watchdog's passes (status leaves the watchdog unjudged)."""
    from ops.roles.watchdog import PASS_INTERVAL_S

    interval = PASS_INTERVAL_S if role == "watchdog" else config.role_interval(role, account)
    return interval, late_after(interval) if interval is not None else _MIN_GAP_S


async def collect_gaps(
    env: RuntimeEnv, config: Config, since: timedelta, *, now: datetime | None = None,
) -> GapsReport:
    from ops.notify.alerts import Outbox, default_path
    from ops.store import StorageUnavailable, Store, StoreSettings
    from ops.store.history import ledger_gaps
    from ops.store.incidents import incidents_since

    now = now or datetime.now(UTC)
    start = now - since
    alerts = None
    if default_path(env.home).exists():
        box = await Outbox.open(default_path(env.home))
        try:
            st = await box.status()
        finally:
            await box.close()
        alerts = AlertsSummary(st.pending, st.sent, st.dead, st.oldest_pending_age_s,
                               st.last_error)
    base = StoreSettings.from_config(config, env)
    # A one-shot reader: short timeouts, so an outage costs seconds, not minutes.
    settings = dataclasses.replace(base, connect_timeout_s=min(base.connect_timeout_s, 2.0),
                                   command_timeout_s=min(base.command_timeout_s, 10.0),
                                   close_grace_s=1.0, pool_max_size=2)
    async with await Store.open(env, process="ops-gaps", config=settings) as store:
        try:
            gap_rows, last_rows = await store.direct(ledger_gaps, start, _MIN_GAP_S)
            inc_rows = await store.direct(incidents_since, start)
        except StorageUnavailable as exc:
            snap = await store.open_incidents()
            incidents = [PastIncident(i.id, i.kind, i.process, i.account, i.detail, i.opened_at,
                                      None, (now - i.opened_at).total_seconds(), i.restarts)
                         for i in snap.rows]
            return GapsReport(start, now, False, [], incidents, alerts,
                              f"database unreachable ({describe_db_error(exc)}); past gaps need "
                              "Postgres; open incidents below are from the local buffer")
    gaps: list[Gap] = []
    for r in gap_rows:
        interval, bound = _bound(config, r.role, r.account)
        if r.gap_s > bound:
            gaps.append(Gap(r.process, r.account, r.role, r.prev, r.began, r.gap_s, interval,
                            bound))
    for last in last_rows:
        interval, bound = _bound(config, last.role, last.account)
        age = (now - last.finished_at).total_seconds()
        if age > bound:
            gaps.append(Gap(last.process, last.account, last.role, last.finished_at, None,
                            age, interval, bound))
    gaps.sort(key=lambda g: g.start)
    incidents = [
        PastIncident(i.id, i.kind, i.process, i.account, i.detail, i.opened_at, i.closed_at,
                     ((i.closed_at or now) - i.opened_at).total_seconds(), i.restarts)
        for i in inc_rows
    ]
    return GapsReport(start, now, True, gaps, incidents, alerts)


def _dur(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def _ts(t: datetime | None) -> str:
    return "now" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_text(rep: GapsReport) -> str:
    lines = [f"gaps and incidents since {_ts(rep.since)} (as of {_ts(rep.as_of)})"]
    if rep.error:
        lines.append(f"! {rep.error}")
    lines.append("")
    if rep.database_reachable:
        if rep.gaps:
            lines.append(f"gaps ({len(rep.gaps)}):")
            for g in rep.gaps:
                ongoing = "  ONGOING" if g.end is None else ""
                every = f"every {g.expected_interval_s:g}s" if g.expected_interval_s else "-"
                lines.append(f"  {g.process:<26} {_ts(g.start)} -> {_ts(g.end):<21} "
                             f"{_dur(g.gap_s):>10}  ({every}, late after "
                             f"{g.bound_s:g}s){ongoing}")
        else:
            lines.append("gaps: none")
        lines.append("")
    if rep.incidents:
        lines.append(f"incidents ({len(rep.incidents)}):")
        for i in rep.incidents:
            state = "OPEN" if i.closed_at is None else "closed"
            lines.append(f"  {i.kind:<12} {i.process or i.account or '-':<26} "
                         f"{_ts(i.opened_at)}  {_dur(i.duration_s):>10} {state:<6} "
                         f"restarts {i.restarts}  {i.detail[:80]}")
    else:
        lines.append("incidents: none")
    if rep.alerts is not None:
        a = rep.alerts
        lines.append("")
        line = f"alerts: {a.sent} sent, {a.pending} pending, {a.dead} given up"
        if a.last_error and (a.pending or a.dead):
            line += f"; last error: {a.last_error[:120]}"
        lines.append(line)
    return "\n".join(lines)


def cli_gaps(args: argparse.Namespace) -> int:
    from ops.commands.status import load_env_config
    from ops.runtime.logs import configure_logging

    try:
        since = parse_since(args.since)
    except ValueError as exc:
        print(f"ops gaps: {exc}", file=sys.stderr)
        return 2
    loaded = load_env_config()
    if isinstance(loaded, str):
        from ops.runtime.env import EXIT_CONFIG

        print(loaded, file=sys.stderr)
        return EXIT_CONFIG
    env, config = loaded
    configure_logging("ops-gaps", level="ERROR")  # the report says when Postgres is away
    report = asyncio.run(collect_gaps(env, config, since))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render_text(report))
    return 0 if report.database_reachable else 1
