"""Broker credentials: the `Credentials` type (masked everywhere) and its providers.

Providers (AWS Secrets Manager, env vars, 0600 local file) live here too; this is the
only module that imports boto3 for secrets, and only when the AWS provider is used.
A secret is JSON `{"api_key", "api_secret", "account_name"}`; `load_credentials` also
checks `account_name` against the configured account, so one account's key pair is
refused for another before any broker call. Every key and secret read is registered
with `ops.runtime.logs` for masking.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ops.runtime.redaction import mask, register_secret

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

    from ops.core.config import AccountConfig, CredentialsConfig
    from ops.runtime.env import RuntimeEnv


@dataclass(frozen=True, slots=True)
class Credentials:
    """One account's API key pair. repr/str never show the key or the secret."""

    secret_id: str
    account_name: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"Credentials(secret_id={self.secret_id!r}, account_name={self.account_name!r}, "
            f"api_key={mask(self.api_key)!r}, api_secret='****')"
        )

    __str__ = __repr__


# --------------------------------------------------------------------------- providers
# Messages name the secret id, the provider and the field at fault, never a value: not
# the key, not the secret, not the raw secret text. JSONDecodeError carries the whole
# document (`.doc`), so it is never left attached as the __context__ of our errors.

SECRET_FIELDS = ("api_key", "api_secret", "account_name")


class CredentialError(Exception):
    """A secret could not be read or is unusable. The message never holds secret material."""


class SecretProvider(Protocol):
    """Anything that turns a secret id into `Credentials`."""

    def get(self, secret_id: str) -> Credentials: ...


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def _register(value: object) -> None:
    if isinstance(value, str) and value:
        register_secret(value)


def parse_secret(secret_id: str, doc: object, where: str) -> Credentials:
    """Validate a decoded secret document; `where` describes the provider for messages."""
    if not isinstance(doc, dict):
        raise CredentialError(
            f"secret '{secret_id}' must be a JSON object with "
            f"{', '.join(SECRET_FIELDS)} (got {_json_type(doc)}) ({where})"
        )
    # Mask the key material in logs before anything can fail and be logged.
    _register(doc.get("api_key"))
    _register(doc.get("api_secret"))
    values: dict[str, str] = {}
    for name in SECRET_FIELDS:
        if name not in doc:
            raise CredentialError(f"secret '{secret_id}' has no field '{name}' ({where})")
        value = doc[name]
        if not isinstance(value, str) or not value:
            raise CredentialError(
                f"secret '{secret_id}': field '{name}' must be a non-empty string "
                f"(got {_json_type(value)}) ({where})"
            )
        values[name] = value
    return Credentials(
        secret_id=secret_id,
        account_name=values["account_name"],
        api_key=values["api_key"],
        api_secret=values["api_secret"],
    )


_INVALID = object()


def _loads(text: str | bytes) -> object:
    """json.loads, or `_INVALID`; raising outside the except block leaves no __context__."""
    try:
        doc: object = json.loads(text)
    except ValueError:
        return _INVALID
    return doc


def parse_secret_text(secret_id: str, text: str, where: str) -> Credentials:
    """`parse_secret` for a JSON string (Secrets Manager SecretString, env variable)."""
    doc = _loads(text)
    if doc is _INVALID:
        raise CredentialError(f"secret '{secret_id}' is not valid JSON ({where})")
    return parse_secret(secret_id, doc, where)


def _not_a_response_body(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Response body")


class AwsSecretsProvider:
    """AWS Secrets Manager (`GetSecretValue`), with timeouts and bounded retries."""

    def __init__(
        self,
        region: str,
        endpoint_url: str | None = None,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._client: SecretsManagerClient | None = None
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        extra = f", endpoint {self.endpoint_url}" if self.endpoint_url else ""
        return f"provider aws, region {self.region}{extra}"

    def _get_client(self) -> SecretsManagerClient:
        with self._lock:
            if self._client is None:
                # Lazy: only processes that read secrets from AWS pay for boto3.
                import boto3
                from botocore.config import Config as BotoConfig

                # botocore logs every response body at DEBUG, SecretString included, before
                # we can register it for masking: drop those records at the source.
                logging.getLogger("botocore.parsers").addFilter(_not_a_response_body)

                self._client = boto3.session.Session().client(
                    "secretsmanager",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=BotoConfig(
                        connect_timeout=self.timeout_s,
                        read_timeout=self.timeout_s,
                        retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
                    ),
                )
            return self._client

    def get(self, secret_id: str) -> Credentials:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._get_client().get_secret_value(SecretId=secret_id)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            if code == "ResourceNotFoundException":
                raise CredentialError(f"secret '{secret_id}' not found ({self.where})") from None
            raise CredentialError(
                f"cannot read secret '{secret_id}' ({self.where}): {code}"
            ) from None
        except BotoCoreError as exc:
            # e.g. EndpointConnectionError, NoCredentialsError, ConnectTimeoutError.
            raise CredentialError(
                f"cannot read secret '{secret_id}' ({self.where}): {type(exc).__name__}"
            ) from None
        text = response.get("SecretString")
        if text is None:
            raise CredentialError(
                f"secret '{secret_id}' has no SecretString (binary secrets are not "
                f"supported) ({self.where})"
            )
        return parse_secret_text(secret_id, text, self.where)


def env_var_for(secret_id: str) -> str:
    """`ops-pipeline/alpaca/tiny` -> `OPS_SECRET_OPS_PIPELINE_ALPACA_TINY`."""
    return "OPS_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", secret_id).upper()


class EnvProvider:
    """Secrets as JSON in environment variables named by `env_var_for(secret_id)`."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def get(self, secret_id: str) -> Credentials:
        var = env_var_for(secret_id)
        where = f"provider env, variable {var}"
        text = self.environ.get(var)
        if text is None:
            raise CredentialError(f"secret '{secret_id}' not found ({where})")
        return parse_secret_text(secret_id, text, where)


class FileProvider:
    """A JSON file `{secret_id: {api_key, api_secret, account_name}}`, refused unless 0600-ish
    (no group/other bits). Re-read on every `get`, so edits need no restart."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self, secret_id: str) -> object:
        where = f"provider file, path {self.path}"
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise CredentialError(
                f"secret '{secret_id}' not found ({where}: the file does not exist)"
            ) from None
        except OSError as exc:
            raise CredentialError(
                f"cannot read secret '{secret_id}' ({where}): {exc.strerror}"
            ) from None
        with os.fdopen(fd, "rb") as fh:
            # fstat of the opened file: no window between the check and the read.
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            if mode & 0o077:
                raise CredentialError(
                    f"secrets file {self.path} has mode {mode:04o}: readable or writable by "
                    f"group or others, refusing to use it. Fix: chmod 600 {self.path}"
                )
            raw = fh.read()
        doc = _loads(raw)
        if doc is _INVALID:
            raise CredentialError(
                f"secrets file {self.path} is not valid JSON (reading secret '{secret_id}')"
            )
        return doc

    def get(self, secret_id: str) -> Credentials:
        where = f"provider file, path {self.path}"
        doc = self._read(secret_id)
        if not isinstance(doc, dict):
            raise CredentialError(
                f"secrets file {self.path} must hold a JSON object mapping secret id to "
                f"secret (got {_json_type(doc)})"
            )
        if secret_id not in doc:
            raise CredentialError(f"secret '{secret_id}' not found ({where})")
        return parse_secret(secret_id, doc[secret_id], where)


def write_secrets_file(path: Path, mapping: Mapping[str, Mapping[str, str]]) -> None:
    """Write a `FileProvider` file atomically, mode 0600 from the first byte."""
    path = Path(path)
    for secret_id, secret in mapping.items():
        missing = [f for f in SECRET_FIELDS if not isinstance(secret.get(f), str)]
        if missing:
            raise CredentialError(f"secret '{secret_id}' has no field '{missing[0]}'")
        _register(secret["api_key"])
        _register(secret["api_secret"])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps({k: dict(v) for k, v in mapping.items()}, indent=2).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode only applies to new files
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def provider_from_config(cfg: CredentialsConfig, env: RuntimeEnv) -> SecretProvider:
    """The provider `[credentials]` asks for."""
    if cfg.provider == "aws":
        return AwsSecretsProvider(cfg.aws_region, cfg.aws_endpoint_url)
    if cfg.provider == "env":
        # The one place besides ops.runtime.env that reads the process environment.
        return EnvProvider(os.environ)
    return FileProvider(cfg.resolved_file_path(env))


def load_credentials(
    account_name: str, account_cfg: AccountConfig, provider: SecretProvider
) -> Credentials:
    """Fetch an account's credentials and check the secret is meant for this account."""
    creds = provider.get(account_cfg.secret_id)
    if creds.account_name != account_name:
        raise CredentialError(
            f"secret '{account_cfg.secret_id}' is for account {creds.account_name[:64]!r}, "
            f"but it is configured for account '{account_name}' "
            f"(accounts.{account_name}.secret_id); refusing to use it"
        )
    return creds
