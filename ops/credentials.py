"""Broker credentials: the `Credentials` type (masked everywhere) and its providers.

Providers (AWS Secrets Manager, env vars, 0600 local file) live here too; this is the
only module that imports boto3 for secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def mask(value: str) -> str:
    """A recognisable but useless form of a secret: first 2 chars and the length."""
    if len(value) <= 4:
        return "****"
    return f"{value[:2]}****({len(value)})"


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
