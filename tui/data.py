"""The dashboard's read path: one `DashboardData.load()` returns a frozen `DashboardState`.

Everything here is plain data (frozen dataclasses) and I/O at the edges: `Store` reads
(which fall back to the SQLite buffer during a Postgres outage), a few direct Postgres
queries for what the buffer does not keep (order/fill feed, closed incidents, restarts
today, every field of one incident, the managed part of every position in one query),
and supervisord over XML-RPC in a thread (the supervisord layout; in the orchestrated one
processes are read from heartbeat rows alone, as `ops status` and the monitor read them:
ops.supervise.layout, `DashboardState.layout`). Rows keep *timestamps*, not ages, so the app's
1 s clock can recompute ages and gap status without any I/O (`ProcessRow.status_at`).
Gap verdicts come from `ops.core.gaps.gap_status` with the same inputs `ops status` uses
(`ops.commands.status` helpers), so the dashboard and `ops status` never disagree.
Nothing here imports textual: `ops dash --once` renders the same state as text.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ops.commands.status import (
    NO_HEARTBEAT,
    Identity,
    config_problem,
    expected_programs,
    identities,
    stream_connectivity,
)
from ops.core.config import Config
from ops.core.gaps import PAUSABLE_ROLES, GapBounds, GapInput, GapStatus, gap_status
from ops.core.health import dispatch_pause, process_failure
from ops.core.incidents import IncidentRecord
from ops.core.models import OptionSymbol, kill_switch_in
from ops.core.ownership import split
from ops.core.watchdog import STALE, Policy, observe_heartbeat, shown_state
from ops.runtime.env import RuntimeEnv
from ops.store import Snapshot, StorageUnavailable, Store
from ops.store.incidents import find_incident, recently_closed, restarts_since
from ops.store.ownership import managed_quantities_of
from ops.store.positions import open_positions
from ops.store.signal_records import SignalRecord
from ops.store.status import recent_feed, start_of_trading_day
from ops.supervise.layout import LayoutChoice, configured, orchestrated_processes, resolve
from ops.supervise.supervisor import (
    ProcessInfo,
    SupervisorClient,
    SupervisorUnavailable,
    qualified_name,
)
from tui.format import qty as fmt_qty

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: Run outcomes that prove the broker clock said "open" (as ops.commands.status judges them).
OPEN_OUTCOMES = frozenset({"ok", "error", "timeout"})
RECONCILE_KEY = "reconciliation"  # controls row the dispatcher writes (ops.roles.dispatcher)
DRIFT_KEY = "drift_block"  # controls row the position manager writes
FEED_LIMIT = 40
CLOSED_INCIDENTS_WINDOW = timedelta(hours=24)
CLOSED_INCIDENTS_LIMIT = 20
#: The signals pane: the newest this many, plus every one still waiting (up to as many).
SIGNALS_LIMIT = 50


READ_TIMEOUT_S = 3.0


def own_client(client: SupervisorClient, timeout_s: float) -> SupervisorClient:
    """A client of its own for one thread: SupervisorClient shares one transport between
    calls, so two threads using one client at once break each other's connection."""
    return SupervisorClient(client.sock, timeout_s)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriftSymbol:
    symbol: str
    expected: str  # what the stored fills say (the database)
    actual: str  # what the broker holds


@dataclass(frozen=True, slots=True)
class DriftBlock:
    """The account's 'drift_block' control as the position manager last wrote it."""

    blocked: bool
    reason: str
    since: datetime | None
    symbols: tuple[DriftSymbol, ...]


@dataclass(frozen=True, slots=True)
class AccountRow:
    name: str
    account_number: str | None  # as the broker last reported it; never keys
    expected_account_number: str
    equity: Decimal | None
    cash: Decimal | None
    buying_power: Decimal | None
    day_pl: Decimal | None  # equity - last_equity (the broker's previous close)
    open_positions: int
    kill_switch: str  # off | halt | reduce-only | flatten
    reconciliation: str  # reconciled | reconciling | unknown
    as_of: datetime | None
    drift: DriftBlock | None = None  # None: the position manager never wrote one

    @property
    def drift_blocked(self) -> bool:
        return self.drift is not None and self.drift.blocked

    @property
    def number_mismatch(self) -> bool:
        return self.account_number is not None and \
            self.account_number != self.expected_account_number


@dataclass(frozen=True, slots=True)
class PositionRow:
    account: str
    symbol: str
    description: str  # "AAPL 2026-06-19 190 call" for options, the symbol otherwise
    qty: Decimal
    avg_entry: Decimal
    last_price: Decimal | None
    market_value: Decimal | None
    unrealized_pl: Decimal | None
    unrealized_pct: Decimal | None  # percent (5 = 5 %)
    opened_at: datetime | None
    # The part the pipeline manages (ops/core/ownership.py: signed like qty, bounded by it; the
    # rest is external, never sold by exit rules); None: unknown (never read, Postgres away).
    managed: Decimal | None = None

    @property
    def key(self) -> str:
        return f"{self.account}/{self.symbol}"

    @property
    def external(self) -> Decimal | None:
        return None if self.managed is None else self.qty - self.managed

    @property
    def owner(self) -> str:
        """managed | external | mixed | unknown (as ops.core.ownership.Holding.owner says)."""
        if self.managed is None:
            return "unknown"
        external = self.qty - self.managed
        if self.managed and external:
            return "mixed"
        return "external" if external else "managed"


@dataclass(frozen=True, slots=True)
class ProcessRow:
    name: str
    qualified: str  # group:name, what supervisord's XML-RPC wants
    account: str | None
    role: str
    state: str
    pid: int | None
    started_at: datetime | None  # when supervisord last started it (RUNNING only)
    heartbeat_at: datetime | None
    last_run_at: datetime | None
    last_run_outcome: str | None
    expected_interval_s: float | None
    market_open: bool | None
    paused: bool
    bounds: GapBounds
    restarts_today: int
    failure: str | None = None  # failing (ops.core.health): the cause and the last error
    stream: dict[str, Any] | None = None  # a stream role's connectivity (ops.commands.status)
    dispatch_paused: str | None = None  # "dispatch paused: ... N signal(s) waiting"
    # Orchestrated layout: no supervisord, the heartbeat row is all there is (`state` is
    # RUNNING/STALE/MISSING as loaded; `state_at` follows the clock). `booting`: its
    # heartbeat says it has not started its work yet (ops.core.watchdog.verdict).
    heartbeat_only: bool = False
    booting: bool = False

    def state_at(self, now: datetime) -> str:
        """The state word at `now`: as loaded, except that a heartbeat-only row whose
        heartbeat aged past its stale bound since reads STALE."""
        if not self.heartbeat_only or self.state not in ("RUNNING", STALE):
            return self.state
        age = self.heartbeat_age_s(now)
        return "RUNNING" if age is not None and age <= self.bounds.heartbeat_stale_s else STALE

    def uptime_s(self, now: datetime) -> float | None:
        return _age(now, self.started_at)

    def heartbeat_age_s(self, now: datetime) -> float | None:
        return _age(now, self.heartbeat_at)

    def last_run_age_s(self, now: datetime) -> float | None:
        return _age(now, self.last_run_at)

    def gap_s(self, now: datetime) -> float | None:
        """How far past its expected interval the last completed run is (negative: early)."""
        age = self.last_run_age_s(now)
        if age is None or self.expected_interval_s is None:
            return None
        return age - self.expected_interval_s

    def status_at(self, now: datetime) -> GapStatus:
        """The gap verdict at `now`, from stored timestamps only (the 1 s clock calls it)."""
        # A heartbeat row, fresh or stale, is RUNNING to the verdict (observe_heartbeat).
        state = "RUNNING" if self.heartbeat_only and self.state == STALE else self.state
        hb_age = self.heartbeat_age_s(now)
        status = gap_status(GapInput(
            state=state, uptime_s=self.uptime_s(now),
            heartbeats=self.name not in NO_HEARTBEAT,
            heartbeat_age_s=hb_age,
            last_run_age_s=self.last_run_age_s(now),
            expected_interval_s=self.expected_interval_s, market_open=self.market_open,
            paused=self.paused, failing=self.failure is not None,
        ), self.bounds)
        if status == "stalled" and self.booting and hb_age is not None \
                and hb_age <= self.bounds.heartbeat_stale_s:
            return "starting"
        return status


@dataclass(frozen=True, slots=True)
class IncidentRow:
    id: str
    kind: str
    where: str  # process, else account, else "-"
    detail: str
    opened_at: datetime
    closed_at: datetime | None
    restarts: int
    acked_by: str | None = None  # acknowledged by an operator (`a`, `ops incidents ack`)
    acked_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def acked(self) -> bool:
        return self.acked_at is not None

    @property
    def alarming(self) -> bool:
        """Open and nobody has acknowledged it: what the header's alarm counts."""
        return self.is_open and not self.acked


@dataclass(frozen=True, slots=True)
class FeedRow:
    key: str  # unique: "order:<id>", "fill:<event key>" or "activity:<account>:<id>"
    ts: datetime
    account: str
    kind: str  # "order" | "fill" | "activity" (a non-trade activity applied: expiry, split...)
    symbol: str
    side: str
    qty: Decimal | None
    notional: Decimal | None  # dollar-sized orders (qty None)
    price: Decimal | None
    status: str  # order status, fill / partial_fill, or the activity type (OPEXP, SPLIT, ...)

    @property
    def size(self) -> str:
        """Shares/contracts, or "$40" for a dollar-sized order."""
        if self.qty is None and self.notional is not None:
            return f"${self.notional:,.2f}".replace(".00", "")
        return fmt_qty(self.qty)


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    reachable: bool
    source: str  # postgres | buffer | postgres+buffer (Snapshot.source of the reads)
    buffered_rows: int
    as_of: datetime | None  # newest buffered timestamp while reading from the buffer
    unreachable_since: datetime | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SupervisorInfo:
    reachable: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DashboardState:
    loaded_at: datetime
    accounts: tuple[AccountRow, ...]
    positions: tuple[PositionRow, ...]
    processes: tuple[ProcessRow, ...]
    incidents: tuple[IncidentRow, ...]  # open first (oldest first), then recently closed
    feed: tuple[FeedRow, ...]  # newest first
    database: DatabaseInfo
    supervisor: SupervisorInfo
    problems: tuple[str, ...] = ()  # reads that failed for a reason other than an outage
    layout: str = "supervisord"  # supervisord | orchestrated (ops.supervise.layout)
    layout_how: str = "configured"  # "configured" or "detected: <why>"
    # Newest first (the signals pane); None: not read (Postgres away; the pane keeps its rows).
    signals: tuple[SignalRecord, ...] | None = None

    def filtered(self, account: str | None) -> DashboardState:
        """Only rows of `account` (None: everything); shared processes always stay."""
        if account is None:
            return self
        return replace(
            self,
            accounts=tuple(a for a in self.accounts if a.name == account),
            positions=tuple(p for p in self.positions if p.account == account),
            processes=tuple(p for p in self.processes if p.account in (account, None)),
            feed=tuple(f for f in self.feed if f.account == account),
            signals=None if self.signals is None else
            tuple(s for s in self.signals if s.account == account),
        )


# --- helpers ----------------------------------------------------------------------------------


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


@functools.lru_cache(maxsize=8192)  # every load describes every position again
def describe_symbol(symbol: str) -> str:
    """Options readable (underlying, expiry, strike, call/put); anything else unchanged."""
    opt = OptionSymbol.parse(symbol)
    return opt.describe() if opt is not None else symbol


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def drift_block(value: Any) -> DriftBlock | None:
    """Decode a 'drift_block' control value. Blocked as the dispatcher judges it
    (ops.roles.dispatcher.drift_blocked, not imported: it pulls in the broker stack): a
    bool, or an object whose "blocked" defaults to true; anything else blocks."""
    if value is None:
        return None
    if isinstance(value, bool):
        return DriftBlock(value, "", None, ())
    if not isinstance(value, Mapping):
        return DriftBlock(True, f"unreadable drift_block value: {value!r}"[:200], None, ())
    since = None
    try:
        since = datetime.fromisoformat(str(value["since"])) if value.get("since") else None
    except ValueError:
        pass
    raw = value.get("symbols")
    symbols = tuple(
        DriftSymbol(str(sym), str(q.get("expected", "?")), str(q.get("actual", "?")))
        if isinstance(q, Mapping) else DriftSymbol(str(sym), "?", "?")
        for sym, q in sorted((raw if isinstance(raw, Mapping) else {}).items()))
    return DriftBlock(bool(value.get("blocked", True)), str(value.get("reason") or ""),
                      since, symbols)


# --- the loader -------------------------------------------------------------------------------

class DashboardData:
    """Loads a `DashboardState`. `now` is injectable so tests freeze the clock."""

    def __init__(self, env: RuntimeEnv, config: Config, store: Store,
                 supervisor: SupervisorClient, now: Clock = utcnow) -> None:
        self.env = env
        self.config = config
        self.store = store
        self.supervisor = supervisor
        self.now = now
        self._unreachable_since: datetime | None = None
        self._cfg_stamp: tuple[float, int] | None = None
        self._cfg_problem: str | None = None
        # (account, symbol) -> managed quantity as last read: what the owner column shows
        # while Postgres is away (as the position manager keeps its own).
        self._managed: dict[tuple[str, str], Decimal] = {}

    async def load(self) -> DashboardState:
        now = self.now()
        problems: list[str] = []

        async def read(what: str, fetch: Callable[[], Awaitable[Snapshot[Any]]]) -> Snapshot[Any]:
            # Outages fall back to the buffer inside Store; anything else (schema missing,
            # a privilege) is shown as a problem, never raised: one bad read must not
            # blank the whole screen.
            try:
                return await fetch()
            except Exception as exc:
                problems.append(f"{what}: {type(exc).__name__}: {exc}"[:200])
                return Snapshot([], "postgres", now)

        # Independent reads run concurrently (the pool has a few connections): a load
        # costs about the slowest read, not the sum of a dozen round trips.
        buf = await self.store.buffer_status()
        # Thousands of positions: straight from Postgres into rows when nothing waits in
        # the buffer (Store's generic path encodes every row for the buffer and decodes
        # it again: most of a load's time, bench/dashboard.py); else Store's merged view.
        direct = self._positions_direct(problems) if buf.pending == 0 else _none()
        names = list(self.config.enabled_accounts())
        reads = await asyncio.gather(
            asyncio.to_thread(self._supervisor_view)
            if configured(self.config) != "orchestrated" else _not_asked(),
            read("heartbeats", self.store.heartbeats),
            read("runs", self.store.latest_runs),
            read("incidents", self.store.open_incidents),
            read("accounts", self.store.account_states),
            direct,
            *(read(f"controls of {name}", functools.partial(self.store.controls, name))
              for name in names))
        (sup_info, infos), hbs, runs, incidents, states, records, *control_snaps = reads
        positions_source = "postgres"
        stored: list[Any] = []
        if records is None:
            positions = await read("positions", self.store.positions)
            positions_source = positions.source
            stored = [p for p in positions.rows if p.position.qty != 0]
            held = [(p.account, p.position.symbol, p.position.qty) for p in stored]
        else:
            held = [(r["account"], r["symbol"], r["qty"]) for r in records]
        # The positions are the position manager's last snapshot: ownership as of it.
        synced = {r["account"]: r["synced_at"] for r in records} if records else None
        controls: dict[str, dict[str, Any]] = {
            name: {c.key: c.value for c in snap.rows}
            for name, snap in zip(names, control_snaps, strict=True)}
        sources = {positions_source, *(s.source for s in (hbs, runs, incidents, states))}
        source = ("buffer" if "buffer" in sources else
                  "postgres+buffer" if "postgres+buffer" in sources else "postgres")
        extra, fresh, signals = await asyncio.gather(
            self._postgres_only(now, problems) if source != "buffer" else _none(),
            self._read_ownership(held, problems, synced) if source != "buffer" else _none(),
            self._signals(problems) if source != "buffer" else _none())
        # Rows are built once, their managed part known (thousands of them: no copies).
        managed = self._managed_parts(held, fresh)
        position_rows = (
            tuple(_position_row(p, m) for p, m in zip(stored, managed, strict=True))
            if records is None else
            tuple(_record_row(r, m) for r, m in zip(records, managed, strict=True)))
        reachable = extra is not None
        if reachable:
            self._unreachable_since = None
        else:
            # Since when: the oldest write waiting in the buffer, or when we first noticed.
            since = self._unreachable_since or now
            if buf.oldest_age_s is not None:
                since = min(since, now - timedelta(seconds=buf.oldest_age_s))
            self._unreachable_since = since
        feed, closed, restarts = extra or ((), (), {})
        kill = {name: kill_switch_in(snap.rows).value
                for name, snap in zip(names, control_snaps, strict=True)}
        layout = resolve(self.env, self.config, sup_info.reachable)
        return DashboardState(
            loaded_at=now,
            accounts=self._accounts(states.rows, position_rows, kill, controls),
            positions=position_rows,
            processes=self._processes(sup_info, infos, hbs.rows, runs.rows, kill, restarts,
                                      layout, now),
            incidents=tuple(_incident_row(i) for i in incidents.rows) + tuple(closed),
            feed=tuple(feed),
            database=DatabaseInfo(
                reachable=reachable, source=source, buffered_rows=buf.pending,
                as_of=hbs.as_of if source == "buffer" else None,
                unreachable_since=self._unreachable_since,
                error=None if reachable else "Postgres unreachable"),
            supervisor=sup_info,
            problems=tuple(sorted(problems)) + await self._config_problem(),
            layout=layout.layout, layout_how=layout.how, signals=signals,
        )

    async def _config_problem(self) -> tuple[str, ...]:
        """The config file's problem while it is invalid (the stack keeps its last good
        config; ops.commands.status.config_problem), re-checked only when the file changes."""
        try:
            st = self.env.config_path.stat()
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._cfg_stamp or stamp is None:
            self._cfg_stamp = stamp
            self._cfg_problem = await asyncio.to_thread(config_problem, self.env)
        return () if self._cfg_problem is None else (self._cfg_problem,)

    async def _signals(self, problems: list[str]) -> tuple[SignalRecord, ...] | None:
        """The newest signals and every one still waiting, newest first (a stuck queue
        must show however busy the account); None when Postgres is unreachable."""
        try:
            newest, waiting = await asyncio.gather(
                self.store.signals(limit=SIGNALS_LIMIT),
                self.store.signals(states=("queued", "unknown"), limit=SIGNALS_LIMIT))
        except StorageUnavailable:
            return None
        except Exception as exc:
            problems.append(f"signals: {type(exc).__name__}: {exc}"[:200])
            return None
        by_id = {s.id: s for s in (*newest, *waiting)}
        return tuple(sorted(by_id.values(), key=lambda s: (s.created_at, s.id), reverse=True))

    async def incident(self, incident_id: str) -> IncidentRecord | None:
        """Every field of one incident (the detail screen), straight from Postgres: the
        buffer keeps only what the panel shows. Raises on an outage (the screen says so)."""
        return await self.store.direct(find_incident, incident_id)

    def _manages_external(self, account: str) -> bool:
        acfg = self.config.accounts.get(account)
        return acfg is not None and acfg.manage_external

    async def _read_ownership(self, held: Sequence[tuple[str, str, Decimal]],
                              problems: list[str],
                              synced: Mapping[str, datetime] | None = None,
                              ) -> dict[tuple[str, str], Decimal] | None:
        """The recorded managed quantity of every (account, symbol, qty) held by an
        account that does not manage everything (`manage_external`), in one query for
        all of them, as of each account's position snapshot (`synced`: its time, when
        known); None when it could not be read."""
        wanted: dict[str, list[str]] = {}
        for account, symbol, _ in held:
            wanted.setdefault(account, []).append(symbol)
        for account in [a for a in wanted if self._manages_external(a)]:
            del wanted[account]
        if not wanted:
            return {}
        try:
            got = await self.store.direct(managed_quantities_of, wanted, synced)
        except StorageUnavailable:
            return None
        except Exception as exc:
            problems.append(f"ownership: {type(exc).__name__}: {exc}"[:200])
            return None
        return {(a, s): got.get(a, {}).get(s, Decimal(0))
                for a, symbols in wanted.items() for s in symbols}

    def _managed_parts(self, held: Sequence[tuple[str, str, Decimal]],
                       fresh: dict[tuple[str, str], Decimal] | None) -> list[Decimal | None]:
        """The managed part of each (account, symbol, qty) held, as the position manager
        splits it (ops.core.ownership.split): all of it for a `manage_external` account; else
        from the quantity just read, or the last one read (`fresh` None: Postgres away),
        else unknown (None)."""
        if fresh is not None:
            self._managed = fresh
        known = self._managed
        everything = {a for a in {a for a, _, _ in held} if self._manages_external(a)}
        out: list[Decimal | None] = []
        for account, symbol, qty in held:
            raw = qty if account in everything else known.get((account, symbol))
            out.append(raw if raw is None or raw == qty else split(symbol, qty, raw).managed)
        return out

    def _supervisor_view(self) -> tuple[SupervisorInfo, dict[str, ProcessInfo]]:
        try:
            client = own_client(self.supervisor, READ_TIMEOUT_S)
            return SupervisorInfo(True), {p.name: p for p in client.processes()}
        except SupervisorUnavailable as exc:
            return SupervisorInfo(False, str(exc)), {}

    async def _positions_direct(self, problems: list[str]) -> list[Mapping[str, Any]] | None:
        """Open positions of every synced account, read from Postgres (rows for
        `_record_row`); None when it is unreachable (or the read failed: noted in
        `problems`), so Store's path decides."""
        try:
            return await self.store.direct(open_positions)
        except StorageUnavailable:
            return None
        except Exception as exc:
            problems.append(f"positions: {type(exc).__name__}: {exc}"[:200])
            return None

    async def _postgres_only(
        self, now: datetime, problems: list[str],
    ) -> tuple[list[FeedRow], list[IncidentRow], dict[str, int]] | None:
        """Feed, recently closed incidents, restarts today: Postgres only (no buffered
        copy). None when Postgres is unreachable."""
        try:
            feed = await self.store.direct(recent_feed, FEED_LIMIT)
            closed = await self.store.direct(recently_closed, now - CLOSED_INCIDENTS_WINDOW,
                                             CLOSED_INCIDENTS_LIMIT)
            restarts = await self.store.direct(restarts_since, start_of_trading_day(now))
        except StorageUnavailable:
            return None
        except Exception as exc:
            problems.append(f"feed: {type(exc).__name__}: {exc}"[:200])
            return [], [], {}
        return (
            [FeedRow(key=r["key"], ts=r["ts"], account=r["account"], kind=r["kind"],
                     symbol=r["symbol"], side=r["side"], qty=_dec(r["qty"]),
                     notional=_dec(r["notional"]), price=_dec(r["price"]),
                     status=r["status"]) for r in feed],
            [IncidentRow(id=r["id"], kind=r["kind"],
                         where=r["process"] or r["account"] or "-", detail=r["detail"],
                         opened_at=r["opened_at"], closed_at=r["closed_at"],
                         restarts=r["restarts"], acked_by=r["acked_by"],
                         acked_at=r["acked_at"]) for r in closed],
            restarts,
        )

    def _accounts(self, states: list[Any], positions: Sequence[PositionRow],
                  kill: Mapping[str, str], controls: Mapping[str, Mapping[str, Any]],
                  ) -> tuple[AccountRow, ...]:
        open_pos: dict[str, int] = {}
        for p in positions:  # open ones only
            open_pos[p.account] = open_pos.get(p.account, 0) + 1
        by_name = {s.name: s for s in states}
        out = []
        for name, acfg in sorted(self.config.enabled_accounts().items()):
            st = by_name.get(name)
            recon = controls.get(name, {}).get(RECONCILE_KEY)
            recon_state = str(recon.get("state", "unknown")) if isinstance(recon, dict) \
                else "unknown"
            day_pl = None
            if st is not None and st.equity is not None and st.last_equity is not None:
                day_pl = st.equity - st.last_equity
            out.append(AccountRow(
                name=name, account_number=st.account_number if st else None,
                expected_account_number=acfg.expected_account_number,
                equity=st.equity if st else None, cash=st.cash if st else None,
                buying_power=st.buying_power if st else None, day_pl=day_pl,
                open_positions=open_pos.get(name, 0), kill_switch=kill.get(name, "off"),
                reconciliation=recon_state, as_of=st.as_of if st else None,
                drift=drift_block(controls.get(name, {}).get(DRIFT_KEY)),
            ))
        return tuple(out)

    def _processes(self, sup: SupervisorInfo, infos: Mapping[str, ProcessInfo],
                   hbs: list[Any], runs: list[Any], kill: Mapping[str, str],
                   restarts: Mapping[str, int], layout: LayoutChoice, now: datetime,
                   ) -> tuple[ProcessRow, ...]:
        hb_by = {h.process: h for h in hbs}
        run_by = {r.process: r for r in runs}
        if layout.layout == "orchestrated":
            return self._heartbeat_processes(hb_by, run_by, kill, restarts, now)
        ids = identities(self.config)
        names = list(dict.fromkeys([*expected_programs(self.env, self.config), *infos]))
        wd = self.config.watchdog
        out = []
        for name in names:
            ident = ids.get(name, Identity(None, name))
            info = infos.get(name)
            state = info.state if info else ("NOT-RUNNING" if not sup.reachable
                                             else "NOT-CONFIGURED")
            started = (datetime.fromtimestamp(info.start, UTC)
                       if info is not None and info.state == "RUNNING" and info.start else None)
            hb = hb_by.get(name)
            # A heartbeat from before this incarnation started proves nothing about it.
            hb_at = hb.ts if hb is not None else None
            if hb_at is not None and started is not None and \
                    hb_at < started - timedelta(seconds=1):
                hb_at = None
            run = run_by.get(name)
            market_open = None
            if run is not None:
                market_open = (False if run.outcome == "idle-market-closed"
                               else True if run.outcome in OPEN_OUTCOMES else None)
            out.append(ProcessRow(
                name=name,
                qualified=info.qualified if info else qualified_name(ident.role, ident.account),
                account=ident.account, role=ident.role, state=state,
                pid=(info.pid or None) if info else None, started_at=started,
                heartbeat_at=hb_at, last_run_at=run.finished_at if run else None,
                last_run_outcome=run.outcome if run else None,
                expected_interval_s=self.config.role_interval(ident.role, ident.account),
                market_open=market_open,
                paused=ident.role in PAUSABLE_ROLES
                and kill.get(ident.account or "", "off") != "off",
                bounds=GapBounds(wd.heartbeat_stale_for(ident.role), wd.startup_grace_s,
                                 wd.gap_bounds_s.get(ident.role)),
                restarts_today=restarts.get(name, 0),
                failure=_failure(self.config, ident, hb if hb_at is not None else None),
                stream=stream_connectivity(hb.counters) if hb is not None and hb_at is not None
                and ident.role == "stream" else None,
                dispatch_paused=_paused(hb, ident),
            ))
        return tuple(out)


    def _heartbeat_processes(self, hbs: Mapping[str, Any], runs: Mapping[str, Any],
                             kill: Mapping[str, str], restarts: Mapping[str, int],
                             now: datetime) -> tuple[ProcessRow, ...]:
        """The orchestrated layout: every expected (account, role) and the monitor, from
        its heartbeat row as `ops status` and the monitor observe it (observe_heartbeat)."""
        wd = self.config.watchdog
        policy = Policy.from_config(wd, acts=False)
        out = []
        for e in orchestrated_processes(self.config):
            hb = hbs.get(e.name)
            run = runs.get(e.name)
            ident = Identity(e.account, e.role)
            paused = e.role in PAUSABLE_ROLES and kill.get(e.account or "", "off") != "off"
            o = observe_heartbeat(name=e.name, account=e.account, role=e.role, heartbeat=hb,
                                  run=run, expected_interval_s=self.config.role_interval(
                                      e.role, e.account),
                                  paused=paused, now=now,
                                  startup_grace_s=policy.startup_grace_s)
            out.append(ProcessRow(
                name=e.name, qualified=e.name, account=e.account, role=e.role,
                state=shown_state(o, policy), pid=hb.pid if hb is not None else None,
                started_at=hb.started_at if hb is not None else None,
                heartbeat_at=hb.ts if hb is not None else None,
                last_run_at=run.finished_at if run else None,
                last_run_outcome=run.outcome if run else None,
                expected_interval_s=o.gap.expected_interval_s, market_open=o.gap.market_open,
                paused=paused,
                bounds=GapBounds(wd.heartbeat_stale_for(e.role), wd.startup_grace_s,
                                 wd.gap_bounds_s.get(e.role)),
                restarts_today=restarts.get(e.name, 0),
                failure=_failure(self.config, ident, hb),
                stream=stream_connectivity(hb.counters) if hb is not None
                and e.role == "stream" else None,
                dispatch_paused=_paused(hb, ident),
                heartbeat_only=True, booting=o.booting,
            ))
        return tuple(out)


async def _none() -> None:
    return None


async def _not_asked() -> tuple[SupervisorInfo, dict[str, ProcessInfo]]:
    """The orchestrated layout, configured: supervisord is not asked."""
    return SupervisorInfo(False, "not used in the orchestrated layout"), {}


def _paused(hb: Any, ident: Identity) -> str | None:
    if hb is None or ident.role != "dispatcher":
        return None
    pause = dispatch_pause(hb.counters, ident.account)
    return None if pause is None else pause.describe()


def _failure(config: Config, ident: Identity, hb: Any) -> str | None:
    """The process's failure from its heartbeat counters, as `ops status` judges it."""
    return None if hb is None else process_failure(config, hb.counters, ident.account)


def _position_row(sp: Any, managed: Decimal | None) -> PositionRow:
    """A row from Store.positions() (a StoredPosition)."""
    p = sp.position
    pct = None if p.unrealized_plpc is None else p.unrealized_plpc * 100
    return PositionRow(
        account=sp.account, symbol=p.symbol, description=describe_symbol(p.symbol), qty=p.qty,
        avg_entry=p.avg_entry_price, last_price=p.current_price, market_value=p.market_value,
        unrealized_pl=p.unrealized_pl, unrealized_pct=pct, opened_at=sp.opened_at,
        managed=managed,
    )


def _record_row(r: Any, managed: Decimal | None) -> PositionRow:
    """A row from an `ops.store.positions.open_positions` row."""
    return PositionRow(
        account=r["account"], symbol=r["symbol"], description=describe_symbol(r["symbol"]),
        qty=r["qty"], avg_entry=r["avg_entry_price"] or Decimal(0),
        last_price=r["current_price"], market_value=r["market_value"],
        unrealized_pl=r["unrealized_pl"],
        unrealized_pct=None if r["unrealized_plpc"] is None else r["unrealized_plpc"] * 100,
        opened_at=r["opened_at"], managed=managed)


def _incident_row(i: Any) -> IncidentRow:
    return IncidentRow(id=i.id, kind=i.kind, where=i.process or i.account or "-",
                       detail=i.detail, opened_at=i.opened_at, closed_at=None,
                       restarts=i.restarts, acked_by=i.acked_by, acked_at=i.acked_at)
