"""The `ops` command: parses arguments, calls the modules that do the work, prints.

Each subcommand imports its module lazily so that `ops status` does not pay for alpaca-py
and `ops sim` does not pay for asyncpg. Handlers return the process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _db_migrate(args: argparse.Namespace) -> int:
    from ops.store.migrate import cli_migrate

    return cli_migrate(args)


def _sim(args: argparse.Namespace) -> int:
    from ops.sim.server import cli_main

    return cli_main(args)


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
    sim.add_argument("--port", type=int, default=8765, help="TCP port on 127.0.0.1 (0 = any)")
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
        "--show-accounts",
        action="store_true",
        help="print the demo accounts (name, account number, key id, secret) as JSON and exit",
    )
    sim.set_defaults(handler=_sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
