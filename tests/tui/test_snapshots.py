"""Snapshot tests (pytest-textual-snapshot) at 80x24 and 160x48, fixed data, frozen clock.

The app opens its own Store inside the app's event loop (snap_compare runs the app with
`App.run`), over the per-test Postgres holding the fixture. No supervisord here, so the
screens also show how "supervisord unreachable" is said. Update snapshots only after
looking at the report: `pytest tests/tui --snapshot-update`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from textual.pilot import Pilot

from ops.core.config import Config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from tests.tui.conftest import T
from tests.tui.fixtures import write_drift_block, write_fixture
from tests.tui.helpers import snapshot_app, until
from tests.tui.test_signals import write_signals
from tui.app import Dashboard
from tui.screens.confirm import ConfirmScreen
from tui.screens.incident import IncidentScreen
from tui.screens.pause import PauseModeScreen
from tui.widgets.incidents import IncidentsTable
from tui.widgets.positions import PositionsTable
from tui.widgets.signals import SignalsTable

SnapCompare = Callable[..., bool]


def _app(env: RuntimeEnv, config: Config,
         extra: Callable[[Store], Awaitable[None]] | None = None) -> Dashboard:
    async def fixture(store: Store) -> None:
        await write_fixture(store, T)

    return snapshot_app(env, config, T, fixture, *([extra] if extra is not None else []))


def _loaded(*keys: str, ready: Callable[[Dashboard], bool] | None = None,
            ) -> Callable[[Pilot[Any]], Any]:
    """Wait for the first load, press `keys`, then wait for `ready` (a panel shown by a
    key is filled on its next update, which a loaded machine may delay)."""

    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, Dashboard)
        await until(pilot, lambda: app.loads >= 1, what="first load")
        # Columns only ever grow to fit what they have shown: after a second load every
        # width has settled, so the picture no longer depends on update timing.
        app.poll()
        await until(pilot, lambda: app.loads >= 2, what="second load")
        await pilot.press(*keys)
        if ready is not None:
            await until(pilot, lambda: ready(app), what="the shown panel filled")
        await pilot.pause()

    return run_before


def _positions_filled(app: Dashboard) -> bool:
    table = app.query_one(PositionsTable)
    return table.display and table.row_count > 0


def test_small_terminal_processes(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                                  config: Config) -> None:
    assert snap_compare(_app(dash_env, config), terminal_size=(80, 24),
                        run_before=_loaded())


def test_small_terminal_positions(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                                  config: Config) -> None:
    assert snap_compare(_app(dash_env, config), terminal_size=(80, 24),
                        run_before=_loaded("2", ready=_positions_filled))


def test_large_terminal_everything(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                                   config: Config) -> None:
    assert snap_compare(_app(dash_env, config), terminal_size=(160, 48),
                        run_before=_loaded())


def test_confirm_dialog(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                        config: Config) -> None:
    """p, then Enter on the mode picker (halt): the confirmation."""
    assert snap_compare(_app(dash_env, config), terminal_size=(80, 24),
                        run_before=_loaded("p", "enter", ready=lambda app: isinstance(
                            app.screen, ConfirmScreen)))


def test_pause_mode_picker(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                           config: Config) -> None:
    """p: halt, reduce-only, flatten (managed), flatten everything, each with its words."""
    assert snap_compare(_app(dash_env, config), terminal_size=(80, 24),
                        run_before=_loaded("p", ready=lambda app: isinstance(
                            app.screen, PauseModeScreen)))


async def _with_signals(store: Store) -> None:
    await write_signals(store)


def _signals_filled(app: Dashboard) -> bool:
    table = app.query_one(SignalsTable)
    return table.display and table.row_count > 0


def test_small_terminal_signals(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                                config: Config) -> None:
    """5: queued, submitted (its order partly filled), rejected and expired signals."""
    assert snap_compare(_app(dash_env, config, _with_signals), terminal_size=(80, 24),
                        run_before=_loaded("5", ready=_signals_filled))


def test_large_terminal_signals(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                                config: Config) -> None:
    """5 on a large terminal: the signals take the width under the processes."""
    assert snap_compare(_app(dash_env, config, _with_signals), terminal_size=(160, 48),
                        run_before=_loaded("5", ready=_signals_filled))


def test_accept_positions_dialog(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                                 config: Config) -> None:
    """large drift-blocked: the marker on its row, and behind "a" the dialog with the
    database's and the broker's quantities."""
    assert snap_compare(_app(dash_env, config, write_drift_block), terminal_size=(80, 24),
                        run_before=_loaded("a"))


#: The open incident's id, pid and host, fixed so the detail screen's picture is stable.
DRIFT_ID = "d21f7000-0000-4000-8000-000000000001"


async def _fixed_drift_incident(store: Store) -> None:
    await store.pool.execute(
        "UPDATE incidents SET id = $1::text::uuid, opened_pid = 4242,"
        " opened_host = 'ops-host' WHERE dedupe_key = 'drift:large'", DRIFT_ID)


async def _acked_drift_incident(store: Store) -> None:
    await _fixed_drift_incident(store)
    await store.pool.execute(
        "UPDATE incidents SET acked_by = 'cli:alice', acked_at = $2 WHERE id = $1::text::uuid",
        DRIFT_ID, T - timedelta(minutes=1))


def _incidents_filled(app: Dashboard) -> bool:
    table = app.query_one(IncidentsTable)
    return table.display and table.row_count > 0


def test_small_terminal_incidents_acked(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                                        config: Config) -> None:
    """The open incident acknowledged: muted, "acked by", out of the header's alarm; the
    footer offers the panel's own keys (Enter details, a acknowledge)."""
    assert snap_compare(_app(dash_env, config, _acked_drift_incident), terminal_size=(80, 24),
                        run_before=_loaded("3", ready=_incidents_filled))


def test_incident_detail(snap_compare: SnapCompare, dash_env: RuntimeEnv,
                         config: Config) -> None:
    """Enter on the incidents panel: every field and the full detail."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await _loaded("3", ready=_incidents_filled)(pilot)
        await pilot.press("enter")
        app = pilot.app

        def loaded() -> bool:
            screen = app.screen
            return isinstance(screen, IncidentScreen) and screen.loaded

        await until(pilot, loaded, what="the detail screen")
        await pilot.pause()

    assert snap_compare(_app(dash_env, config, _fixed_drift_incident), terminal_size=(80, 24),
                        run_before=run_before)
