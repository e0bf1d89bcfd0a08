"""Env and 0600-file providers, the secrets-file writer, and picking a provider from config."""

from __future__ import annotations

import json
import os
import stat
import traceback
from pathlib import Path

import pytest

from ops.core.config import CredentialsConfig
from ops.runtime.credentials import (
    AwsSecretsProvider,
    CredentialError,
    EnvProvider,
    FileProvider,
    env_var_for,
    load_credentials,
    provider_from_config,
    write_secrets_file,
)
from ops.runtime.env import runtime_env
from tests.credentials.conftest import API_KEY, API_SECRET, account

LARGE = "ops-pipeline/alpaca"
TINY = "ops-pipeline/alpaca/tiny"


def secret(name: str) -> dict[str, str]:
    return {"api_key": API_KEY + name, "api_secret": API_SECRET + name, "account_name": name}


def texts(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


# ----------------------------------------------------------------------------- env


def test_env_var_name_is_derived_from_the_secret_id() -> None:
    assert env_var_for(TINY) == "OPS_SECRET_OPS_PIPELINE_ALPACA_TINY"
    assert env_var_for(LARGE) == "OPS_SECRET_OPS_PIPELINE_ALPACA"
    assert env_var_for("a.b@c+d") == "OPS_SECRET_A_B_C_D"


def test_env_provider_found() -> None:
    provider = EnvProvider({"OPS_SECRET_OPS_PIPELINE_ALPACA_TINY": json.dumps(secret("tiny"))})
    creds = provider.get(TINY)
    assert (creds.account_name, creds.api_key) == ("tiny", API_KEY + "tiny")


def test_env_provider_not_found() -> None:
    with pytest.raises(CredentialError) as info:
        EnvProvider({}).get(TINY)
    assert str(info.value) == (
        f"secret '{TINY}' not found (provider env, variable OPS_SECRET_OPS_PIPELINE_ALPACA_TINY)"
    )


def test_env_provider_malformed_json_is_not_echoed() -> None:
    bad = json.dumps(secret("tiny"))[:-1]
    with pytest.raises(CredentialError) as info:
        EnvProvider({"OPS_SECRET_OPS_PIPELINE_ALPACA_TINY": bad}).get(TINY)
    assert str(info.value) == (
        f"secret '{TINY}' is not valid JSON "
        "(provider env, variable OPS_SECRET_OPS_PIPELINE_ALPACA_TINY)"
    )
    assert API_KEY not in texts(info.value) and API_SECRET not in texts(info.value)


# ----------------------------------------------------------------------------- file


def test_write_then_read_secrets_file(tmp_path: Path) -> None:
    path = tmp_path / "home" / "secrets.json"
    write_secrets_file(path, {LARGE: secret("large"), TINY: secret("tiny")})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["secrets.json"]  # no temp left
    provider = FileProvider(path)
    assert provider.get(LARGE).account_name == "large"
    assert provider.get(TINY).api_secret == API_SECRET + "tiny"


def test_rewrite_tightens_a_loose_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text("{}")
    path.chmod(0o644)
    write_secrets_file(path, {TINY: secret("tiny")})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert FileProvider(path).get(TINY).account_name == "tiny"


def test_writer_refuses_incomplete_secret(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="^secret 'x' has no field 'account_name'$"):
        write_secrets_file(tmp_path / "s.json", {"x": {"api_key": "k", "api_secret": "s"}})
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660, 0o602])
def test_group_or_world_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "secrets.json"
    write_secrets_file(path, {TINY: secret("tiny")})
    path.chmod(mode)
    with pytest.raises(CredentialError) as info:
        FileProvider(path).get(TINY)
    assert str(info.value) == (
        f"secrets file {path} has mode {mode:04o}: readable or writable by group or others, "
        f"refusing to use it. Fix: chmod 600 {path}"
    )


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    write_secrets_file(path, {TINY: secret("tiny")})
    path.chmod(0o400)
    assert FileProvider(path).get(TINY).account_name == "tiny"


def test_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    with pytest.raises(CredentialError) as info:
        FileProvider(path).get(TINY)
    assert str(info.value) == (
        f"secret '{TINY}' not found (provider file, path {path}: the file does not exist)"
    )


def test_file_without_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    write_secrets_file(path, {LARGE: secret("large")})
    with pytest.raises(CredentialError) as info:
        FileProvider(path).get(TINY)
    assert str(info.value) == f"secret '{TINY}' not found (provider file, path {path})"


def test_file_not_json_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({TINY: secret("tiny")})[:-2])
    path.chmod(0o600)
    with pytest.raises(CredentialError) as info:
        FileProvider(path).get(TINY)
    assert str(info.value) == (f"secrets file {path} is not valid JSON (reading secret '{TINY}')")
    assert API_KEY not in texts(info.value)
    assert info.value.__context__ is None


def test_file_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text("[1, 2]")
    path.chmod(0o600)
    with pytest.raises(CredentialError) as info:
        FileProvider(path).get(TINY)
    assert str(info.value) == (
        f"secrets file {path} must hold a JSON object mapping secret id to secret (got an array)"
    )


def test_file_entry_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({TINY: {"api_key": API_KEY, "account_name": "tiny"}}))
    path.chmod(0o600)
    with pytest.raises(CredentialError) as info:
        FileProvider(path).get(TINY)
    assert str(info.value) == (
        f"secret '{TINY}' has no field 'api_secret' (provider file, path {path})"
    )


def test_file_edits_are_picked_up_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    provider = FileProvider(path)
    write_secrets_file(path, {TINY: secret("tiny")})
    assert provider.get(TINY).api_key == API_KEY + "tiny"
    write_secrets_file(path, {TINY: {**secret("tiny"), "api_key": "PKROTATEDKEY000002"}})
    assert provider.get(TINY).api_key == "PKROTATEDKEY000002"


def test_load_credentials_refuses_a_key_meant_for_another_account(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    # The mix-up: tiny's key pair stored under large's secret id.
    write_secrets_file(path, {LARGE: secret("tiny")})
    with pytest.raises(CredentialError) as info:
        load_credentials("large", account(LARGE), FileProvider(path))
    assert str(info.value) == (
        f"secret '{LARGE}' is for account 'tiny', but it is configured for account 'large' "
        "(accounts.large.secret_id); refusing to use it"
    )
    assert API_KEY not in texts(info.value) and API_SECRET not in texts(info.value)


# ----------------------------------------------------------------------------- config


def test_provider_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = runtime_env({"OPS_HOME": str(tmp_path)})
    file_provider = provider_from_config(CredentialsConfig(provider="file"), env)
    assert isinstance(file_provider, FileProvider)
    assert file_provider.path == tmp_path / "secrets.json"

    aws = provider_from_config(
        CredentialsConfig(
            provider="aws", aws_region="eu-west-1", aws_endpoint_url="http://127.0.0.1:4566"
        ),
        env,
    )
    assert isinstance(aws, AwsSecretsProvider)
    assert (aws.region, aws.endpoint_url) == ("eu-west-1", "http://127.0.0.1:4566")

    monkeypatch.setenv(env_var_for(TINY), json.dumps(secret("tiny")))
    env_provider = provider_from_config(CredentialsConfig(provider="env"), env)
    assert isinstance(env_provider, EnvProvider)
    assert env_provider.get(TINY).account_name == "tiny"
    assert env_provider.environ is os.environ
