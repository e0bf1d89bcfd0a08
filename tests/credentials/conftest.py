"""Shared fixtures for the credential tests: fake AWS credentials, moto, an account config."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto import mock_aws

from ops.core.config import AccountConfig, RiskLimits

REGION = "us-east-1"
API_KEY = "PKTESTKEYVALUE0000001"
API_SECRET = "sEcReTvAlUe0123456789abcdefghijklmnopqrs"


@pytest.fixture
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 needs some credentials to sign with; never real ones in tests."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def aws(fake_aws_env: None) -> Iterator[None]:
    with mock_aws():
        yield


def account(secret_id: str) -> AccountConfig:
    return AccountConfig(
        secret_id=secret_id,
        expected_account_number="PA1",
        rest_url="http://127.0.0.1:8765",
        stream_url="ws://127.0.0.1:8765/stream",
        data_url="http://127.0.0.1:8765",
        risk=RiskLimits.from_mapping(
            {
                "max_order_notional": 1,
                "max_symbol_notional": 1,
                "max_open_positions": 1,
                "daily_loss_limit": 1,
                "max_qty": 1,
            }
        ),
    )
