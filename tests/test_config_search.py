"""Where `ops` finds its config and home, from any directory; config errors' exit code;
"did you mean"; simulator accounts filled in from the home's demo identity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ops.commands.stack import write_demo_secrets
from ops.commands.status import EXIT_CODES
from ops.core.config import ConfigError
from ops.runtime.config import load_config, load_config_text
from ops.runtime.demo import ensure_identity, keys_by_account, read_identity
from ops.runtime.env import (
    EXIT_CONFIG,
    FROM_ENV,
    FROM_HOME,
    FROM_PACKAGE,
    PACKAGED_CONFIG,
    RuntimeEnv,
    runtime_env,
)
from tests.config.samples import MINIMAL

ROOT = Path(__file__).resolve().parents[1]


def test_search_order_env_then_home_then_package(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = runtime_env({"OPS_HOME": str(home)})
    assert (env.config_path, env.config_source) == (PACKAGED_CONFIG, FROM_PACKAGE)
    (home / "ops.toml").write_text(MINIMAL)
    env = runtime_env({"OPS_HOME": str(home)})
    assert (env.config_path, env.config_source) == (home / "ops.toml", FROM_HOME)
    other = tmp_path / "other.toml"
    env = runtime_env({"OPS_HOME": str(home), "OPS_CONFIG": str(other)})
    # Explicit, even when missing: never a silent fall-through to another file.
    assert (env.config_path, env.config_source) == (other, FROM_ENV)


def test_nothing_comes_from_the_current_directory(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "ops.toml").write_text("not = [toml")
    (tmp_path / "ops.toml").write_text("not = [toml")
    env = runtime_env({"HOME": str(tmp_path / "user")})
    assert env.config_path == PACKAGED_CONFIG
    assert env.home == tmp_path / "user" / ".local" / "state" / "ops-pipeline"
    env = runtime_env({"HOME": "/h", "XDG_STATE_HOME": str(tmp_path / "state")})
    assert env.home == tmp_path / "state" / "ops-pipeline"
    # A relative XDG_STATE_HOME is invalid per the spec: ignored, not resolved against cwd.
    assert runtime_env({"HOME": "/h", "XDG_STATE_HOME": "rel"}).home == Path(
        "/h/.local/state/ops-pipeline")


def test_the_packaged_default_is_conf_ops_toml() -> None:
    assert (ROOT / "conf" / "ops.toml").resolve() == PACKAGED_CONFIG
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"defaults/*.toml"' in pyproject  # shipped as package data


def _ops(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "ops", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.integration
def test_status_from_another_directory(tmp_path: Path) -> None:
    cwd, home = tmp_path / "elsewhere", tmp_path / "home"
    cwd.mkdir()
    out = _ops(["status"], cwd, OPS_HOME=str(home), PYTHONPATH=str(ROOT))
    assert out.returncode == EXIT_CODES["down"], out.stdout + out.stderr
    assert f"home: {home}   config: {PACKAGED_CONFIG} (packaged default)" in out.stdout
    assert "config file not found" not in out.stderr
    # Nothing runs there: said in words, not as FileNotFoundError.
    assert "database: UNREACHABLE (the Postgres socket is missing: " in out.stdout
    for command in (["incidents"], ["gaps"], ["signal", "list"]):
        said = _ops(command, cwd, OPS_HOME=str(home), PYTHONPATH=str(ROOT))
        text = said.stdout + said.stderr
        assert "the Postgres socket is missing: " in text and "FileNotFoundError" not in text
    assert list(cwd.iterdir()) == []  # nothing created where it ran


@pytest.mark.integration
def test_no_config_is_a_config_error_not_down(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    for command in (["status"], ["status", "--json"], ["up"], ["doctor"], ["gaps"],
                    ["dash", "--once"]):
        out = _ops(command, tmp_path, OPS_HOME=str(tmp_path / "h"), OPS_CONFIG=str(missing),
                   PYTHONPATH=str(ROOT))
        assert out.returncode == EXIT_CONFIG != EXIT_CODES["down"], (command, out.stderr)
        assert f"{missing}: config file not found (from OPS_CONFIG" in out.stderr
        assert "Traceback" not in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("[accounts.solo.risk]", "[accounts.solo.risk]\nmax_qtty = 1"))
    for command in (["status"], ["incidents"], ["gaps"], ["pause", "solo"],
                    ["signal", "list"], ["positions", "accept", "solo"], ["dash", "--once"]):
        out = _ops(command, tmp_path, OPS_HOME=str(tmp_path / "h"), OPS_CONFIG=str(bad),
                   PYTHONPATH=str(ROOT))
        assert out.returncode == EXIT_CONFIG, (command, out.stderr)
        assert "unknown key 'max_qtty' (did you mean 'max_qty'?)" in out.stderr, command


@pytest.mark.parametrize(
    ("edit", "expected"),
    [(("[accounts.solo.risk]", "[accounts.solo.risk]\nmax_qtty = 1"),
      "accounts.solo.risk: unknown key 'max_qtty' (did you mean 'max_qty'?)"),
     (("[accounts.solo]", "[accounts.solo]\nrest_ulr = 'x'"),
      "accounts.solo: unknown key 'rest_ulr' (did you mean 'rest_url'?)"),
     (("[accounts.solo]", "[broker]\nretry = { max_attemps = 3 }\n[accounts.solo]"),
      "broker.retry: unknown key 'max_attemps' (did you mean 'max_attempts'?)"),
     (("[accounts.solo]", "[watchdogg]\n[accounts.solo]"),
      "unknown key 'watchdogg' (did you mean 'watchdog'?)"),
     # Nothing close: no guess.
     (("[accounts.solo]", "[zzz]\n[accounts.solo]"), "unknown key 'zzz'")],
)
def test_unknown_keys_get_a_did_you_mean(edit: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config_text(MINIMAL.replace(*edit), "f.toml")
    assert str(ei.value).splitlines() == [f"f.toml: {expected}"]


def test_simulator_accounts_follow_the_homes_identity(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ida = ensure_identity(a, ["large", "tiny"], 41001)
    idb = ensure_identity(b, ["large", "tiny"], None)
    conf = ROOT / "conf" / "ops.toml"
    ca, cb = load_config(conf, a), load_config(conf, b)
    for name in ("large", "tiny"):
        acct_a, acct_b = ca.accounts[name], cb.accounts[name]
        assert acct_a.expected_account_number == ida.account(name).account_number  # type: ignore[union-attr]
        assert acct_b.expected_account_number == idb.account(name).account_number  # type: ignore[union-attr]
        assert acct_a.expected_account_number != acct_b.expected_account_number
        # The port the home's simulator runs on; else [sim] port.
        assert (acct_a.rest_url, acct_a.stream_url, acct_a.data_url) == (
            "http://127.0.0.1:41001", "ws://127.0.0.1:41001/stream", "http://127.0.0.1:41001")
        assert acct_b.rest_url == f"http://127.0.0.1:{cb.sim.port}"
    # Generated once: a second call keeps them.
    assert ensure_identity(a, ["large", "tiny"], None) == ida == read_identity(a)


def test_demo_keys_are_per_home_generated_once_and_only_in_the_secrets_file(
        tmp_path: Path) -> None:
    conf = ROOT / "conf" / "ops.toml"
    keys = []
    for home in (tmp_path / "a", tmp_path / "b"):
        env = RuntimeEnv(config_path=conf, home=home, database_url=None)
        config = load_config(conf, home)
        path = write_demo_secrets(env, config)
        first = keys_by_account(path)
        write_demo_secrets(env, config)
        assert keys_by_account(path) == first  # kept on the next `ops up --demo`
        assert set(first) == {"large", "tiny"}
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        identity_text = (home / "demo.json").read_text()
        for key_id, secret in first.values():
            assert key_id not in identity_text and secret not in identity_text
        keys.append(first)
    assert {k for k, _ in keys[0].values()}.isdisjoint(k for k, _ in keys[1].values())


def test_given_keys_win_over_the_identity(tmp_path: Path) -> None:
    ensure_identity(tmp_path, ["large", "tiny"], 41002)
    text = (ROOT / "conf" / "ops.toml").read_text().replace(
        "[accounts.tiny]\n", '[accounts.tiny]\nexpected_account_number = "PAOTHER"\n'
        'rest_url = "http://127.0.0.1:9"\n')
    cfg = load_config_text(text, "f.toml", tmp_path)
    tiny = cfg.accounts["tiny"]
    assert (tiny.expected_account_number, tiny.rest_url) == ("PAOTHER", "http://127.0.0.1:9")
    assert tiny.stream_url == "ws://127.0.0.1:41002/stream"


def test_a_broken_identity_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text("{")
    with pytest.raises(ConfigError) as ei:
        load_config(ROOT / "conf" / "ops.toml", tmp_path)
    assert f"{tmp_path / 'demo.json'}: not a demo identity file" in str(ei.value)


@pytest.mark.integration
def test_an_installed_ops_finds_its_default_config(tmp_path: Path) -> None:
    """setuptools' build of the package (what a wheel holds) carries the default config,
    and `ops` run from that build, elsewhere, uses it."""
    src, lib = tmp_path / "src", tmp_path / "lib"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("ops", "tui"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore, symlinks=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()",
                            "-q", "build_py", "--build-lib", str(lib)], cwd=src,
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    shipped = lib / "ops" / "defaults" / "ops.toml"
    assert shipped.read_text() == PACKAGED_CONFIG.read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _ops(["status", "--json"], elsewhere, OPS_HOME=str(tmp_path / "home"),
               PYTHONPATH=str(lib))
    assert json.loads(out.stdout)["config"] == f"{shipped} (packaged default)", out.stderr
