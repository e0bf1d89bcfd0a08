"""`ops sim` entry point: serve the simulator on 127.0.0.1:PORT until SIGTERM/SIGINT.

`--show-accounts` prints the demo accounts (throwaway simulator keys) as JSON and exits.
The signal handler only sets an event; shutdown then closes every socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from ops.sim.accounts import default_accounts
from ops.sim.simulator import SimConfig, Simulator

log = logging.getLogger(__name__)


def cli_main(args: argparse.Namespace) -> int:
    """Run `ops sim`; returns the process exit code."""
    if args.show_accounts:
        print(json.dumps([a.public_json() for a in default_accounts(args.seed)], indent=2))
        return 0
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = SimConfig(seed=args.seed, clock=args.clock, state_path=args.state)
        return asyncio.run(_serve(config, args.port))
    except ValueError as exc:
        print(f"ops sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ops sim: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1


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
