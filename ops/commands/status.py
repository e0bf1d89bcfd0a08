"""`ops status`: one report of processes, accounts, database and incidents.

`collect_status(env, config)` gathers it (for `ops status` alone: the dashboard reads
through tui/data.py; both, the watchdog and the monitor judge a process with the same
ops.core.gaps and ops.core.watchdog); `cli_status` prints it as a compact table or, with
`--json`, as the object the README documents for scripts and monitors. Exit code: 0 healthy, 1
degraded, 2 down.

Two layouts (ops.supervise.layout, `[deploy] layout`, "layout" in the report): under supervisord
process states come from its XML-RPC; in the orchestrated layout (one role per container,
no supervisord) from heartbeat rows alone, exactly as the monitor role observes them
(`ops.core.watchdog.observe_heartbeat`: RUNNING, STALE or MISSING per expected (account, role),
the monitor included), so a missing supervisord is not an outage there.

It keeps working when parts are missing: with supervisord down (supervisord layout) every
process reads `down` (and the report is `down`); with Postgres down the reads come from
the SQLite buffer (`database.reachable` false, `database.reads_from` "buffer", report
`degraded`) and the counts only Postgres knows (orders and fills today) are null.
Per-process verdicts come from the pure `ops.core.gaps.gap_status`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from ops.core.config import Config, ConfigError
from ops.core.gaps import PAUSABLE_ROLES, GapBounds, GapInput, GapStatus, gap_status
from ops.core.health import dispatch_pause, process_failure
from ops.core.models import Heartbeat, RunRecord, kill_switch_in
from ops.runtime.config import load_config, load_last_good
from ops.runtime.env import EXIT_CONFIG, RuntimeEnv, runtime_env
from ops.runtime.errors import describe_db_error
from ops.runtime.logs import configure_logging
from ops.supervise.layout import Layout, LayoutChoice, configured, orchestrated_processes, resolve
from ops.supervise.supervisor import (
    ACCOUNT_ROLES,
    SHARED_ROLES,
    WATCHDOG,
    ProcessInfo,
    SupervisorClient,
    SupervisorUnavailable,
    conf_path,
    program_name,
)

log = logging.getLogger(__name__)

Overall = Literal["healthy", "degraded", "down"]
EXIT_CODES: dict[Overall, int] = {"healthy": 0, "degraded": 1, "down": 2}
#: Process verdicts that make the whole report degraded (all but ok, paused and idle).
DEGRADING: frozenset[GapStatus] = frozenset({"starting", "late", "stalled", "failing",
                                             "down"})
#: Run outcomes that prove the broker clock said "open" when the run happened.
_OPEN_OUTCOMES = frozenset({"ok", "error", "timeout"})
#: Processes that never write heartbeats: RUNNING is all they can show.
NO_HEARTBEAT = frozenset({"postgres", "sim"})


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    name: str
    account: str | None
    role: str
    state: str  # supervisord's state name; "NOT-RUNNING" when supervisord itself is down
    pid: int | None
    heartbeat_age_s: float | None
    last_run_age_s: float | None
    expected_interval_s: float | None
    status: GapStatus
    uptime_s: float | None = None
    failure: str | None = None  # when failing: the cause and the last error (ops.core.health)
    # Stream roles: the trade stream's connectivity from the heartbeat (ops.broker.stream):
    # {"state": connected|connecting|authenticating|refused|disconnected, "for_s": ...,
    #  "refusal": the broker's reason or "", "drops_recent": drops in the flap window}
    stream: dict[str, Any] | None = None
    # Dispatchers that cannot claim signals: "dispatch paused: database unreachable for
    # 41s, 3 signal(s) waiting" (ops.core.health.dispatch_pause).
    dispatch_paused: str | None = None


@dataclass(frozen=True, slots=True)
class AccountStatus:
    name: str
    account_number: str | None  # as last reported by the broker
    expected_account_number: str
    equity: Decimal | None
    open_positions: int | None
    orders_today: int | None  # None: Postgres unreachable
    fills_today: int | None
    kill_switch: str  # off | halt | reduce-only | flatten
    # Held symbols with an external part (placed outside the pipeline, never sold by it:
    # ops/core/ownership.py), as the position manager last counted them; None: unknown.
    external_positions: int | None = None


@dataclass(frozen=True, slots=True)
class DatabaseStatus:
    reachable: bool
    buffered_rows: int | None
    oldest_buffered_age_s: float | None
    dead_rows: int | None = None  # quarantined by replay: need a human
    reads_from: str = "postgres"  # postgres | buffer | postgres+buffer
    error: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentStatus:
    id: str
    kind: str
    account: str | None
    process: str | None
    detail: str
    opened_at: datetime
    age_s: float
    restarts: int
    # Who acknowledged it (`ops incidents ack`, the dashboard's `a`), None when nobody has:
    # an acknowledged incident stays listed but no longer makes the report degraded.
    acked_by: str | None = None


@dataclass(frozen=True, slots=True)
class SupervisorStatus:
    reachable: bool
    pid: int | None
    config: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    status: Overall
    as_of: datetime
    supervisor: SupervisorStatus
    processes: list[ProcessStatus]
    accounts: list[AccountStatus]
    database: DatabaseStatus
    incidents: list[IncidentStatus]
    reasons: list[str] = field(default_factory=list)  # why not healthy, one line each
    layout: Layout = "supervisord"  # where process states come from (ops.supervise.layout)
    layout_how: str = "configured"  # "configured" or "detected: <why>"
    home: str = ""  # OPS_HOME, and the config file with how it was found (ops.runtime.env)
    config: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float):
        return round(value, 3)
    return value


# --- what should be running ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    account: str | None
    role: str


def identities(config: Config) -> dict[str, Identity]:
    """Program name -> (account, role) for every process the config implies."""
    out: dict[str, Identity] = {"postgres": Identity(None, "postgres"),
                                "sim": Identity(None, "sim"),
                                WATCHDOG: Identity(None, WATCHDOG)}
    for role in SHARED_ROLES:
        out[program_name(role, None)] = Identity(None, role)
    for account in config.enabled_accounts():
        for role in ACCOUNT_ROLES:
            out[program_name(role, account)] = Identity(account, role)
    return out


_PROGRAM_RE = re.compile(r"^\[(?:program|eventlistener):([^\]]+)\]", re.MULTILINE)


def rendered_programs(env: RuntimeEnv) -> list[str]:
    """Programs in the supervisord config `ops up` last rendered (empty if never)."""
    names: list[str] = []
    for path in sorted((env.home / "supervisor").glob("*.conf")):
        names.extend(_PROGRAM_RE.findall(path.read_text()))
    return names


def expected_programs(env: RuntimeEnv, config: Config) -> list[str]:
    """What should run: the rendered config if `ops up` ran, else what the config implies."""
    rendered = rendered_programs(env)
    if rendered:
        return rendered
    names = ["postgres"] if not env.database_url else []
    names += [WATCHDOG, *(program_name(r, None) for r in SHARED_ROLES)]
    for account in sorted(config.enabled_accounts()):
        names += [program_name(r, account) for r in ACCOUNT_ROLES]
    return names


# --- collection --------------------------------------------------------------------------------


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def _supervisor_view(
    env: RuntimeEnv, client: SupervisorClient | None
) -> tuple[SupervisorStatus, dict[str, ProcessInfo]]:
    client = client or SupervisorClient.for_env(env, timeout_s=3)
    try:
        pid = client.pid()
        infos = {p.name: p for p in client.processes()}
    except SupervisorUnavailable as exc:
        return SupervisorStatus(False, None, str(conf_path(env)), str(exc)), {}
    return SupervisorStatus(True, pid, str(conf_path(env))), infos


async def collect_status(
    env: RuntimeEnv,
    config: Config,
    *,
    store: Any | None = None,
    supervisor: SupervisorClient | None = None,
    now: datetime | None = None,
) -> StatusReport:
    """Gather the report. Pass an open `Store` to reuse it (the watchdog, the dashboard);
    without one, a short-lived Store is opened (and closed) for the reads."""
    from ops.store import Store

    if store is None:
        settings = oneshot_store_settings(env, config)
        async with await Store.open(env, process="ops-status", config=settings) as own:
            return await _collect(env, config, own, supervisor, now)
    assert isinstance(store, Store)
    return await _collect(env, config, store, supervisor, now)


def oneshot_store_settings(env: RuntimeEnv, config: Config) -> Any:
    """Store settings for a one-shot reader: short timeouts, so an outage costs seconds."""
    from ops.store import StoreSettings

    s = StoreSettings.from_config(config, env)
    return dataclasses.replace(s, connect_timeout_s=min(s.connect_timeout_s, 2.0),
                               command_timeout_s=min(s.command_timeout_s, 5.0),
                               close_grace_s=1.0, pool_max_size=2)


async def _collect(
    env: RuntimeEnv, config: Config, store: Any, supervisor: SupervisorClient | None,
    now: datetime | None,
) -> StatusReport:
    from ops.store import Snapshot, StorageUnavailable
    from ops.store.status import AccountActivity, account_activity, ping

    infos: dict[str, ProcessInfo] = {}
    if configured(config) == "orchestrated":  # nothing to ask
        sup = SupervisorStatus(False, None, str(conf_path(env)),
                               "not used in the orchestrated layout")
    else:
        sup, infos = await asyncio.to_thread(_supervisor_view, env, supervisor)
    choice = resolve(env, config, sup.reachable)
    reachable, db_error = True, None
    try:
        await store.direct(ping, timeout_s=3)
    except StorageUnavailable as exc:
        reachable, db_error = False, describe_db_error(exc)[:300]
    problems: list[str] = []
    t_now = now or datetime.now(UTC)

    async def read(what: str, fetch: Callable[[], Awaitable[Any]]) -> Any:
        """A Store read; outages fall back to the buffer inside Store. Anything else (a
        schema not migrated yet, a privilege missing) is reported, never raised: status
        must answer whatever state the stack is in."""
        try:
            return await fetch()
        except Exception as exc:
            problems.append(f"{what}: {type(exc).__name__}: {exc}"[:300])
            return Snapshot([], "postgres", t_now)

    hbs = await read("heartbeats", store.heartbeats)
    runs = await read("runs", store.latest_runs)
    incidents = await read("incidents", store.open_incidents)
    states = await read("account state", store.account_states)
    positions = await read("positions", store.positions)
    buf = await store.buffer_status()
    activity: dict[str, AccountActivity] | None = None
    if reachable:
        try:
            activity = await store.direct(account_activity, t_now)
        except StorageUnavailable:
            reachable = False
        except Exception as exc:
            problems.append(f"orders/fills today: {type(exc).__name__}: {exc}"[:300])
    accounts_cfg = config.enabled_accounts()
    kill: dict[str, str] = {}
    for name in accounts_cfg:
        controls = await read(f"controls of {name}", functools.partial(store.controls, name))
        kill[name] = kill_switch_in(controls.rows).value
    now = t_now
    sources = {s.source for s in (hbs, runs, incidents, states, positions)}
    reads_from = ("buffer" if "buffer" in sources else
                  "postgres+buffer" if "postgres+buffer" in sources else "postgres")
    database = DatabaseStatus(
        reachable=reachable, buffered_rows=buf.pending, oldest_buffered_age_s=buf.oldest_age_s,
        dead_rows=buf.dead, reads_from=reads_from,
        error=db_error or (problems[0] if problems else None),
    )
    hb_by = {h.process: h for h in hbs.rows}
    run_by = {r.process: r for r in runs.rows}
    processes = (_processes(env, config, sup, infos, hb_by, run_by, kill, now)
                 if choice.layout == "supervisord"
                 else _heartbeat_processes(config, hb_by, run_by, kill, now))
    open_pos: dict[str, int] = {}
    for p in positions.rows:
        if p.position.qty != 0:
            open_pos[p.account] = open_pos.get(p.account, 0) + 1
    state_by = {s.name: s for s in states.rows}
    accounts = []
    for name, acfg in sorted(accounts_cfg.items()):
        st = state_by.get(name)
        act = None if activity is None else activity.get(name)
        accounts.append(AccountStatus(
            name=name,
            account_number=st.account_number if st else None,
            expected_account_number=acfg.expected_account_number,
            equity=st.equity if st else None,
            open_positions=open_pos.get(name, 0) if positions.rows or reachable else None,
            external_positions=_external(hbs.rows, name),
            orders_today=None if activity is None else (act.orders_today if act else 0),
            fills_today=None if activity is None else (act.fills_today if act else 0),
            kill_switch=kill[name],
        ))
    incs = [
        IncidentStatus(id=i.id, kind=i.kind, account=i.account, process=i.process,
                       detail=i.detail, opened_at=i.opened_at,
                       age_s=_age(now, i.opened_at) or 0.0, restarts=i.restarts,
                       acked_by=(i.acked_by or "?") if i.acked else None)
        for i in incidents.rows
    ]
    overall, reasons = _overall(sup, processes, database, incs, choice)
    cfg_problem = await asyncio.to_thread(config_problem, env)
    if cfg_problem is not None:
        reasons.append(cfg_problem)
        if overall == "healthy":
            overall = "degraded"
    return StatusReport(overall, now, sup, processes, accounts, database, incs, reasons,
                        choice.layout, choice.how)


def _processes(
    env: RuntimeEnv, config: Config, sup: SupervisorStatus, infos: Mapping[str, ProcessInfo],
    hbs: Mapping[str, Heartbeat], runs: Mapping[str, RunRecord], kill: Mapping[str, str],
    now: datetime,
) -> list[ProcessStatus]:
    ids = identities(config)
    names = list(dict.fromkeys([*expected_programs(env, config), *infos]))
    wd = config.watchdog
    out: list[ProcessStatus] = []
    for name in names:
        ident = ids.get(name, Identity(None, name))
        info = infos.get(name)
        if info is None:
            state = "NOT-RUNNING" if not sup.reachable else "NOT-CONFIGURED"
        else:
            state = info.state
        uptime = float(info.uptime_s) if info is not None and info.uptime_s is not None else None
        hb = hbs.get(name)
        # A heartbeat written before this incarnation started proves nothing about it.
        if hb is not None and info is not None and info.start and \
                hb.ts.timestamp() < info.start - 1:
            hb = None
        run = runs.get(name)
        interval = config.role_interval(ident.role, ident.account)
        market_open = None
        if run is not None:
            market_open = (False if run.outcome == "idle-market-closed"
                           else True if run.outcome in _OPEN_OUTCOMES else None)
        fail = process_failure(config, hb.counters, ident.account) if hb is not None else None
        gi = GapInput(
            state=state, uptime_s=uptime, heartbeats=name not in NO_HEARTBEAT,
            heartbeat_age_s=_age(now, hb.ts) if hb else None,
            last_run_age_s=_age(now, run.finished_at) if run else None,
            expected_interval_s=interval, market_open=market_open,
            # Only the dispatcher's work (new entries) stops under the kill switch; the
            # stream and the position manager keep working and are judged as usual.
            paused=ident.role in PAUSABLE_ROLES and kill.get(ident.account or "", "off") != "off",
            failing=fail is not None,
        )
        bounds = GapBounds(wd.heartbeat_stale_for(ident.role), wd.startup_grace_s,
                           wd.gap_bounds_s.get(ident.role))
        out.append(ProcessStatus(
            name=name, account=ident.account, role=ident.role, state=state,
            pid=(info.pid or None) if info else None, heartbeat_age_s=gi.heartbeat_age_s,
            last_run_age_s=gi.last_run_age_s, expected_interval_s=interval,
            status=gap_status(gi, bounds), uptime_s=uptime, failure=fail,
            stream=stream_connectivity(hb.counters) if hb is not None
            and ident.role == "stream" else None,
            dispatch_paused=_paused_text(hb, ident),
        ))
    return out


def _heartbeat_processes(
    config: Config, hbs: Mapping[str, Heartbeat], runs: Mapping[str, RunRecord],
    kill: Mapping[str, str], now: datetime,
) -> list[ProcessStatus]:
    """The orchestrated layout: every expected (account, role) and the monitor, observed
    from its heartbeat row as the monitor observes it (ops.core.watchdog.observe_heartbeat)."""
    from ops.core.watchdog import Policy, observe_heartbeat, shown_state, verdict

    policy = Policy.from_config(config.watchdog, acts=False)
    out: list[ProcessStatus] = []
    for e in orchestrated_processes(config):
        hb = hbs.get(e.name)
        fail = process_failure(config, hb.counters, e.account) if hb is not None else None
        o = observe_heartbeat(
            name=e.name, account=e.account, role=e.role, heartbeat=hb, run=runs.get(e.name),
            expected_interval_s=config.role_interval(e.role, e.account),
            paused=e.role in PAUSABLE_ROLES and kill.get(e.account or "", "off") != "off",
            now=now, startup_grace_s=policy.startup_grace_s, failure=fail)
        ident = Identity(e.account, e.role)
        out.append(ProcessStatus(
            name=e.name, account=e.account, role=e.role, state=shown_state(o, policy),
            pid=hb.pid if hb is not None else None, heartbeat_age_s=o.gap.heartbeat_age_s,
            last_run_age_s=o.gap.last_run_age_s, expected_interval_s=o.gap.expected_interval_s,
            status=verdict(o, policy), uptime_s=o.gap.uptime_s, failure=fail,
            stream=stream_connectivity(hb.counters) if hb is not None
            and e.role == "stream" else None,
            dispatch_paused=_paused_text(hb, ident),
        ))
    return out


def _external(hbs: Sequence[Heartbeat], account: str) -> int | None:
    pm = next((h for h in hbs if h.process == program_name("position-manager", account)),
              None)
    value = pm.counters.get("position-manager.positions_external") if pm else None
    return value if isinstance(value, int) else None


def _paused_text(hb: Heartbeat | None, ident: Identity) -> str | None:
    if hb is None or ident.role != "dispatcher":
        return None
    pause = dispatch_pause(hb.counters, ident.account)
    return None if pause is None else pause.describe()


def stream_connectivity(counters: Mapping[str, object]) -> dict[str, Any] | None:
    """The trade stream's state from a stream role's heartbeat counters (None if absent)."""
    state = counters.get("stream.state")
    if not isinstance(state, str):
        return None
    age = counters.get("stream.state_age_s")
    drops = counters.get("stream.drops_recent")
    refusal = counters.get("stream.refusal")
    return {"state": state, "for_s": age if isinstance(age, int | float) else None,
            "refusal": refusal if isinstance(refusal, str) else "",
            "drops_recent": drops if isinstance(drops, int) else 0}


def _overall(
    sup: SupervisorStatus, processes: Sequence[ProcessStatus], db: DatabaseStatus,
    incidents: Sequence[IncidentStatus], layout: LayoutChoice,
) -> tuple[Overall, list[str]]:
    if layout.layout == "supervisord" and not sup.reachable:
        return "down", [f"supervisord is not running ({sup.error})"]
    if processes and all(p.status == "down" for p in processes):
        return "down", ["no process is running" if layout.layout == "supervisord"
                        else "no process has a heartbeat"]
    reasons = [f"{p.name}: failing: {p.failure}" if p.failure and p.status == "failing"
               else f"{p.name}: {p.status} ({p.state})"
               for p in processes if p.status in DEGRADING]
    reasons += [p.dispatch_paused for p in processes if p.dispatch_paused]
    if not db.reachable:
        reasons.append(f"database unreachable, reading from the {db.reads_from} ({db.error})")
    elif db.error:
        reasons.append(f"database reads failing: {db.error}")
    if db.dead_rows:
        reasons.append(f"{db.dead_rows} buffered rows quarantined by replay")
    # Acknowledged incidents stay listed (render_text, JSON) but a human has taken them on.
    reasons += [f"open incident {i.kind}: {i.detail[:80]}" for i in incidents
                if i.acked_by is None]
    return ("degraded" if reasons else "healthy"), reasons


# --- the command -------------------------------------------------------------------------------


def _fmt_age(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 100:
        return f"{v:.1f}s"
    if v < 6000:
        return f"{v / 60:.0f}m"
    return f"{v / 3600:.0f}h"


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, Decimal):
        return f"{v:,.2f}"
    if isinstance(v, float):
        return f"{v:g}s"
    return str(v)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def render_text(report: StatusReport) -> str:
    sup = report.supervisor
    where = ("orchestrated (no supervisord)" if report.layout == "orchestrated"
             else "supervisord " + (f"pid {sup.pid}" if sup.reachable else "NOT RUNNING"))
    head = (f"ops-pipeline {report.status.upper()}   {where}"
            f"   {report.as_of:%Y-%m-%d %H:%M:%S}Z")
    how = ("process states from heartbeats" if report.layout == "orchestrated"
           else "process states from supervisord")
    lines = [head, f"layout: {report.layout} ({report.layout_how}); {how}"]
    if report.home:
        lines.append(f"home: {report.home}   config: {report.config}")
    lines.append("")
    rows = [["PROCESS", "STATE", "PID", "HEARTBEAT", "LAST RUN", "EVERY", "STATUS"]]
    rows += [[p.name, p.state, _fmt(p.pid), _fmt_age(p.heartbeat_age_s),
              _fmt_age(p.last_run_age_s), _fmt(p.expected_interval_s), p.status]
             for p in report.processes]
    lines += _table(rows)
    for p in report.processes:
        st = p.stream
        if st is not None and st["state"] != "connected":
            why = f": {st['refusal']}" if st["refusal"] else ""
            lines.append(f"  {p.name}: trade stream {st['state'].upper()} for "
                         f"{_fmt_age(st['for_s'])}{why}")
        elif st is not None and st["drops_recent"]:
            lines.append(f"  {p.name}: trade stream connected; {st['drops_recent']} "
                         "drop(s) recently")
    lines.append("")
    rows = [["ACCOUNT", "NUMBER", "EQUITY", "POSITIONS", "ORDERS TODAY", "FILLS TODAY",
             "KILL SWITCH"]]
    rows += [[a.name, a.account_number or f"({a.expected_account_number})", _fmt(a.equity),
              _fmt(a.open_positions) + (f" ({a.external_positions} external)"
                                         if a.external_positions else ""),
              _fmt(a.orders_today), _fmt(a.fills_today),
              a.kill_switch] for a in report.accounts]
    lines += _table(rows)
    db = report.database
    lines.append("")
    lines.append(
        "database: " + ("reachable" if db.reachable else f"UNREACHABLE ({db.error})")
        + f"; reads from {db.reads_from}; buffered rows {_fmt(db.buffered_rows)}"
        + (f" (oldest {_fmt_age(db.oldest_buffered_age_s)})" if db.buffered_rows else "")
        + (f"; QUARANTINED {db.dead_rows}" if db.dead_rows else "")
    )
    if report.incidents:
        acked = sum(1 for i in report.incidents if i.acked_by is not None)
        lines.append("")
        lines.append(f"open incidents ({len(report.incidents)}"
                     + (f", {acked} acked" if acked else "") + "):")
        for i in report.incidents:
            where = i.process or i.account or "-"
            mark = f"ACKED by {i.acked_by}: " if i.acked_by is not None else ""
            lines.append(f"  {i.kind:<20} {where:<24} {_fmt_age(i.age_s):>6}  "
                         f"{mark}{i.detail[:70]}")
    else:
        lines.append("open incidents: none")
    if report.reasons:
        lines.append("")
        lines += [f"! {r}" for r in report.reasons]
    return "\n".join(lines)


def load_env_config(env: RuntimeEnv | None = None) -> tuple[RuntimeEnv, Config] | str:
    """The runtime env and config, or the config error's message. With the file on disk
    invalid but a stack that ran (it keeps its last good config, saved under
    `$OPS_HOME/run`), that last good config: the report then names the file's problem
    (`config_problem`) instead of refusing to say anything about the running stack."""
    env = env or runtime_env()
    try:
        return env, load_config(Path(env.config_path))
    except ConfigError as exc:
        last = load_last_good(env.run_dir)
        if last is None:
            return str(exc)
        return env, last[0]


def config_problem(env: RuntimeEnv) -> str | None:
    """Why the config file on disk does not load, or None when it does."""
    try:
        load_config(Path(env.config_path))
    except ConfigError as exc:
        last = load_last_good(env.run_dir)
        kept = ("" if last is None else
                f"; the running stack keeps its last good config (as of "
                f"{last[1]:%Y-%m-%d %H:%M:%S}Z), which this report uses")
        return f"config file is invalid{kept}: {exc}"
    return None


def cli_status(args: argparse.Namespace) -> int:
    loaded = load_env_config()
    if isinstance(loaded, str):
        print(loaded, file=sys.stderr)
        return EXIT_CONFIG
    env, config = loaded
    # The report itself says when Postgres is away; the store's warnings would only repeat it.
    configure_logging("ops-status", level="ERROR")
    report = dataclasses.replace(asyncio.run(collect_status(env, config)), home=str(env.home),
                                 config=f"{env.config_path} ({env.config_source})")
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render_text(report))
    return report.exit_code
