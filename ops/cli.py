"""The `ops` command: parses arguments, calls the modules that do the work, prints.

Each subcommand imports its module lazily so that `ops status` does not pay for alpaca-py
and `ops sim` does not pay for asyncpg. Handlers return the process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _db_migrate(args: argparse.Namespace) -> int:
    from ops.store.migrate import cli_migrate

    return cli_migrate(args)


def _sim(args: argparse.Namespace) -> int:
    from ops.commands.sim import cli_main

    return cli_main(args)


def tcp_port(text: str) -> int:
    """argparse type: a TCP port number, 0-65535 (0: the OS picks one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def _lazy(module: str, func: str) -> Handler:
    """A handler that imports `module` only when its subcommand runs."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        fn: Handler = getattr(importlib.import_module(module), func)
        return fn(args)

    return handler


#: `ops run` / `ops health` roles; "monitor" is the orchestrated layout's watcher (one per
#: deployment, no --account).
ROLE_CHOICES = ("stream", "dispatcher", "position-manager", "signal-engine", "monitor")
KILL_MODES = ("halt", "reduce-only", "flatten", "flatten-all")


def _add_stack_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up",
        help="start the whole stack under supervisord; returns once every process has "
        "reported a heartbeat",
    )
    up.add_argument("--demo", action="store_true",
                    help="also run the bundled simulator and use its throwaway demo keys")
    up.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="how long to wait for every heartbeat (default 60)")
    up.add_argument("--foreground", action="store_true",
                    help="keep supervisord in the foreground (container PID 1)")
    up.add_argument("--port", type=tcp_port, default=None, metavar="P",
                    help="with --demo: serve the simulator on 127.0.0.1:P (0 = a free one); "
                    "default [sim] port, or a free one when that is taken")
    up.set_defaults(handler=_lazy("ops.commands.stack", "cli_up"))

    down = sub.add_parser("down", help="stop everything `ops up` started, embedded Postgres too")
    down.set_defaults(handler=_lazy("ops.commands.stack", "cli_down"))

    status = sub.add_parser(
        "status",
        help="processes, heartbeats, last-run gaps, accounts, database, incidents "
        "(exit 0 healthy, 1 degraded, 2 down)",
    )
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    status.set_defaults(handler=_lazy("ops.commands.status", "cli_status"))

    doctor = sub.add_parser("doctor", help="check config, credentials, accounts, database, "
                            "buffer, supervisord, clock skew and disk; one line per check")
    doctor.set_defaults(handler=_lazy("ops.commands.doctor", "cli_doctor"))

    run = sub.add_parser("run", help="run one role in the foreground (what supervisord runs)")
    run.add_argument("role", choices=ROLE_CHOICES, help="the role to run")
    run.add_argument("--account", metavar="TIER",
                     help="account name from the config (required for per-account roles)")
    run.set_defaults(handler=_lazy("ops.roles.runtime", "cli_run"))

    health = sub.add_parser(
        "health",
        help="per-container health check (ECS healthCheck, Kubernetes probes): exit 0 while "
        "the role's local heartbeat file is fresh and it is not failing; 1 unhealthy, 2 no "
        "heartbeat file yet; one line says why (reads $OPS_HOME/run/health, no database)",
    )
    health.add_argument("role", choices=ROLE_CHOICES, help="the role this container runs")
    health.add_argument("--account", metavar="TIER",
                        help="account name (required for per-account roles)")
    health.add_argument("--ready", action="store_true",
                        help="readiness: also require this instance to hold its singleton "
                        "lock (a standby waiting on it fails)")
    health.set_defaults(handler=_lazy("ops.supervise.healthcheck", "cli_health"))

    watchdog = sub.add_parser(
        "watchdog",
        help="the supervisord event listener that restarts hung processes (run by supervisord)",
    )
    watchdog.set_defaults(handler=_lazy("ops.roles.watchdog", "cli_main"))

    gaps = sub.add_parser("gaps", help="past last-run gaps and incidents")
    gaps.add_argument("--since", default="24h", metavar="DURATION",
                      help="how far back, e.g. 90m, 24h, 7d (default 24h)")
    gaps.add_argument("--json", action="store_true", help="JSON on stdout")
    gaps.set_defaults(handler=_lazy("ops.commands.gaps", "cli_gaps"))


def _add_control_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    signal = sub.add_parser("signal", help="trading signals")
    signal_sub = signal.add_subparsers(dest="signal_command", metavar="SIGNAL_COMMAND",
                                       required=True)
    add = signal_sub.add_parser(
        "add", help="insert a signal for an account's dispatcher and wait for its verdict",
        description="Insert a signal, then wait for the account's dispatcher to decide it and "
        "print the verdict: submitted (with the broker order id), rejected or expired (with "
        "the reason). Arguments the account's risk limits refuse whatever the book holds "
        "(max_qty, options) are refused before anything is queued. Exit codes: 0 "
        "submitted (with --no-wait: recorded); 1 rejected or expired; 2 a bad argument; 3 "
        "no verdict within --wait (still queued: is the dispatcher running?), or only "
        "buffered while Postgres is away; 78 a config error; 130 interrupted while waiting "
        "(the signal stays queued).")
    add.add_argument("--account", required=True, metavar="TIER")
    add.add_argument("--symbol", required=True)
    add.add_argument("--side", required=True, choices=("buy", "sell"))
    size = add.add_mutually_exclusive_group(required=True)
    size.add_argument("--qty", metavar="N", help="shares or contracts")
    size.add_argument("--notional", metavar="USD", help="dollar amount (market/day only)")
    add.add_argument("--type", dest="order_type", default="market",
                     choices=("market", "limit"))
    add.add_argument("--limit-price", metavar="PRICE")
    add.add_argument("--tif", default="day", choices=("day", "gtc"))
    add.add_argument("--expires-in", type=float, metavar="SECONDS",
                     help="refuse the signal if not dispatched within this many seconds")
    add.add_argument("--reduce-only", action="store_true",
                     help="an exit: refused if, when dispatched, it would open, grow or flip "
                          "the position (a late exit never opens a short)")
    add.add_argument("--strategy", default="manual")
    add.add_argument("--key", metavar="IDEMPOTENCY_KEY",
                     help="a second `signal add` with the same key is a no-op")
    waiting = add.add_mutually_exclusive_group()
    waiting.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                         help="how long to wait for the dispatcher's verdict (default 30)")
    waiting.add_argument("--no-wait", action="store_true",
                         help="print the new signal's id and return at once (exit 0)")
    add.set_defaults(handler=_lazy("ops.commands.control", "cli_signal_add"))

    listing = signal_sub.add_parser(
        "list", help="signals newest first: queued, submitted (with the order), rejected "
        "and expired (with the reason)")
    listing.add_argument("--account", metavar="TIER", help="only this account's")
    listing.add_argument("--status", choices=("queued", "submitted", "rejected", "expired",
                                              "unknown"),
                         help="only those in this state (unknown: sent, the broker's answer "
                         "not settled yet)")
    listing.add_argument("--since", metavar="DURATION",
                         help="only those created within DURATION, e.g. 90m, 24h, 7d")
    listing.add_argument("--limit", type=int, default=50, metavar="N",
                         help="at most N signals, the newest (default 50)")
    listing.add_argument("--json", action="store_true",
                         help="JSON on stdout: every field of each signal")
    listing.set_defaults(handler=_lazy("ops.commands.signals", "cli_signal"))
    show = signal_sub.add_parser("show", help="every field of one signal, the order it "
                                 "became and the dispatcher's reason")
    show.add_argument("id", metavar="ID", help="the signal's id, as `ops signal list` shows it")
    show.add_argument("--json", action="store_true", help="one JSON object on stdout")
    show.set_defaults(handler=_lazy("ops.commands.signals", "cli_signal"))

    pause = sub.add_parser("pause", help="engage an account's kill switch")
    pause.add_argument("account", metavar="TIER")
    pause.add_argument("--mode", choices=KILL_MODES, default="halt",
                       help="halt: no new entries; reduce-only: exits only; flatten: "
                       "cancel the pipeline's orders and close what the pipeline manages "
                       "(external positions untouched); flatten-all: cancel every order "
                       "and close every position, external ones too (needs --yes)")
    pause.add_argument("--yes", action="store_true",
                       help="confirm --mode flatten-all (it sells positions the pipeline "
                       "did not open)")
    pause.set_defaults(handler=_lazy("ops.commands.control", "cli_pause"))
    resume = sub.add_parser("resume", help="release an account's kill switch")
    resume.add_argument("account", metavar="TIER")
    resume.set_defaults(handler=_lazy("ops.commands.control", "cli_resume"))

    positions = sub.add_parser("positions", help="an account's positions: accept the broker's")
    psub = positions.add_subparsers(dest="positions_command", required=True, metavar="COMMAND")
    accept = psub.add_parser(
        "accept", help="take the broker's positions as the truth (lifts a drift block); "
        "recorded with who, when, what the database expected and what was accepted")
    accept.add_argument("account", metavar="TIER")
    accept.add_argument("--wait", type=float, default=20.0, metavar="SECONDS",
                        help="how long to wait for the position manager to apply it "
                        "(default 20; it applies a pending request at its next sync)")
    accept.set_defaults(handler=_lazy("ops.commands.control", "cli_positions_accept"))
    for verb, what in (("adopt", "make an external position (or --qty of it) managed: the "
                                 "pipeline's exit rules apply to it from the next tick"),
                       ("release", "hand a managed position (or --qty of it) back: the "
                                   "pipeline never sells it again")):
        p = psub.add_parser(verb, help=what + " (recorded: who, when, before, after)")
        p.add_argument("account", metavar="TIER")
        p.add_argument("symbol", metavar="SYMBOL")
        p.add_argument("--qty", metavar="N", help="only this much (default: all of it)")
        p.set_defaults(handler=_lazy("ops.commands.positions", f"cli_positions_{verb}"))


def _list_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """`ops incidents [list]`'s options. On the `list` subparser (`suppress`) an option not
    given sets nothing, so `ops incidents --json list` keeps what the parent parsed."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    span = parser.add_mutually_exclusive_group()
    span.add_argument("--all", action="store_true", default=default(False),
                      help="closed incidents too, however old")
    span.add_argument("--since", metavar="DURATION", default=default(None),
                      help="also those closed within DURATION, e.g. 90m, 24h, 7d")
    parser.add_argument("--limit", type=int, metavar="N", default=default(200),
                        help="at most N incidents, open ones first (default 200)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="JSON on stdout: every field of each incident")


def _add_incidents_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    incidents = sub.add_parser(
        "incidents", help="list, show, acknowledge and close incidents (ID: the first "
        "characters of the id, as `ops incidents` lists it)")
    _list_options(incidents, suppress=False)
    isub = incidents.add_subparsers(dest="incidents_command", metavar="COMMAND")
    listing = isub.add_parser("list", help="open incidents (the default command)")
    _list_options(listing, suppress=True)
    show = isub.add_parser("show", help="every field of one incident, its full detail "
                           "and how it ended")
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="one JSON object on stdout")
    ack = isub.add_parser("ack", help="acknowledge an open incident: it stays listed but "
                          "no longer makes `ops status` degraded (recorded as cli:<user>)")
    ack.add_argument("id", metavar="ID")
    close = isub.add_parser("close", help="close an open incident, saying why (recorded "
                            "with the reason and cli:<user>)")
    close.add_argument("id", metavar="ID")
    close.add_argument("--reason", required=True, metavar="TEXT",
                       help="why it is closed (required)")
    incidents.set_defaults(handler=_lazy("ops.commands.incidents", "cli_incidents"))


def _add_dash_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dash = sub.add_parser(
        "dash",
        help="the Textual dashboard: positions, heartbeats, last-run gaps, incidents, control",
    )
    mode = dash.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="print one text snapshot and exit (no terminal needed)")
    mode.add_argument("--serve", action="store_true",
                      help="serve the dashboard in a browser on 127.0.0.1 (textual-serve)")
    dash.add_argument("--port", type=tcp_port, default=8566,
                      help="port for --serve on 127.0.0.1 (default 8566)")
    # tui.cli imports textual only when the interactive app runs; ops/ never imports it.
    dash.set_defaults(handler=_lazy("tui.cli", "cli_dash"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ops",
        description="Run and watch the ops-pipeline trading stack.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    migrate = db_sub.add_parser(
        "migrate",
        help="apply schema migrations (idempotent); starts the embedded Postgres if needed",
    )
    migrate.set_defaults(handler=_db_migrate)

    sim = sub.add_parser(
        "sim",
        help="serve the Alpaca-compatible paper broker simulator on loopback",
        description="Serve REST (/v2), market data and the trade_updates WebSocket "
        "(/stream) on one 127.0.0.1 origin.",
    )
    sim.add_argument("--port", type=tcp_port, default=8765,
                     help="TCP port on 127.0.0.1 (0 = any)")
    sim.add_argument("--seed", type=int, default=7, help="seed of the synthetic market")
    sim.add_argument(
        "--clock",
        choices=["open", "nyse", "closed"],
        default="open",
        help="market clock: always open, real NYSE regular hours, or forced closed",
    )
    sim.add_argument(
        "--state",
        default=None,
        help="JSON file to keep simulator state in across restarts",
    )
    sim.add_argument(
        "--accounts",
        default=None,
        metavar="FILE",
        help="serve the accounts of a demo identity file ($OPS_HOME/demo.json, written by "
        "`ops up --demo`) instead of the built-in ones (keys from --secrets)",
    )
    sim.add_argument(
        "--secrets",
        default=None,
        metavar="FILE",
        help="with --accounts: the secrets file holding their keys ($OPS_HOME/secrets.json)",
    )
    sim.add_argument(
        "--show-accounts",
        action="store_true",
        help="print the accounts as JSON and exit (the built-in ones with their throwaway "
        "keys; with --accounts, names and numbers only)",
    )
    sim.set_defaults(handler=_sim)
    _add_stack_commands(sub)
    _add_control_commands(sub)
    _add_incidents_command(sub)
    _add_dash_command(sub)
    return parser


#: Subcommands that run without a config file.
_NO_CONFIG = frozenset({"sim", "down", "health", "db"})


def _config_missing() -> str | None:
    """Why no config file can be read (naming how it was looked for), or None."""
    from ops.runtime.env import runtime_env

    env = runtime_env()
    if env.config_path.is_file():
        return None
    return (f"{env.config_path}: config file not found (from {env.config_source}; `ops` "
            "looks at OPS_CONFIG, then $OPS_HOME/ops.toml, then its packaged default)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `ops` command. Whatever the command, a config problem exits EXIT_CONFIG
    (78) and an unreachable embedded Postgres or broker says so in words, not as a
    traceback."""
    from ops.runtime.env import EXIT_CONFIG
    from ops.runtime.errors import human_error

    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    if args.command not in _NO_CONFIG and (missing := _config_missing()) is not None:
        print(f"ops {args.command}: {missing}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `ops ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 1
    except Exception as exc:
        # A ConfigError can only come from ops.core.config, loaded by then; looked up here so
        # that commands which never read the config (`ops health`) never load the schema.
        config = sys.modules.get("ops.core.config")
        if config is not None and isinstance(exc, config.ConfigError):
            print(f"ops {args.command}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        message = human_error(exc)
        if message is None:
            raise
        print(f"ops {args.command}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
