"""What the dashboard *does*: supervisord process control, kill switch, run-now, accepting
the broker's positions, acknowledging an incident.

Thin async wrappers over the core, so the dashboard writes exactly what the CLI writes:
the kill switch through `Store.set_control(account, "kill_switch", {"mode": ...})` like
`ops pause/resume` (ops.commands.control), run-now through `ops.roles.runtime.request_run_now`,
an accept through `ops.commands.control.accept_positions` like `ops positions accept`, an
acknowledgement through `ops.store.incidents.ack_incident` like `ops incidents ack`, process
control through `SupervisorClient` (sync XML-RPC, run in a thread).
Confirmation lives in the UI (tui/screens/), not here.
"""

from __future__ import annotations

import asyncio
import importlib
from datetime import datetime
from decimal import Decimal
from typing import Literal

from ops.commands import control as core
from ops.commands.control import read_kill_switch
from ops.commands.incidents import ending, short_id, where_of
from ops.core.models import KILL_SWITCH_KEY, KillSwitch
from ops.runtime.env import current_user
from ops.store import StorageUnavailable, Store
from ops.store.incidents import ack_incident, find_incident
from ops.store.positions import AcceptRecord
from ops.supervise.supervisor import SupervisorClient
from tui.data import READ_TIMEOUT_S, own_client, utcnow

ProcessAction = Literal["restart", "stop", "start"]
ACTION_TIMEOUT_S = 40.0
#: How long an accept waits for the position manager to apply it (it syncs every few
#: seconds); read at call time, so tests can shorten it.
ACCEPT_WAIT_S = 20.0


def operator() -> str:
    """`dash:<user>`: who the controls row says made the change."""
    return f"dash:{current_user()}"


async def set_kill_switch(store: Store, account: str, mode: KillSwitch,
                          by: str | None = None) -> KillSwitch:
    """Set the account's kill switch; returns the mode it had before."""
    before = await read_kill_switch(store, account)
    await store.set_control(account, KILL_SWITCH_KEY, {"mode": mode.value}, by=by or operator())
    return before


async def run_now(store: Store, account: str | None, role: str, by: str | None = None) -> None:
    """Ask the running role process to run its job now (the runtime's control row, so it
    works for a process on another host too)."""
    # Imported here: ops.roles.runtime pulls in the broker stack, which the dashboard
    # otherwise never needs.
    runtime = await asyncio.to_thread(importlib.import_module, "ops.roles.runtime")
    await runtime.request_run_now(store, account, role, by or operator())


def _process_action(client: SupervisorClient, action: ProcessAction, qualified: str) -> str:
    if action == "start":
        client.start(qualified, wait=True)
        return f"started {qualified}"
    if action == "stop":
        client.stop(qualified, wait=True)
        return f"stopped {qualified}"
    if client.process(qualified).state in ("RUNNING", "STARTING", "BACKOFF"):
        client.stop(qualified, wait=True)
    client.start(qualified, wait=True)
    return f"restarted {qualified}"


async def process_action(client: SupervisorClient, action: ProcessAction,
                         qualified: str) -> str:
    """Restart/stop/start one supervisord process; returns a one-line result.
    Raises SupervisorUnavailable or xmlrpc Fault (e.g. NOT_RUNNING) with supervisord's words."""
    # stop waits up to stopwaitsecs (10 s), start up to startsecs: a generous timeout.
    return await asyncio.to_thread(_process_action, own_client(client, ACTION_TIMEOUT_S),
                                   action, qualified)


async def tail_log(client: SupervisorClient, qualified: str, length: int = 32768) -> str:
    return await asyncio.to_thread(own_client(client, READ_TIMEOUT_S).tail, qualified, length)


async def accept_positions(store: Store, account: str, by: str | None = None,
                           within_s: float | None = None) -> tuple[str, AcceptRecord | None]:
    """Ask `account`'s position manager to take the broker's positions as the truth and
    wait for it (`ACCEPT_WAIT_S`): (request id, the applied record or None when not applied
    in time). Raises `ops.commands.control.AcceptFailed` when Postgres is unreachable."""
    wait = ACCEPT_WAIT_S if within_s is None else within_s
    return await core.accept_positions(store, account, by=by or operator(), within_s=wait)


def accept_summary(record: AcceptRecord) -> str:
    """`describe_accept` in one line for a notice: "large: broker positions accepted
    (AAPL 5 -> 8)"; the symbols that changed, or that nothing did."""
    before, after = record.before or {}, record.after or {}
    changed = [f"{sym} {_num(before.get(sym))} -> {_num(after.get(sym))}"
               for sym in sorted(set(before) | set(after))
               if before.get(sym, Decimal(0)) != after.get(sym, Decimal(0))]
    what = "; ".join(changed) if changed else "no change: they already agreed"
    by = f" by {record.applied_by}" if record.applied_by else ""
    return f"{record.account}: broker positions accepted{by} ({what})"


def _num(x: Decimal | None) -> str:
    return format(x.normalize(), "f") if x else "0"


async def acknowledge_incident(store: Store, incident_id: str, by: str | None = None,
                               at: datetime | None = None) -> tuple[bool, str]:
    """Acknowledge the open incident (as `ops incidents ack`): it stays listed, but no
    longer counts as an alarm. (acknowledged now, or already; what happened in words).
    Needs Postgres: an acknowledgement is never buffered, it is the operator's word on the
    incident as it stands."""
    who = by or operator()
    now = at or utcnow()
    try:
        if await store.direct(ack_incident, incident_id, who, now):
            return True, (f"incident {short_id(incident_id)} acknowledged by {who}: it stays "
                          "listed, no longer an alarm")
        rec = await store.direct(find_incident, incident_id)
    except StorageUnavailable:
        return False, ("Postgres is unreachable: not acknowledged (acknowledgements are "
                       "recorded there)")
    if rec is None:
        return False, f"incident {short_id(incident_id)} no longer exists"
    name = f"incident {short_id(rec.id)} ({rec.kind}, {where_of(rec.process, rec.account)})"
    if not rec.is_open:
        return False, f"{name} is already {ending(rec, now)}: nothing to acknowledge"
    return True, f"{name} was already acknowledged by {rec.acked_by or '?'}"
