"""`ops sim` entry point: serve the simulator on 127.0.0.1:PORT until SIGTERM/SIGINT.

`--accounts FILE --secrets FILE` serves the accounts of a home's demo identity
(`$OPS_HOME/demo.json` and the keys in the demo's secrets file, both written by `ops up
--demo`) instead of the built-in ones, whose keys every install shares.
`--show-accounts` prints the accounts as JSON and exits: the built-in ones with their
throwaway keys, a home's without its keys. The signal handler only sets an event; shutdown
then closes every socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from ops.sim.accounts import SimAccountSpec, default_accounts, demo_accounts
from ops.sim.simulator import SimConfig, Simulator

log = logging.getLogger(__name__)


def cli_main(args: argparse.Namespace) -> int:
    """Run `ops sim`; returns the process exit code."""
    if args.show_accounts:
        try:
            shown = _shown(args.accounts, args.seed)
        except ValueError as exc:
            print(f"ops sim: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(shown, indent=2))
        return 0
    try:
        accounts = _accounts(args.accounts, args.secrets)
    except ValueError as exc:
        print(f"ops sim: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = SimConfig(seed=args.seed, clock=args.clock, state_path=args.state,
                           accounts=accounts)
        return asyncio.run(_serve(config, args.port))
    except ValueError as exc:
        print(f"ops sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ops sim: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1


def _shown(path: str | None, seed: int) -> list[dict[str, str]]:
    """What --show-accounts prints: the built-in accounts with their throwaway keys, or a
    home's accounts without theirs (they stay in its secrets file)."""
    from ops.runtime.demo import DemoIdentityError, read_identity_file

    if path is None:
        return [a.public_json() for a in default_accounts(seed)]
    try:
        identity = read_identity_file(Path(path))
    except DemoIdentityError as exc:
        raise ValueError(str(exc)) from None
    if identity is None:
        raise ValueError(f"{path}: no such demo identity file (`ops up --demo` writes it)")
    return [{"name": a.name, "account_number": a.account_number} for a in identity.accounts]


def _accounts(path: str | None, secrets: str | None) -> list[SimAccountSpec] | None:
    """The accounts of a demo identity file with their keys from the demo's secrets file,
    or None for the built-in ones."""
    from ops.runtime.demo import DemoIdentityError, read_identity_file, served_accounts

    if path is None:
        return None
    if secrets is None:
        raise ValueError("--accounts needs --secrets (the file holding their keys)")
    try:
        identity = read_identity_file(Path(path))
        if identity is None or not identity.accounts:
            raise ValueError(f"{path}: no demo accounts there (`ops up --demo` writes them)")
        return demo_accounts(served_accounts(identity, Path(secrets)))
    except DemoIdentityError as exc:
        raise ValueError(str(exc)) from None


async def _serve(config: SimConfig, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sim = Simulator(config)
    await sim.start(port=port)
    try:
        print(
            f"ops sim listening: rest={sim.rest_url} stream={sim.stream_url} "
            f"data={sim.data_url} clock={config.clock} seed={config.seed}",
            flush=True,
        )
        await stop.wait()
        log.info("simulator stopping")
    finally:
        await sim.stop()
    return 0
