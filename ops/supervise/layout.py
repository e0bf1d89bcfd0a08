"""Which layout runs the processes, and what is expected to run in the orchestrated one.

Two layouts (docs/scaling.md): **supervisord** (`ops up`: one host, the watchdog event
listener restarts hung processes) and **orchestrated** (one role per container on ECS or
Kubernetes, the orchestrator restarts through `ops health`, the monitor role judges
every process from its heartbeat). `[deploy] layout` says which; "auto" looks: supervisord
when its socket under this OPS_HOME answers, or when `ops up` rendered its config here (a
supervised host whose supervisord died is still that layout, and `ops status` must say
"supervisord is not running" rather than judge it as another one); else orchestrated.

No I/O here beyond a stat of OPS_HOME: the callers ask supervisord (they do anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.supervise.supervisor import ACCOUNT_ROLES, SHARED_ROLES, conf_path, program_name

Layout = Literal["supervisord", "orchestrated"]
#: The monitor role's process name (`ops run monitor`, one per deployment).
MONITOR: Final = "monitor"


@dataclass(frozen=True, slots=True)
class LayoutChoice:
    layout: Layout
    how: str  # "configured" or "detected: <why>", for the report

    def describe(self) -> str:
        return f"{self.layout} ({self.how})"


def rendered_here(env: RuntimeEnv) -> bool:
    """Whether `ops up` rendered supervisord's config under this OPS_HOME."""
    return conf_path(env).exists() or any((env.home / "supervisor").glob("*.conf"))


def configured(config: Config) -> Layout | None:
    """The layout the config names, or None for "auto"."""
    layout = config.deploy.layout
    return None if layout == "auto" else layout


def resolve(env: RuntimeEnv, config: Config, supervisord_answers: bool) -> LayoutChoice:
    """The layout in force, given whether supervisord answered on this OPS_HOME's socket
    (ask it only when `configured(config)` is None or "supervisord")."""
    fixed = configured(config)
    if fixed is not None:
        return LayoutChoice(fixed, "configured")
    if supervisord_answers:
        return LayoutChoice("supervisord", "detected: supervisord answers")
    if rendered_here(env):
        return LayoutChoice("supervisord", f"detected: `ops up` rendered {conf_path(env)}, "
                                           "but supervisord does not answer")
    return LayoutChoice("orchestrated", "detected: no supervisord under OPS_HOME")


@dataclass(frozen=True, slots=True)
class Expected:
    name: str
    account: str | None
    role: str


def orchestrated_processes(config: Config, *, monitor: bool = True) -> list[Expected]:
    """Every process the orchestrated layout runs for this config: the shared roles, the
    monitor (unless `monitor` is false: the monitor does not judge itself), and each
    enabled account's roles."""
    out = [Expected(program_name(r, None), None, r) for r in SHARED_ROLES]
    if monitor:
        out.append(Expected(MONITOR, None, MONITOR))
    for account in sorted(config.enabled_accounts()):
        out += [Expected(program_name(r, account), account, r) for r in ACCOUNT_ROLES]
    return out


__all__ = ["MONITOR", "Expected", "Layout", "LayoutChoice", "configured",
           "orchestrated_processes", "rendered_here", "resolve"]
