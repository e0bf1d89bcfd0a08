"""Two demo stacks side by side that cannot cross wires (issue 16.5).

Stack A runs the packaged default config (no OPS_CONFIG) on `ops up --demo --port P`;
stack B a copy of conf/ops.toml on another free port (make_home). Each home generates its
own account numbers and keys, so a role of A pointed at B's simulator is refused: with A's
keys by the simulator (401), with keys B's simulator accepts by the account binding. A
port taken by another simulator is refused up front, and a simulator that cannot start
keeps the account processes stopped, `ops up` saying why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO

import pytest

from ops.runtime.demo import keys_by_account, read_identity
from ops.runtime.env import PACKAGED_CONFIG, RuntimeEnv
from ops.supervise.supervisor import SupervisorClient
from tests.e2e.conftest import ROOT, Stack, make_home, tear_down, up_demo
from tests.support import free_port

pytestmark = pytest.mark.timeout(420)

ACCOUNTS = ("large", "tiny")


def _packaged_home() -> tuple[int, dict[str, str], RuntimeEnv]:
    """A home that uses the packaged default config: no OPS_CONFIG, no $OPS_HOME/ops.toml."""
    home, _port, environ, env = make_home()
    (home / "ops.toml").unlink()
    environ.pop("OPS_CONFIG")
    return free_port(), environ, env


def _up_on_port(env: RuntimeEnv, environ: dict[str, str], port: int) -> Stack:
    t0 = time.monotonic()
    up = subprocess.run([sys.executable, "-m", "ops", "up", "--demo", "--port", str(port),
                         "--timeout", "90"], capture_output=True, text=True, env=environ,
                        timeout=150, cwd=env.home)
    return Stack(env, environ, port, up, time.monotonic() - t0)


@pytest.fixture(scope="module")
def stacks() -> Iterator[tuple[Stack, Stack]]:
    a_port, a_environ, a_env = _packaged_home()
    _, b_port, b_environ, b_env = make_home()
    try:
        a = _up_on_port(a_env, a_environ, a_port)
        b = up_demo(b_env, b_environ, b_port)
        yield a, b
    finally:
        failures = []
        for env, environ in ((a_env, a_environ), (b_env, b_environ)):
            try:
                tear_down(env, environ)
            except AssertionError as exc:  # the other home is taken down all the same
                failures.append(exc)
        if failures:
            raise failures[0]


def _numbers(stack: Stack) -> dict[str, str]:
    identity = read_identity(stack.env.home)
    assert identity is not None
    return {a.name: a.account_number for a in identity.accounts}


def _keys(stack: Stack) -> dict[str, tuple[str, str]]:
    return keys_by_account(stack.env.home / "secrets.json")


def test_two_stacks_run_side_by_side_each_on_its_own_accounts(
        stacks: tuple[Stack, Stack]) -> None:
    a, b = stacks
    for stack in (a, b):
        assert stack.up.returncode == 0, stack.up.stdout + stack.up.stderr
        assert f"simulator on 127.0.0.1:{stack.sim_port}" in stack.up.stdout
    assert a.sim_port != b.sim_port
    na, nb = _numbers(a), _numbers(b)
    assert set(na) == set(nb) == set(ACCOUNTS)
    assert set(na.values()).isdisjoint(nb.values())
    ka, kb = _keys(a), _keys(b)
    assert {k for k, _ in ka.values()}.isdisjoint(k for k, _ in kb.values())
    # Found from anywhere (A's `ops up` ran in its home): A on the packaged default, B on
    # its OPS_CONFIG; both say so.
    assert json.loads(a.ops("status", "--json").stdout)["config"].endswith(
        "ops/defaults/ops.toml (packaged default)")
    assert json.loads(b.ops("status", "--json").stdout)["config"] == (
        f"{b.env.config_path} (OPS_CONFIG)")

    def trading(stack: Stack) -> bool:
        rows = stack.query("SELECT DISTINCT account FROM fills")
        return {r["account"] for r in rows} == set(ACCOUNTS)

    def seen(stack: Stack) -> dict[str, str]:
        return {r["name"]: r["account_number"] for r in stack.query(
            "SELECT name, account_number FROM account_state")}

    for stack, numbers in ((a, na), (b, nb)):
        stack.poll("fills for both accounts", lambda s=stack: trading(s), timeout_s=90)
        # Each stack trades on its own simulator's accounts (the position managers record
        # the account they are bound to at their next sync).
        stack.poll(f"account_state naming {numbers}", partial(_is, seen, stack, numbers),
                   timeout_s=30, explain=partial(_show, seen, stack))
    # The keys are never printed or logged: not by `ops up`, not in any log file.
    for stack in (a, b):
        texts = [stack.up.stdout, stack.up.stderr,
                 *(p.read_text(errors="replace") for p in stack.env.log_dir.glob("*.log"))]
        for key_id, secret in _keys(stack).values():
            assert not any(key_id in t or secret in t for t in texts)


def _is(read: Callable[[Stack], object], stack: Stack, expected: object) -> bool:
    return read(stack) == expected


def _show(read: Callable[[Stack], object], stack: Stack) -> str:
    return repr(read(stack))


def _cross_role(tmp: Path, pg_url: str, *, expected: str, port: int, secrets: Path,
                out: IO[str]) -> subprocess.Popen[str]:
    """`ops run dispatcher --account large` of a stack whose large account expects
    `expected`, with the keys in `secrets`, pointed at the simulator on `port`. Its own
    home and database, so neither stack's records are touched."""
    text = (ROOT / "conf" / "ops.toml").read_text()
    text = text.replace("[accounts.large]\n", "[accounts.large]\n"
                        f'expected_account_number = "{expected}"\n'
                        f'rest_url = "http://127.0.0.1:{port}"\n'
                        f'data_url = "http://127.0.0.1:{port}"\n'
                        f'stream_url = "ws://127.0.0.1:{port}/stream"\n')
    text = text.replace('file_path = "${OPS_HOME}/secrets.json"', f'file_path = "{secrets}"')
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (tmp / "cross.toml").write_text(text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    environ.update(OPS_HOME=str(home), OPS_CONFIG=str(tmp / "cross.toml"),
                   OPS_DATABASE_URL=pg_url)
    return subprocess.Popen([sys.executable, "-m", "ops", "run", "dispatcher", "--account",
                             "large"], stdout=out, stderr=subprocess.STDOUT, text=True,
                            env=environ, cwd=tmp)


def test_a_role_pointed_at_the_other_stacks_simulator_refuses(
        stacks: tuple[Stack, Stack], tmp_path: Path, pg_url: str) -> None:
    a, b = stacks
    na, nb = _numbers(a), _numbers(b)
    # A's large dispatcher, A's keys, B's simulator: B's simulator refuses them (401).
    unauthorized = tmp_path / "unauthorized"
    unauthorized.mkdir()
    with open(unauthorized / "role.out", "w") as out:
        proc = _cross_role(unauthorized, pg_url, expected=na["large"], port=b.sim_port,
                           secrets=a.env.home / "secrets.json", out=out)
        try:
            a.poll("the role saying B's simulator refused its key",
                   lambda: "401" in (unauthorized / "role.out").read_text(), timeout_s=60,
                   explain=lambda: (unauthorized / "role.out").read_text()[-2000:])
            said = (unauthorized / "role.out").read_text()
            assert "account binding failed" in said and "refused the API key" in said
            assert proc.poll() is None  # waits for the broker to take a key; never bound
            assert "bound to broker account" not in said
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    # Keys B's simulator accepts (B's own), still configured as A's account: the account
    # binding refuses B's account and the role exits, naming both numbers.
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    with open(mismatch / "role.out", "w") as out:
        proc = _cross_role(mismatch, pg_url, expected=na["large"], port=b.sim_port,
                           secrets=b.env.home / "secrets.json", out=out)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    said = (mismatch / "role.out").read_text()
    assert code == 3, said  # EXIT_ACCOUNT_MISMATCH
    assert f"belong to broker account {nb['large']!r}" in said
    assert f"the config expects {na['large']!r}; refusing to run" in said
    # Neither stack's simulator saw an order from the other's roles: each stack's orders
    # are on its own accounts only (their broker ids are known to its own database).
    for stack in (a, b):
        assert not stack.query("SELECT 1 FROM orders WHERE account NOT IN ('large', 'tiny')")


def test_a_taken_port_is_refused_before_anything_starts(stacks: tuple[Stack, Stack]) -> None:
    a, _ = stacks
    _, _, environ, env = make_home()
    try:
        out = subprocess.run([sys.executable, "-m", "ops", "up", "--demo", "--port",
                              str(a.sim_port)], capture_output=True, text=True, env=environ,
                             timeout=60, cwd=ROOT)
        assert out.returncode == 1, out.stdout + out.stderr
        assert (f"--port {a.sim_port}: 127.0.0.1:{a.sim_port} is already in use "
                "(another stack's simulator?)") in out.stderr
        assert not (env.home / "supervisord.conf").exists()
    finally:
        tear_down(env, environ)


def test_a_simulator_that_cannot_start_keeps_the_account_processes_stopped() -> None:
    _, port, environ, env = make_home()
    (env.home / "sim-state.json").write_text("{not json")  # the simulator refuses to start
    try:
        stack = up_demo(env, environ, port)
        out = stack.up.stdout + stack.up.stderr
        assert stack.up.returncode == 1, out
        assert "the simulator did not start (sim:sim FATAL)" in stack.up.stderr
        assert "simulator state file" in stack.up.stderr  # the end of its log says why
        assert "The account processes were not started" in stack.up.stderr
        states = {p.qualified: p.state for p in SupervisorClient.for_env(env).processes()}
        for account in ACCOUNTS:
            for role in ("stream", "dispatcher", "position-manager"):
                assert states[f"{account}:{account}-{role}"] == "STOPPED", states
        assert not re.search(r"ops-pipeline is up", out)
    finally:
        tear_down(env, environ)


# --- the README's sample output ------------------------------------------------------------

_KEEP = re.compile(r"(waiting for |schema version )(\d+)")  # facts a stale sample gets wrong
_NUMBER = re.compile(r"(?<![\w<\d])\d[\d,]*(?:\.\d+)?s?")


def normalise(text: str, home: Path | None = None) -> list[str]:
    """Lines with what changes from run to run made equal: times, pids, ports, amounts,
    ages, generated account numbers, runs of blanks (column widths follow the values); the
    home shown as the default one and the packaged config's directory as `...`."""
    if home is not None:
        text = text.replace(str(home), "~/.local/state/ops-pipeline")
    text = text.replace(str(PACKAGED_CONFIG), ".../ops/defaults/ops.toml")
    out = []
    for line in text.splitlines():
        line = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", "<time>", line)
        line = re.sub(r"\bPA[A-Z0-9]{10}\b", "<account>", line)
        line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", line)
        line = _KEEP.sub(lambda m: f"{m[1]}<{m[2]}>", line)
        line = _NUMBER.sub("<n>", line)
        line = line.replace(" (<n> external)", "")  # how a position count splits varies
        out.append(re.sub(r"\s+", " ", line).rstrip())
    return out


def matches(sample: list[str], actual: list[str]) -> str | None:
    """None when `actual` is `sample` with each `...` line standing for any lines and each
    `...` within a line for any text; else the first sample line that has no match."""
    i, skipping = 0, False
    for want in sample:
        if want.strip() == "...":
            skipping = True
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")) + "$")
        while i < len(actual) and not pattern.match(actual[i]):
            if not skipping:
                return f"{want!r} where the output has {actual[i]!r}"
            i += 1
        if i == len(actual):
            return f"{want!r} (not in the output)"
        i, skipping = i + 1, False
    return None if skipping or i == len(actual) else f"the output goes on: {actual[i]!r}"


def _readme_block(first: str) -> list[str]:
    """The README's fenced block whose first line starts with `first`, normalised."""
    blocks: list[list[str]] = []
    inside = False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append([])
        elif inside:
            blocks[-1].append(line)
    [block] = [b for b in blocks if b and b[0].startswith(first)]
    return normalise("\n".join(block))


def test_the_readme_sample_output_is_what_the_commands_print(
        stacks: tuple[Stack, Stack]) -> None:
    a, _ = stacks
    assert a.up.returncode == 0, a.up.stdout + a.up.stderr
    up = normalise(a.up.stdout, a.env.home)
    assert (why := matches(_readme_block("demo: "), up)) is None, (
        f"README's `ops up --demo` sample: {why}\nwhat it printed:\n{a.up.stdout}")

    def healthy() -> str | None:
        out = subprocess.run([sys.executable, "-m", "ops", "status"], capture_output=True,
                             text=True, env=a.environ, timeout=60, cwd="/")
        return out.stdout if out.returncode == 0 else None

    status = a.poll("ops status healthy", healthy, timeout_s=60)
    assert (why := matches(_readme_block("ops-pipeline "), normalise(status, a.env.home))
            ) is None, f"README's `ops status` sample: {why}\nwhat it printed:\n{status}"


def test_the_sample_matcher_catches_a_stale_sample() -> None:
    actual = normalise("supervisord started (x); waiting for 10 processes\n"
                       "  a RUNNING 123 /h/log/a.log\n  b RUNNING 124 /h/log/b.log\n"
                       "  c RUNNING 125 /h/log/c.log", Path("/h"))
    good = normalise("supervisord started (x); waiting for 10 processes\n"
                     "  a RUNNING 99 ~/.local/state/ops-pipeline/log/a.log\n  ...\n"
                     "  c RUNNING 98 ~/.local/state/ops-pipeline/log/c.log")
    assert matches(good, actual) is None
    stale = [line.replace("<10>", "<9>") for line in good]
    assert matches(stale, actual) is not None
    assert matches(good[:2], actual) is not None  # rows left out without a `...`
    assert matches([*good[:2], "  z RUNNING <n> x"], actual) is not None


def test_up_demo_over_a_stack_started_without_the_simulator_says_so() -> None:
    _, _, environ, env = make_home()

    def up(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ops", "up", *args], capture_output=True,
                              text=True, env=environ, timeout=120, cwd=ROOT)

    try:
        plain = up("--timeout", "10")  # no keys: the account roles never report
        assert (env.home / "supervisord.conf").exists(), plain.stdout + plain.stderr
        demo = up("--demo", "--timeout", "10")
        assert demo.returncode == 1, demo.stdout + demo.stderr
        assert ("supervisord already runs for this OPS_HOME without the simulator (it was "
                "started without --demo): `ops down`, then `ops up --demo`") in demo.stderr
        assert read_identity(env.home) is None  # nothing generated for a demo not run
    finally:
        tear_down(env, environ)
