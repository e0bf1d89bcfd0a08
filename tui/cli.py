"""`ops dash [--once] [--serve] [--port]`: the command's handler (ops/cli.py calls it).

- no flag: run the Textual dashboard in this terminal (works over SSH; no mouse needed);
- `--once`: print one text snapshot (tui/text.py) and exit: no terminal needed (CI, cron);
- `--serve`: serve the same app in a browser on 127.0.0.1:PORT (tui/serve.py, over
  textual-serve): every browser tab runs its own `ops dash` process, which ends when the
  tab goes away; SIGTERM, SIGINT or SIGHUP stops the server and every session.
Exit code 2 on a bad config (its message names the file and key).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

from ops.commands.status import load_env_config, oneshot_store_settings
from ops.core.config import Config
from ops.runtime.env import EXIT_CONFIG, RuntimeEnv
from ops.runtime.logs import configure_logging
from ops.store import Store
from ops.supervise.supervisor import SupervisorClient
from tui.data import DashboardData, utcnow


async def open_data(env: RuntimeEnv, config: Config, *, oneshot: bool = False) -> DashboardData:
    """A DashboardData over a Store opened for the dashboard (short timeouts: an outage
    costs seconds, never a frozen screen) and the stack's supervisord socket."""
    settings = oneshot_store_settings(env, config)
    if not oneshot:
        settings = dataclasses.replace(settings, close_grace_s=2.0)
    store = await Store.open(env, process="ops-dash", config=settings)
    return DashboardData(env, config, store, SupervisorClient.for_env(env, timeout_s=3),
                         utcnow)


async def close_data(data: DashboardData) -> None:
    await data.store.close()


async def snapshot_text(env: RuntimeEnv, config: Config) -> str:
    from tui.text import render_text

    data = await open_data(env, config, oneshot=True)
    try:
        state = await data.load()
    finally:
        await close_data(data)
    return render_text(state, state.loaded_at)


def cli_dash(args: argparse.Namespace) -> int:
    loaded = load_env_config()
    if isinstance(loaded, str):
        print(loaded, file=sys.stderr)
        return EXIT_CONFIG
    env, config = loaded
    if args.once:
        # The snapshot says when Postgres is away; store warnings would only repeat it.
        configure_logging("ops-dash", level="ERROR")
        print(asyncio.run(snapshot_text(env, config)))
        return 0
    if args.serve:
        return _serve(args.port)
    log_path = env.log_dir / "dash.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as stream:
        # Logs must never write over the screen: they go to $OPS_HOME/log/dash.log.
        configure_logging("ops-dash", level="WARNING", stream=stream)
        from tui.app import Dashboard

        Dashboard(lambda: open_data(env, config), on_exit=close_data).run()
    return 0


def _serve(port: int) -> int:
    try:
        from tui.serve import SessionServer
    except ImportError:
        print("ops dash --serve needs textual-serve: pip install textual-serve",
              file=sys.stderr)
        return 2
    configure_logging("ops-dash-serve", level="INFO")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per request
    print(f"ops dash: serving on http://127.0.0.1:{port} (loopback only; Ctrl-C stops)",
          file=sys.stderr)
    SessionServer([sys.executable, "-m", "ops", "dash"], host="127.0.0.1", port=port,
                  title="ops dash").serve()
    return 0
