"""What the two drivers of `ops.core.watchdog`'s decisions share: `Overseer`.

The supervisord event listener (ops/roles/watchdog.py) and the monitor role
(ops/roles/monitor.py) observe processes differently (supervisord's XML-RPC vs heartbeat
rows alone) and only the first kills and starts; everything else is this one class: the
memory between passes, reading heartbeats / last runs / kill switches, `decide` and the
database-unreachable decision, incidents through the Store (open, bump, note, close),
alerts into the outbox (delivered by `AlertWorker`, never inline), the incident sweep,
alerts on incidents other processes open, the outage buffer's probe, the Prometheus
snapshot and the health the dead-man ping depends on. One pass of a driver is: gather
`Observed` rows, then `conclude`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ops.core.config import Config
from ops.core.gaps import PAUSABLE_ROLES
from ops.core.health import dispatch_pause, process_failure
from ops.core.incidents import SweepPolicy, sweep
from ops.core.models import Heartbeat, KillSwitch, RunRecord, kill_switch_in
from ops.core.watchdog import (
    DATABASE,
    Action,
    BumpIncident,
    CloseIncident,
    NoteIncident,
    Observed,
    OpenIncident,
    Policy,
    ProcessEvent,
    Tracked,
    adopt_open,
    decide,
    decide_database,
)
from ops.notify.alerts import Alert, AlertEvent, AlertWorker, DeadmanPinger, Outbox
from ops.notify.metrics import AccountMetrics, MetricsExporter, MetricsSnapshot, ProcessMetrics
from ops.runtime.env import RuntimeEnv
from ops.store.errors import StorageUnavailable
from ops.store.incidents import open_records, set_detail

if TYPE_CHECKING:
    from ops.store.bufferwatch import BufferWatch
    from ops.store.retention import Pruner

log = logging.getLogger(__name__)

IO_TIMEOUT_S = 4.0  # every read/write/RPC of a pass
SWEEP_EVERY_S = 15.0  # the incident sweep (ops/core/incidents.py) at most this often
ACTIVITY_EVERY_S = 10.0  # orders/fills today (a heavier query) at most this often
def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _runs_by_outcome(counters: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in counters.items():
        field = key.rsplit(".", 1)[-1]
        if field.startswith("runs_") and isinstance(value, int | float):
            outcome = field.removeprefix("runs_")
            out[outcome] = out.get(outcome, 0) + int(value)
    return out


def _reads_from(sources: set[str]) -> str:
    return ("buffer" if "buffer" in sources else
            "postgres+buffer" if "postgres+buffer" in sources else "postgres")


@dataclasses.dataclass
class Reads:
    """What a pass read from the Store (Postgres, or the buffer during an outage)."""

    heartbeats: dict[str, Heartbeat]
    runs: dict[str, RunRecord]
    paused: dict[str, bool]  # account -> kill switch engaged
    reads_from: str

    def paused_role(self, account: str | None, role: str) -> bool:
        """Held back by the account's kill switch: only the dispatcher's work stops (the
        stream and the position manager keep working and are judged as usual), as in
        `ops status`."""
        return role in PAUSABLE_ROLES and bool(account and self.paused.get(account))


class Overseer:
    """A driver's memory between passes, and everything it does but observe and kill."""

    def __init__(
        self,
        env: RuntimeEnv,
        config: Config,
        store: Any,
        outbox: Outbox,
        *,
        name: str,
        acts: bool,
        sinks: list[str],
        exporter: MetricsExporter | None = None,
        worker: AlertWorker | None = None,
        deadman: DeadmanPinger | None = None,
    ) -> None:
        self.env = env
        self.config = config
        self.name = name  # "watchdog" | "monitor": who closes incidents, in logs
        self.acts = acts
        self.policy = Policy.from_config(config.watchdog, acts=acts)
        self.store = store
        self.outbox = outbox
        self.sink_names = sinks
        self.exporter = exporter
        self.worker = worker
        self.deadman = deadman
        self.host = socket.gethostname()
        self.state: dict[str, Tracked] = {}
        self.statuses: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self.opened: dict[str, int] = {}
        self.passes = 0
        self.last_pass_ok: float | None = None  # monotonic
        self._adopted = False
        self._skip_reason: str | None = None
        self._db_down_since: float | None = None
        self._others: dict[str, Any] = {}  # role incidents seen open, by id
        self._swept_at: float | None = None  # monotonic time of the last incident sweep
        self._activity: dict[str, tuple[int, int]] | None = None
        self._activity_at = 0.0

    def apply_config(self, new: Config) -> None:
        """Judge with `new` from now on (gap bounds follow the roles' reloaded intervals)."""
        self.config = new
        self.policy = Policy.from_config(new.watchdog, acts=self.acts)

    def healthy(self) -> bool:
        """For the dead-man ping: a recent pass, nothing stalled, failing or down, no own
        incident."""
        if self.last_pass_ok is None or time.monotonic() - self.last_pass_ok > 10.0:
            return False
        if any(s in ("stalled", "failing", "down") for s in self.statuses.values()):
            return False
        return not any(t.incident is not None for t in self.state.values())

    async def _io(self, what: str, aw: Any) -> Any:
        async with asyncio.timeout(IO_TIMEOUT_S):
            try:
                return await aw
            except TimeoutError:
                raise TimeoutError(f"{what} took longer than {IO_TIMEOUT_S}s") from None

    # --- reads -----------------------------------------------------------------------------

    async def latest_runs(self, names: list[str]) -> tuple[dict[str, RunRecord], str]:
        """The last completed run of each named process: one index probe per process
        (`Store.latest_runs_of`), so a 1 s pass stays within its timeouts however long
        the ledger grows; the Store's merged read during an outage or a replay."""
        snap = await self.store.latest_runs_of(names, timeout_s=IO_TIMEOUT_S)
        return {r.process: r for r in snap.rows}, snap.source

    async def read(self, names: list[str]) -> Reads:
        """Heartbeats, the last completed run of each of `names`, and kill switches."""
        hbs = await self._io("heartbeats", self.store.heartbeats())
        runs, runs_source = await self._io("latest runs", self.latest_runs(names))
        paused: dict[str, bool] = {}
        sources = {hbs.source, runs_source}
        for account in self.config.accounts:
            ctl = await self._io(f"controls {account}", self.store.controls(account))
            sources.add(ctl.source)
            paused[account] = kill_switch_in(ctl.rows) is not KillSwitch.OFF
        return Reads({h.process: h for h in hbs.rows}, runs, paused, _reads_from(sources))

    def failure(self, hb: Heartbeat | None, account: str | None) -> str | None:
        """Failing, as `ops status` judges it (ops.core.health), with the cause in words."""
        return None if hb is None else process_failure(self.config, hb.counters, account)

    def storage_refused(self, interval_s: float) -> bool:
        """Whether to skip judging: our own writes are stored nowhere (Postgres down,
        buffer disk full), so nobody's heartbeat can be stored and all go stale together;
        they would be judged hung one by one as each crosses the bound. No judging until
        storage is back for a stale bound."""
        wcfg = self.config.watchdog
        stale_s = max([wcfg.heartbeat_stale_s, *wcfg.heartbeat_stale_by_role_s.values()])
        if not self.store.refused_within(stale_s + interval_s):
            return False
        text = "storage unavailable: no heartbeat can be stored (see buffer-unwritable)"
        if text != self._skip_reason:
            log.error("%s: passes skipped, %s", self.name, text)
        self._skip_reason = text
        return True

    def skipped(self, text: str) -> None:
        """A pass skipped for `text`: said once per distinct reason, not every pass."""
        if text != self._skip_reason:
            log.warning("%s: pass skipped: %s", self.name, text)
        self._skip_reason = text

    async def adopt(self) -> None:
        """Once: continue (and later close) the incidents a previous instance opened."""
        if self._adopted:
            return
        snap = await self._io("open incidents", self.store.open_incidents())
        found = {i.dedupe_key: (i.kind, i.opened_at.timestamp(), i.restarts)
                 for i in snap.rows if i.dedupe_key}
        self.state = adopt_open(self.state, found)
        if found:
            log.info("%s: resuming %d open incident(s) of a previous watchdog or monitor",
                     self.name, sum(1 for k in found if k.startswith("watchdog:")))
        self._adopted = True

    # --- one pass, after observing -------------------------------------------------------------

    async def conclude(
        self,
        observed: list[Observed],
        events: Sequence[ProcessEvent],
        reads: Reads,
        now: datetime,
        t0: float,
        shown: Mapping[str, str] | None = None,
        *,
        judge: bool = True,
    ) -> None:
        """Decide on what this pass observed and carry it out; `shown`: the state word of
        each process for the metrics when it is not its gap input's (heartbeat-observed).
        `judge` false: no verdict on any process this pass (what was observed cannot be
        trusted), only the database decision; the last verdicts stand."""
        actions: list[Action] = []
        statuses: Mapping[str, Any]
        if judge:
            self._skip_reason = None
            decision = decide(observed, events, self.state, self.policy, now.timestamp())
            self.state = decision.state
            self.statuses = dict(decision.statuses)
            actions += decision.actions
            statuses = decision.statuses
        else:
            statuses = {o.name: self.statuses.get(o.name, "starting") for o in observed}
        actions += await self._database_actions(now.timestamp(), reads.heartbeats)
        for action in actions:
            try:
                await self.act(action, now)
            except Exception:
                log.exception("%s: action %s failed", self.name, action)
        await self._sweep(now)
        await self._role_incidents(now)
        self.passes += 1
        self.last_pass_ok = time.monotonic()
        if self.exporter is not None:
            await self._publish(observed, statuses, reads, now, time.monotonic() - t0,
                                shown or {})

    async def _database_actions(self, now: float,
                                heartbeats: Mapping[str, Heartbeat]) -> list[Action]:
        if self.store.database_reachable:
            self._db_down_since = None
        elif self._db_down_since is None:
            self._db_down_since = now
        pending = (await self._io("buffer status", self.store.buffer_status())).pending
        held = sorted(p.describe() for hb in heartbeats.values() if hb.role == "dispatcher"
                      and (p := dispatch_pause(hb.counters, hb.account)) is not None)
        actions, st = decide_database(self._db_down_since, self.state.get(DATABASE, Tracked()),
                                      self.policy, now, pending, held)
        if st.incident is not None or st.healthy_since is not None:
            self.state[DATABASE] = st
        else:
            self.state.pop(DATABASE, None)
        return actions

    # --- actions ---------------------------------------------------------------------------

    async def act(self, action: Action, now: datetime) -> None:
        """Carry out an incident action (the watchdog adds kills and starts)."""
        if isinstance(action, OpenIncident):
            log.error("INCIDENT OPEN %s on %s: %s", action.kind,
                      action.process or action.account or "the host", action.detail)
            await self._io("open incident", self.store.open_incident(
                action.kind, detail=action.detail, process=action.process,
                account=action.account, dedupe_key=action.key, at=now))
            self.opened[action.kind] = self.opened.get(action.kind, 0) + 1
            await self._alert("opened", action.key, action.kind, action.process,
                              action.account, action.detail, now)
        elif isinstance(action, BumpIncident):
            log.warning("incident %s: restart counted: %s", action.key, action.detail)
            await self._io("bump incident", self.store.bump_incident(
                dedupe_key=action.key, detail=action.detail))
            if not self.acts:  # the watchdog counts the restarts it makes, when it makes them
                self.restarts[action.process] = self.restarts.get(action.process, 0) + 1
        elif isinstance(action, NoteIncident):
            log.error("INCIDENT UPDATE on %s: %s", action.process, action.detail)
            await self._note(action)
            memo = self.state.get(action.process, Tracked()).incident
            await self._alert("update", action.key, memo.kind if memo else "incident",
                              action.process, None, action.detail, now)
        elif isinstance(action, CloseIncident):
            log.warning("INCIDENT CLOSED %s on %s after %.0fs, %d restart(s): %s",
                        action.kind, action.process or action.account or "the host",
                        action.duration_s, action.restarts, action.detail)
            await self._io("close incident", self.store.close_incident(
                dedupe_key=action.key, at=now, reason=action.detail, by=self.name))
            opened = datetime.fromtimestamp(now.timestamp() - action.duration_s, UTC)
            await self._alert("closed", action.key, action.kind, action.process,
                              action.account, action.detail, opened,
                              duration_s=action.duration_s,
                              restarts=action.restarts)
        else:
            log.error("%s: cannot carry out %s (this driver does not restart processes)",
                      self.name, action)

    async def _note(self, action: NoteIncident) -> None:
        """Replace the open incident's detail (Postgres only; during an outage the log and
        the alert carry it, and the incident keeps its first detail)."""
        try:
            await self.store.direct(set_detail, action.key, action.detail,
                                    timeout_s=IO_TIMEOUT_S)
        except StorageUnavailable:
            pass

    async def _alert(self, event: AlertEvent, key: str, kind: str, process: str | None,
                     account: str | None, detail: str, opened_at: datetime,
                     duration_s: float | None = None, restarts: int = 0) -> None:
        if not self.sink_names:
            return
        memo = self.state.get(process or "", Tracked()).incident
        if event == "opened" and memo is not None:
            opened_at = datetime.fromtimestamp(memo.opened_at, UTC)
        alert = Alert(event=event, key=key, kind=kind, process=process,
                      account=account, detail=detail, opened_at=opened_at,
                      duration_s=duration_s, restarts=restarts, host=self.host)
        await self._io("alert outbox", self.outbox.enqueue(alert, self.sink_names))

    async def _sweep(self, now: datetime) -> None:
        """Close the incidents whose condition cleared and that nobody else closes
        (ops/core/incidents.py): events not seen again, raisers gone. Postgres only, at most
        every SWEEP_EVERY_S."""
        if (self._swept_at is not None
                and time.monotonic() - self._swept_at < SWEEP_EVERY_S):
            return
        self._swept_at = time.monotonic()
        try:
            records = await self._io("incidents", self.store.direct(open_records))
        except (StorageUnavailable, TimeoutError):
            return
        except Exception:
            log.exception("%s: incident sweep failed", self.name)
            return
        for s in sweep(records, now=now, host=self.host, alive=_pid_alive,
                       policy=SweepPolicy()):
            log.warning("INCIDENT CLEARED %s: %s", s.incident_id, s.reason)
            await self._io("close incident", self.store.close_incident(
                incident_id=s.incident_id, at=now, reason=s.reason, by=self.name))

    async def _role_incidents(self, now: datetime) -> None:
        """Alert on incidents other processes opened (and on their closing)."""
        snap = await self._io("open incidents", self.store.open_incidents())
        current = {i.id: i for i in snap.rows
                   if not (i.dedupe_key or "").startswith("watchdog:")}
        for iid, inc in current.items():
            if iid not in self._others:
                log.error("INCIDENT OPEN %s on %s: %s", inc.kind, inc.process or inc.account,
                          inc.detail)
                await self._alert("opened", inc.dedupe_key or iid, inc.kind, inc.process,
                                  inc.account, inc.detail, inc.opened_at)
        if snap.source == "postgres":
            for iid, inc in self._others.items():
                if iid not in current:
                    dur = (now - inc.opened_at).total_seconds()
                    log.warning("INCIDENT CLOSED %s on %s after %.0fs", inc.kind,
                                inc.process or inc.account, dur)
                    await self._alert("closed", inc.dedupe_key or iid, inc.kind, inc.process,
                                      inc.account, inc.detail, inc.opened_at, duration_s=dur,
                                      restarts=inc.restarts)
            self._others = current
        else:
            self._others.update(current)

    async def pass_once(self) -> None:
        """One observation pass (the driver's)."""
        raise NotImplementedError

    async def pass_with_upkeep(self, watch: BufferWatch, pruner: Pruner) -> None:
        """The driver's ticker job: a pass, then the outage buffer's probe (whatever the
        pass did), then a history-retention step (a few indexed deletes, hourly:
        ops/store/retention.py; a failed one is logged, the next pass tries again)."""
        try:
            await self.pass_once()
        finally:
            await self.buffer_health(watch)
        try:
            await pruner.step(datetime.now(UTC))
        except Exception:
            log.exception("retention step failed; the next pass tries again")

    async def buffer_health(self, watch: BufferWatch) -> None:
        """The outage buffer's write probe (`ops.store.bufferwatch.BufferWatch`). A stored
        incident is alerted by `_role_incidents` like a role's; one that Postgres could not
        take either (it is down too) is alerted here, so a full disk is never silent."""
        change = await self._io("buffer probe", watch.check())
        if change is not None and not change.stored:
            await self._alert(change.event, watch.key, "buffer-unwritable", None, None,
                              change.detail, datetime.now(UTC))

    # --- metrics ---------------------------------------------------------------------------

    async def _publish(self, observed: list[Observed], statuses: Mapping[str, Any],
                       reads: Reads, now: datetime, took: float,
                       shown: Mapping[str, str]) -> None:
        assert self.exporter is not None
        buf = await self._io("buffer status", self.store.buffer_status())
        incidents = await self._io("open incidents", self.store.open_incidents())
        by_kind: dict[str, int] = {}
        for i in incidents.rows:
            by_kind[i.kind] = by_kind.get(i.kind, 0) + 1
        await self._refresh_activity(now)
        procs = []
        for o in observed:
            hb = reads.heartbeats.get(o.name)
            run = reads.runs.get(o.name)
            counters = dict(hb.counters) if hb is not None else {}
            procs.append(ProcessMetrics(
                name=o.name, account=o.account, role=o.role,
                state=shown.get(o.name, o.gap.state),
                status=statuses[o.name], heartbeat_age_s=o.gap.heartbeat_age_s,
                last_run_age_s=o.gap.last_run_age_s,
                expected_interval_s=o.gap.expected_interval_s,
                last_run_lateness_s=run.lateness_s if run else None,
                last_run_outcome=run.outcome if run else None,
                runs=_runs_by_outcome(counters),
                progress={k: float(v) for k, v in counters.items()
                          if isinstance(v, int | float) and not isinstance(v, bool)},
            ))
        w = self.worker
        outbox = await self._io("outbox status", self.outbox.status())
        self.exporter.publish(MetricsSnapshot(
            as_of=now.timestamp(), pass_duration_s=took, processes=procs,
            open_incidents=by_kind, incidents_opened=dict(self.opened),
            restarts=dict(self.restarts), database_reachable=self.store.database_reachable,
            reads_from=reads.reads_from, buffer_pending=buf.pending,
            buffer_oldest_age_s=buf.oldest_age_s, buffer_dead=buf.dead,
            accounts=[AccountMetrics(a, *(self._activity or {}).get(a, (0, 0)))
                      if self._activity is not None else AccountMetrics(a, None, None)
                      for a in self.config.accounts],
            alerts_sent=dict(w.stats.sent) if w else {},
            alerts_failed=dict(w.stats.failed) if w else {},
            alerts_dead=dict(w.stats.dead) if w else {},
            outbox_pending=outbox.pending,
            deadman_pings=self.deadman.pings if self.deadman else 0,
            deadman_failures=self.deadman.failures if self.deadman else 0,
        ))

    async def _refresh_activity(self, now: datetime) -> None:
        if time.monotonic() - self._activity_at < ACTIVITY_EVERY_S:
            return
        self._activity_at = time.monotonic()
        from ops.store.status import account_activity

        try:
            acts = await self._io("account activity",
                                  self.store.direct(account_activity, now))
        except (StorageUnavailable, TimeoutError):
            self._activity = None  # unknown during an outage, never a made-up zero
            return
        self._activity = {a: (v.orders_today, v.fills_today) for a, v in acts.items()}

    def counters(self) -> dict[str, int | float | str]:
        out: dict[str, int | float | str] = {
            "passes": self.passes,
            "open_incidents": sum(1 for t in self.state.values() if t.incident is not None),
            "restarts": sum(self.restarts.values()),
        }
        if self.worker is not None:
            out.update(self.worker.counters())
        return out


__all__ = ["IO_TIMEOUT_S", "Overseer", "Reads"]
