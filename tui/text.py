"""`ops dash --once`: the dashboard's state as plain text (no terminal, no textual).

Also home of the banner's words (`verdict`, `summary_line`, `alarm_lines`), so the text
snapshot and the live banner say exactly the same thing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ops.commands.status import DEGRADING, Overall
from tui import format as f
from tui.data import DashboardState, ProcessRow, describe_symbol

_ORDER = ("ok", "idle", "paused", "starting", "late", "stalled", "failing", "down")


@dataclass(frozen=True, slots=True)
class StaleInfo:
    since: datetime
    error: str


def verdict(state: DashboardState, now: datetime,
            stale: StaleInfo | None = None) -> tuple[Overall, list[str]]:
    """HEALTHY / DEGRADED / DOWN and why, by `ops status`'s rules (ops.commands.status._overall) on
    what the dashboard sees: down when supervisord is unreachable (its layout) or no
    process runs; degraded by any process in a degrading status, a paused dispatch, the
    database unreachable or its reads failing, a refresh failing, an unacknowledged
    incident. An operator's kill switch is not a fault: it is said, not judged."""
    procs = state.processes
    if state.layout == "supervisord" and not state.supervisor.reachable:
        return "down", ["supervisord is not running"
                        + (f" ({state.supervisor.error})" if state.supervisor.error else "")]
    statuses = {p.name: p.status_at(now) for p in procs}
    if procs and all(s == "down" for s in statuses.values()):
        return "down", ["no process is running" if state.layout == "supervisord"
                        else "no process has a heartbeat"]
    reasons = [f"{name} {status}" for name, status in statuses.items() if status in DEGRADING]
    reasons += [p.dispatch_paused for p in procs if p.dispatch_paused]
    if not state.database.reachable:
        reasons.append("Postgres unreachable")
    if stale is not None:
        reasons.append("refresh failing")
    reasons += [f"incident {i.kind} on {i.where}" for i in state.incidents if i.alarming]
    reasons += list(state.problems)
    return ("degraded" if reasons else "healthy"), reasons


def summary_line(state: DashboardState, now: datetime, account: str | None) -> str:
    statuses = Counter(f.STATUS_WORD[p.status_at(now)] for p in state.processes)
    loud = ("late", "stalled", "failing", "down")
    procs = " · ".join(f"{n} {word.upper() if word in loud else word}"
                       for word, n in sorted(statuses.items(),
                                             key=lambda kv: _ORDER.index(kv[0])))
    last_fill = next((r for r in state.feed if r.kind == "fill"), None)
    fill = "no fills yet" if last_fill is None else \
        f"last fill {f.age(f.since(now, last_fill.ts))} ago"
    incidents = incidents_words(state)
    where = f"account {account} │ " if account else ""
    n = len(state.positions)
    return (f"{now:%H:%M:%S}Z │ {where}{procs or 'no processes'} │ "
            f"{n} position{'' if n == 1 else 's'} │ {incidents} │ {fill}")


def incidents_words(state: DashboardState) -> str:
    """The banner's incident count: only unacknowledged ones shout ("2 OPEN INCIDENTS,
    1 acked"); acknowledged ones are said quietly ("1 open incident, acked")."""
    n_open = sum(1 for i in state.incidents if i.alarming)
    n_acked = sum(1 for i in state.incidents if i.is_open and i.acked)
    if n_open:
        return (f"{n_open} OPEN INCIDENT{'S' if n_open > 1 else ''}"
                + (f", {n_acked} acked" if n_acked else ""))
    if n_acked:
        return f"{n_acked} open incident{'s' if n_acked > 1 else ''}, " + \
            ("acked" if n_acked == 1 else "all acked")
    return "no incidents"


def alarm_lines(state: DashboardState, now: datetime, stale: StaleInfo | None) -> list[str]:
    lines = []
    db = state.database
    if not db.reachable:
        since = db.unreachable_since
        when = "" if since is None else \
            f" since {since:%H:%M:%S}Z ({f.age(f.since(now, since))})"
        as_of = "" if db.as_of is None else f" as of {db.as_of:%H:%M:%S}Z"
        lines.append(f"⚠ POSTGRES UNREACHABLE{when}: buffered data{as_of}, "
                     f"{db.buffered_rows} rows waiting")
    elif db.buffered_rows:
        lines.append(f"… replaying {db.buffered_rows} buffered rows into Postgres")
    if not state.supervisor.reachable and state.layout == "supervisord":
        lines.append("⚠ SUPERVISORD NOT REACHABLE: process states unknown, no control")
    if stale is not None:
        lines.append(f"⚠ STALE: refresh failing for {f.age(f.since(now, stale.since))}: "
                     f"{stale.error}")
    lines += [f"✗ {p.name} FAILING: {p.failure}" for p in state.processes
              if p.failure is not None and p.status_at(now) == "failing"]
    lines += [f"⏸ {p.dispatch_paused}" for p in state.processes if p.dispatch_paused]
    for p in state.processes:
        st = p.stream
        if st is not None and st["state"] != "connected" and (st["for_s"] or 0) >= 5:
            why = f": {st['refusal']}" if st["refusal"] else ""
            lines.append(f"⚠ {p.name}: trade stream {st['state'].upper()} for "
                         f"{f.age(st['for_s'])}{why}")
    lines += _process_lines(state, now)
    lines += _kill_switch_lines(state)
    lines += [f"● INCIDENT {i.kind} on {i.where} ({f.age(f.since(now, i.opened_at))}): "
              f"{i.detail}" for i in state.incidents if i.alarming]
    lines += [f"! {p}" for p in state.problems]
    return lines


_PROCESS_SYMBOL = {"down": "✗", "stalled": "✗", "late": "▲", "starting": "…"}


def _process_lines(state: DashboardState, now: datetime) -> list[str]:
    """A line per process in a degrading status the lines above do not cover already
    (failing has its own; with supervisord unreachable the states are unknown, said
    once above). Three or more in one status share a line."""
    if state.layout == "supervisord" and not state.supervisor.reachable:
        return []
    by_status: dict[str, list[str]] = {}
    for p in state.processes:
        status = p.status_at(now)
        if status not in _PROCESS_SYMBOL:
            continue
        facts = {"down": p.state_at(now),
                 "stalled": _stalled(p, now),
                 "late": f"last run {f.age(p.last_run_age_s(now))} ago, gap "
                         f"{f.signed_age(p.gap_s(now))}",
                 "starting": "no heartbeat yet"}[status]
        by_status.setdefault(status, []).append(f"{p.name} {status.upper()}: {facts}")
    out = []
    for word, lines in by_status.items():
        if len(lines) >= 3:
            names = ", ".join(line.split(" ", 1)[0] for line in lines)
            out.append(f"{_PROCESS_SYMBOL[word]} {len(lines)} processes {word.upper()}: "
                       f"{names}")
        else:
            out += [f"{_PROCESS_SYMBOL[word]} {line}" for line in lines]
    return out


def _stalled(p: ProcessRow, now: datetime) -> str:
    beat = p.heartbeat_age_s(now)
    if beat is not None and beat > p.bounds.heartbeat_stale_s:
        return f"no heartbeat for {f.age(beat)}"
    return (f"no run for {f.age(p.last_run_age_s(now))} while its heartbeat is fresh "
            "(a hung job)")


_KILL_WORDS = {
    "halt": "⏸ {a} PAUSED (halt): no new entries, exits still run",
    "reduce-only": "⏸ {a} REDUCE-ONLY: only orders that reduce a position",
    "flatten": "⚑ {a} FLATTENING: closing the positions the pipeline manages",
    "flatten-all": "⚑ {a} FLATTENING EVERYTHING: closing every position, external too",
}


def _kill_switch_lines(state: DashboardState) -> list[str]:
    return [_KILL_WORDS.get(a.kill_switch, "⏸ {a} kill switch " + a.kill_switch).format(
        a=a.name) for a in state.accounts if a.kill_switch != "off"]


def processes_note(state: DashboardState) -> str:
    """What the processes panel's title adds outside the supervisord layout."""
    if state.layout == "supervisord":
        return ""
    return f" ({state.layout} layout, {state.layout_how}: states from heartbeats)"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    all_rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in all_rows]


def render_text(state: DashboardState, now: datetime, account: str | None = None,
                max_positions: int = 50) -> str:
    """One text snapshot of every panel (what `ops dash --once` prints)."""
    st = state.filtered(account)
    word, _ = verdict(st, now)
    out = [f"ops dash  {now:%Y-%m-%d %H:%M:%S}Z",
           f"{word.upper()} │ {summary_line(st, now, account)}",
           *alarm_lines(st, now, None), "", "ACCOUNTS"]
    out += _table(
        ["ACCOUNT", "KILL", "EQUITY", "DAY P&L", "CASH", "BUYING POWER", "POS", "RECONCILE",
         "BROKER ACCT"],
        [[a.name, a.kill_switch, f.money(a.equity), f.money(a.day_pl, signed=True),
          f.money(a.cash), f.money(a.buying_power), str(a.open_positions), a.reconciliation,
          (a.account_number or f"({a.expected_account_number})")
          + (f" != {a.expected_account_number}" if a.number_mismatch else "")]
         for a in st.accounts])
    out += ["", "PROCESSES" + processes_note(state)]
    out += _table(
        ["STATUS", "PROCESS", "ACCOUNT", "ROLE", "STATE", "PID", "UP", "BEAT", "LAST RUN",
         "GAP", "RESTARTS"],
        [[f.status_text(p.status_at(now)), p.name, p.account or "*", p.role, p.state_at(now),
          "-" if p.pid is None else str(p.pid), f.age(p.uptime_s(now)),
          f.age(p.heartbeat_age_s(now)), f.age(p.last_run_age_s(now)),
          f.signed_age(p.gap_s(now)), str(p.restarts_today)] for p in st.processes])
    positions = sorted(st.positions, key=lambda p: p.key)
    out += ["", f"POSITIONS ({len(positions)})"]
    out += _table(
        ["ACCOUNT", "SYMBOL", "QTY", "OWNER", "AVG ENTRY", "LAST", "MKT VALUE", "UNREAL P&L",
         "P&L %", "HELD"],
        [[p.account, p.description, f.qty(p.qty), f.owner(p.qty, p.managed, long=True),
          f.price(p.avg_entry), f.price(p.last_price), f.money(p.market_value),
          f.money(p.unrealized_pl, signed=True), f.pct(p.unrealized_pct),
          f.age(f.since(now, p.opened_at))]
         for p in positions[:max_positions]])
    if len(positions) > max_positions:
        out.append(f"... and {len(positions) - max_positions} more")
    out += ["", "INCIDENTS"]
    if st.incidents:
        out += _table(
            ["STATE", "KIND", "WHERE", "OPENED", "LASTED", "RESTARTS", "DETAIL"],
            [["closed" if not i.is_open else "acked" if i.acked else "OPEN", i.kind, i.where,
              f.clock(i.opened_at),
              f.age(((i.closed_at or now) - i.opened_at).total_seconds()), str(i.restarts),
              (f"acked by {i.acked_by or '?'} · " if i.is_open and i.acked else "")
              + i.detail[:70]] for i in st.incidents])
    else:
        out.append("none open, none closed in the last 24h")
    out += ["", "ORDERS & FILLS"]
    if st.feed:
        out += _table(
            ["TIME", "ACCOUNT", "WHAT", "SIDE", "SYMBOL", "QTY", "PRICE", "STATUS"],
            [[f.clock(r.ts), r.account, r.kind, r.side, describe_symbol(r.symbol), r.size,
              f.price(r.price), r.status] for r in st.feed[:20]])
    else:
        out.append("none" if state.database.reachable else "unknown (Postgres unreachable)")
    return "\n".join(out)
