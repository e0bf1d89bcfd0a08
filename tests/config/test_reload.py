"""Hot reload: changes are picked up, a bad edit keeps the last good config."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ops.runtime.config import ConfigReloader, load_config
from tests.config.samples import MINIMAL


def test_reload_cycle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ops.toml"
    path.write_text(MINIMAL)
    reloader = ConfigReloader(path, load_config(path))
    assert reloader.poll() is None  # unchanged

    path.write_text(MINIMAL.replace("max_open_positions = 2", "max_open_positions = 4"))
    new = reloader.poll()
    assert new is not None and new.accounts["solo"].risk.max_open_positions == 4
    assert reloader.current is new and reloader.poll() is None

    caplog.set_level(logging.ERROR, logger="ops.runtime.config")
    path.write_text(MINIMAL.replace("max_open_positions = 2", "max_open_positions = -1"))
    assert reloader.poll() is None
    assert reloader.poll() is None
    assert reloader.current is new
    assert str(reloader.last_error) == (
        f"{path}: accounts.solo.risk.max_open_positions: must be greater than 0 (got -1)"
    )
    [record] = caplog.records  # logged once, not on every poll
    assert "keeping the previous config" in record.getMessage()
    assert "max_open_positions: must be greater than 0" in record.getMessage()

    path.unlink()
    assert reloader.poll() is None and reloader.current is new
    assert str(reloader.last_error) == f"{path}: cannot read: No such file or directory"

    path.write_text(MINIMAL)
    back = reloader.poll()
    assert back is not None and back.accounts["solo"].risk.max_open_positions == 2
    assert reloader.last_error is None


def test_initial_text_is_the_baseline(tmp_path: Path) -> None:
    path = tmp_path / "ops.toml"
    path.write_text(MINIMAL)
    cfg = load_config(path)
    # The caller loaded from text it already had; the file differs, so the first poll reloads.
    reloader = ConfigReloader(path, cfg, text=MINIMAL + "\n# older\n")
    assert reloader.poll() == cfg
