"""`ops dash --once`: the dashboard's state as plain text (no terminal, no textual).

Also home of the banner's words (`summary_line`, `alarm_lines`), so the text snapshot and
the live banner say exactly the same thing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tui import format as f
from tui.data import DashboardState, describe_symbol

_ORDER = ("ok", "idle", "paused", "starting", "late", "stalled", "failing", "down")


@dataclass(frozen=True, slots=True)
class StaleInfo:
    since: datetime
    error: str


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
    return (f"{now:%H:%M:%S}Z │ {where}{procs or 'no processes'} │ "
            f"{len(state.positions)} positions │ {incidents} │ {fill}")


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
    lines += [f"! {p}" for p in state.problems]
    return lines


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
    out = [f"ops dash  {now:%Y-%m-%d %H:%M:%S}Z", summary_line(st, now, account),
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
