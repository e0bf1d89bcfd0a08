"""`ops run monitor`: the watchdog's judging where no supervisord runs.

In the orchestrated layout (one role per container, ECS or Kubernetes) the supervisord
event listener does not exist, and the orchestrator only restarts what `ops health` calls
unhealthy. The monitor is the rest of the watchdog, as a role like any other (one per
deployment: the runtime's advisory lock makes a second copy a standby; heartbeat, run
ledger and ticker as every role): every `[monitor] interval_s` it reads the heartbeat row
and last completed run of every process the config implies (`ops.supervise.layout`), observes each
from its heartbeat alone (`ops.core.watchdog.observe_heartbeat`: fresh -> RUNNING, old ->
STALE, none after the startup grace -> MISSING), and hands them to the same decisions as
the watchdog (`ops.core.watchdog.decide` with `Policy.acts` false) through the same driver code
(`ops.roles.oversight.Overseer`): the same verdicts as `ops status`, the same incidents
(kinds and dedupe keys: one incident whoever raises it), alerts through the outbox and
its sinks, alerts on incidents the roles open, the incident sweep, the database-
unreachable incident, the outage buffer's probe, history retention, the dead-man ping
while everything is healthy, and the Prometheus metrics on its loopback port.

It never kills or starts anything: restarts are the orchestrator's (its health check),
and the monitor sees them as a new incarnation in the heartbeat, counted on the open
incident (a failing process restarted `watchdog.failing_restarts` times escalates).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ops.core.config import Config
from ops.core.watchdog import Observed, observe_heartbeat, shown_state
from ops.notify.alerts import (
    AlertWorker,
    DeadmanPinger,
    Outbox,
    default_path,
    sinks_from_config,
)
from ops.notify.metrics import MetricsExporter, MetricsServer, serve
from ops.roles.oversight import Overseer
from ops.roles.runtime import RoleContext
from ops.runtime.daemon import Service
from ops.runtime.env import RuntimeEnv
from ops.supervise.layout import MONITOR, Expected, configured, orchestrated_processes

log = logging.getLogger(__name__)

PROCESS_NAME = MONITOR
PASS_TIMEOUT_S = 20.0  # a pass stuck on I/O is abandoned (recorded as a timeout run)


class Monitor(Overseer):
    """The heartbeat driver: observes from heartbeat rows, never kills."""

    def __init__(
        self,
        env: RuntimeEnv,
        config: Config,
        store: Any,
        outbox: Outbox,
        *,
        sinks: list[str],
        exporter: MetricsExporter | None = None,
        worker: AlertWorker | None = None,
        deadman: DeadmanPinger | None = None,
        started: float | None = None,
    ) -> None:
        super().__init__(env, config, store, outbox, name=PROCESS_NAME, acts=False,
                         sinks=sinks, exporter=exporter, worker=worker, deadman=deadman)
        # Epoch s: a process with no heartbeat row is MISSING once this is startup_grace_s
        # old (before that: starting; every container may still be pulling its image).
        self.started = time.time() if started is None else started
        self.unseen: list[str] = []  # expected processes with no heartbeat row at all

    def healthy(self) -> bool:
        """For the dead-man ping: the watchdog's rule, and every expected process seen
        beating (one not seen yet is "starting" within the grace, but nothing proves it
        runs: a monitor restarting in a loop must not ping through its graces)."""
        return not self.unseen and super().healthy()

    def expected(self) -> list[Expected]:
        return orchestrated_processes(self.config, monitor=False)

    def apply_config(self, new: Config) -> None:
        if new.alerts != self.config.alerts or new.metrics != self.config.metrics:
            log.warning("monitor: [alerts]/[metrics] changed: restart the monitor to apply")
        super().apply_config(new)

    async def pass_once(self) -> None:
        t0 = time.monotonic()
        if self.storage_refused(self.config.monitor.interval_s):
            return
        await self.adopt()
        expected = self.expected()
        reads = await self.read([e.name for e in expected])
        now = datetime.now(UTC)
        observed: list[Observed] = []
        for e in expected:
            hb = reads.heartbeats.get(e.name)
            observed.append(observe_heartbeat(
                name=e.name, account=e.account, role=e.role, heartbeat=hb,
                run=reads.runs.get(e.name),
                expected_interval_s=self.config.role_interval(e.role, e.account),
                paused=reads.paused_role(e.account, e.role), now=now,
                startup_grace_s=self.policy.startup_grace_s, watching_since=self.started,
                failure=self.failure(hb, e.account)))
        self.unseen = [e.name for e in expected if e.name not in reads.heartbeats]
        shown = {o.name: shown_state(o, self.policy) for o in observed}
        # Postgres unreachable: the heartbeats read come from this container's own outage
        # buffer, which holds no other process's beats (each container has its own), so
        # everyone would look missing or stale. No verdicts until Postgres answers; the
        # database-unreachable incident says what is going on.
        blind = reads.reads_from == "buffer"
        if blind:
            self.skipped("Postgres unreachable: other processes' heartbeats cannot be read; "
                         "no verdicts until it answers")
        await self.conclude(observed, [], reads, now, t0, shown, judge=not blind)


class _Delivery:
    """The alert worker as a service, owning what must close once it has ended: the outbox
    and the metrics server (a role has no shutdown hook of its own)."""

    name = "alert-outbox"

    def __init__(self, worker: AlertWorker, outbox: Outbox,
                 server: MetricsServer | None) -> None:
        self.worker = worker
        self.outbox = outbox
        self.server = server

    def request_stop(self) -> None:
        self.worker.request_stop()

    async def run(self) -> None:
        try:
            await self.worker.run()
        finally:
            if self.server is not None:
                await asyncio.to_thread(self.server.close)
            await self.outbox.close()


def _supervisord_answers(env: RuntimeEnv) -> bool:
    from ops.supervise.supervisor import SupervisorClient, SupervisorUnavailable

    try:
        SupervisorClient.for_env(env, timeout_s=1.0).pid()
    except SupervisorUnavailable:
        return False
    return True


async def build(ctx: RoleContext) -> Sequence[Service]:
    """The monitor's services: the pass ticker (run by the runtime), alert delivery, the
    dead-man ping; the metrics server is started here."""
    from ops.store.bufferwatch import BufferWatch
    from ops.store.retention import Pruner

    config = ctx.config
    if configured(config) != "orchestrated" and \
            await asyncio.to_thread(_supervisord_answers, ctx.env):
        log.warning("monitor: supervisord answers under this OPS_HOME: its watchdog already "
                    "judges these processes, so both would alert; run the monitor only in "
                    "the orchestrated layout")
    exporter = MetricsExporter() if config.metrics.enabled else None
    server: MetricsServer | None = None
    if exporter is not None:  # first: a port in use fails the build before anything opens
        server = await asyncio.to_thread(serve, exporter, config.metrics.host,
                                         config.metrics.port)
        log.info("monitor: metrics on http://%s:%d/metrics", config.metrics.host, server.port)
    outbox = await Outbox.open(default_path(ctx.env.home))
    sinks = sinks_from_config(config.alerts)
    worker = AlertWorker(outbox, sinks, retry=config.alerts.retry.to_backoff())
    mon = Monitor(ctx.env, config, ctx.store, outbox, sinks=[s.name for s in sinks],
                  exporter=exporter, worker=worker)
    services: list[Service] = []
    if config.alerts.deadman_url:
        mon.deadman = DeadmanPinger(config.alerts.deadman_url, config.alerts.deadman_interval_s,
                                    mon.healthy, config.alerts.timeout_s)
        services.append(mon.deadman)
    buffer_watch = BufferWatch(ctx.store, host=mon.host)
    pruner = Pruner.of(ctx.store, timedelta(days=config.database.history_retention_days))

    async def job(_slot: object) -> None:
        await mon.pass_with_upkeep(buffer_watch, pruner)

    ctx.ticker(PROCESS_NAME, lambda c: c.monitor.interval_s, job, market_gate=False,
               job_timeout_s=PASS_TIMEOUT_S)
    ctx.add_counters(PROCESS_NAME, lambda: {
        **mon.counters(), **{f"pruned.{t}": n for t, n in pruner.deleted.items()}})
    ctx.on_reload(mon.apply_config)
    services.append(_Delivery(worker, outbox, server))
    log.info("monitor: judging %d process(es) every %gs (stale bound %gs); %d alert "
             "sink(s)%s", len(mon.expected()), config.monitor.interval_s,
             config.watchdog.heartbeat_stale_s, len(sinks),
             ", dead-man ping on" if mon.deadman else "")
    return services
