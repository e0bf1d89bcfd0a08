"""What the dashboard *does*: supervisord process control, kill switch, run-now.

Thin async wrappers over the core, so the dashboard writes exactly what the CLI writes:
the kill switch through `Store.set_control(account, "kill_switch", {"mode": ...})` like
`ops pause/resume` (ops.control), run-now through `ops.roles.runtime.request_run_now`,
process control through `SupervisorClient` (sync XML-RPC, run in a thread).
Confirmation lives in the UI (tui/screens/confirm.py), not here.
"""

from __future__ import annotations

import asyncio
import getpass
import importlib
import os
from typing import Literal

from ops.control import KILL_SWITCH_KEY, read_kill_switch
from ops.models import KillSwitch
from ops.store import Store
from ops.supervisor import SupervisorClient
from tui.data import READ_TIMEOUT_S, own_client

ProcessAction = Literal["restart", "stop", "start"]
ACTION_TIMEOUT_S = 40.0


def operator() -> str:
    """`dash:<user>`: who the controls row says made the change."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = f"uid{os.getuid()}"
    return f"dash:{user}"


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
