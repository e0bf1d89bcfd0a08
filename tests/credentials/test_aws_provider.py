"""AWS Secrets Manager provider against moto, and against a loopback server for errors."""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from ops.runtime.credentials import AwsSecretsProvider, CredentialError, load_credentials
from tests.credentials.conftest import API_KEY, API_SECRET, REGION, account
from tests.support import free_port

TINY = "ops-pipeline/alpaca/tiny"
WHERE = "provider aws, region us-east-1"


def put_secret(name: str, value: str) -> None:
    # Setting the secret up is not under test: botocore logs create_secret's parameters at
    # DEBUG, so the set-up runs with logging off and caplog only sees the code under test.
    logging.disable(logging.CRITICAL)
    try:
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=name, SecretString=value
        )
    finally:
        logging.disable(logging.NOTSET)


def secret_json(**overrides: object) -> str:
    doc: dict[str, object] = {"api_key": API_KEY, "api_secret": API_SECRET, "account_name": "tiny"}
    doc.update(overrides)
    return json.dumps({k: v for k, v in doc.items() if v is not None})


def assert_no_secret_material(*texts: str) -> None:
    for text in texts:
        assert API_KEY not in text
        assert API_SECRET not in text


def error_texts(exc: BaseException) -> tuple[str, str, str]:
    return str(exc), repr(exc), "".join(traceback.format_exception(exc))


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Capture everything, botocore's DEBUG chatter included, to prove nothing leaks there.
    caplog.set_level(logging.DEBUG)


@pytest.mark.usefixtures("aws")
def test_found(caplog: pytest.LogCaptureFixture) -> None:
    put_secret(TINY, secret_json())
    creds = AwsSecretsProvider(REGION).get(TINY)
    assert (creds.secret_id, creds.account_name) == (TINY, "tiny")
    assert (creds.api_key, creds.api_secret) == (API_KEY, API_SECRET)
    assert_no_secret_material(repr(creds), str(creds), caplog.text)
    assert any(r.name.startswith("botocore") for r in caplog.records)  # logging was on


@pytest.mark.usefixtures("aws")
def test_extra_fields_in_the_secret_are_ignored() -> None:
    put_secret(TINY, secret_json(paper=True))
    assert AwsSecretsProvider(REGION).get(TINY).account_name == "tiny"


@pytest.mark.usefixtures("aws")
def test_not_found(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(CredentialError) as info:
        AwsSecretsProvider(REGION).get(TINY)
    assert str(info.value) == f"secret '{TINY}' not found ({WHERE})"


@pytest.mark.usefixtures("aws")
def test_malformed_json(caplog: pytest.LogCaptureFixture) -> None:
    put_secret(TINY, '{"api_key": "' + API_KEY + '", "api_secret": "' + API_SECRET + '",')
    with pytest.raises(CredentialError) as info:
        AwsSecretsProvider(REGION).get(TINY)
    assert str(info.value) == f"secret '{TINY}' is not valid JSON ({WHERE})"
    assert_no_secret_material(*error_texts(info.value), caplog.text)
    assert info.value.__context__ is None  # JSONDecodeError.doc would hold the secret


@pytest.mark.usefixtures("aws")
def test_not_an_object() -> None:
    put_secret(TINY, json.dumps([API_KEY, API_SECRET]))
    with pytest.raises(CredentialError) as info:
        AwsSecretsProvider(REGION).get(TINY)
    assert str(info.value) == (
        f"secret '{TINY}' must be a JSON object with api_key, api_secret, account_name "
        f"(got an array) ({WHERE})"
    )


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize("missing", ["api_key", "api_secret", "account_name"])
def test_missing_field(missing: str, caplog: pytest.LogCaptureFixture) -> None:
    put_secret(TINY, secret_json(**{missing: None}))
    with pytest.raises(CredentialError) as info:
        AwsSecretsProvider(REGION).get(TINY)
    assert str(info.value) == f"secret '{TINY}' has no field '{missing}' ({WHERE})"
    assert_no_secret_material(*error_texts(info.value), caplog.text)


@pytest.mark.usefixtures("aws")
@pytest.mark.parametrize(
    ("field", "value", "got"),
    [
        ("api_key", 12345, "a number"),
        ("api_secret", "", "an empty string"),
        ("account_name", ["tiny"], "an array"),
    ],
)
def test_wrong_type(field: str, value: object, got: str, caplog: pytest.LogCaptureFixture) -> None:
    put_secret(TINY, secret_json(**{field: value}))
    with pytest.raises(CredentialError) as info:
        AwsSecretsProvider(REGION).get(TINY)
    assert str(info.value) == (
        f"secret '{TINY}': field '{field}' must be a non-empty string (got {got}) ({WHERE})"
    )
    assert_no_secret_material(*error_texts(info.value), caplog.text)


@pytest.mark.usefixtures("aws")
def test_key_for_another_account_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    put_secret(TINY, secret_json())  # account_name "tiny"
    provider = AwsSecretsProvider(REGION)
    with pytest.raises(CredentialError) as info:
        load_credentials("large", account(TINY), provider)
    assert str(info.value) == (
        f"secret '{TINY}' is for account 'tiny', but it is configured for account 'large' "
        "(accounts.large.secret_id); refusing to use it"
    )
    assert_no_secret_material(*error_texts(info.value), caplog.text)
    assert load_credentials("tiny", account(TINY), provider).api_key == API_KEY


@pytest.mark.usefixtures("aws")
def test_binary_secret_is_refused() -> None:
    boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name=TINY, SecretBinary=b"\x00\x01"
    )
    with pytest.raises(CredentialError) as info:
        AwsSecretsProvider(REGION).get(TINY)
    assert str(info.value) == (
        f"secret '{TINY}' has no SecretString (binary secrets are not supported) ({WHERE})"
    )


@pytest.mark.usefixtures("fake_aws_env")
def test_unreachable_endpoint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    provider = AwsSecretsProvider(REGION, url, timeout_s=2, max_attempts=1)
    with pytest.raises(CredentialError) as info:
        provider.get(TINY)
    assert str(info.value) == (
        f"cannot read secret '{TINY}' (provider aws, region us-east-1, endpoint {url}): "
        "EndpointConnectionError"
    )


class _DenyAll(BaseHTTPRequestHandler):
    """Answers every Secrets Manager call the way AWS does when IAM says no."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps(
            {"__type": "AccessDeniedException", "Message": "User is not authorized"}
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("x-amzn-ErrorType", "AccessDeniedException")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def deny_all_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyAll)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.usefixtures("fake_aws_env")
def test_access_denied(deny_all_endpoint: str) -> None:
    provider = AwsSecretsProvider(REGION, deny_all_endpoint, timeout_s=5, max_attempts=1)
    with pytest.raises(CredentialError) as info:
        provider.get(TINY)
    assert str(info.value) == (
        f"cannot read secret '{TINY}' (provider aws, region us-east-1, endpoint "
        f"{deny_all_endpoint}): AccessDeniedException"
    )
