"""Hostile CLI arguments to the commands other than `ops signal add` (tests/test_control.py
covers that one): a one-line error naming the argument and its value, exit 2, never a
traceback. Real subprocesses (`python -m ops ...`), run concurrently to keep this quick.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration  # `python -m ops` processes
Done = subprocess.CompletedProcess[str]

CASES: list[tuple[list[str], str]] = [
    (["run", "nosuch"], "argument role: invalid choice: 'nosuch'"),
    (["run", "dispatcher"], "role 'dispatcher' runs per account: give --account"),
    (["run", "dispatcher", "--account", "nosuch"], "unknown account 'nosuch' (configured: "
                                                   "large, tiny)"),
    (["run", "dispatcher", "--account", "../../etc"], "unknown account '../../etc'"),
    (["run", "stream", "--account", "tïny"], "unknown account 'tïny'"),
    (["run", "signal-engine", "--account", "tiny"], "role 'signal-engine' is shared by every "
                                                    "account: run it without --account"),
    (["pause", "nosuch"], "TIER 'nosuch': no such account in the config (known: large, tiny)"),
    (["resume", "tïny"], "TIER 'tïny': no such account in the config"),
    (["pause", "tiny", "--mode", "panic"], "argument --mode: invalid choice: 'panic'"),
    (["gaps", "--since", "garbage"], "--since 'garbage': expected a positive number"),
    (["gaps", "--since", "1e400h"], "--since '1e400h'"),
    (["nosuch-command"], "invalid choice: 'nosuch-command'"),
    (["sim", "--port", "70000"], "argument --port: port 70000 is outside 0-65535"),
    (["dash", "--serve", "--port", "http"], "argument --port: not a port number: 'http'"),
]


def _run(argv: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *argv], capture_output=True,
                          text=True, env=environ, cwd=REPO, timeout=60)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Done]:
    home = tmp_path_factory.mktemp("cli")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    # No database is needed to refuse an argument: point at one that does not answer.
    environ.update(OPS_HOME=str(home), OPS_CONFIG=str(REPO / "conf" / "ops.toml"),
                   OPS_DATABASE_URL="postgresql://ops@127.0.0.1:1/none")
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda c: _run(c[0], environ), CASES))
    return {" ".join(c[0]): r for c, r in zip(CASES, done, strict=True)}


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_hostile_argument_is_one_clear_line(
    results: dict[str, Done], argv: list[str], expected: str
) -> None:
    r = results[" ".join(argv)]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ops"), last  # the message is the last line, prefixed
