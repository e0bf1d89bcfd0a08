"""Failures in words (ops.runtime.errors): the Postgres socket, 401/403, HTML error pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.broker.errors import BrokerApiError, BrokerUnavailable
from ops.runtime.errors import AUTH_HINTS, describe_db_error, human_error, summarise_body
from ops.store.postgres import connect


async def test_a_missing_postgres_socket_is_said_so(tmp_path: Path) -> None:
    with pytest.raises(OSError) as ei:  # asyncpg: a bare FileNotFoundError, no file name
        await connect(f"postgresql://postgres@/postgres?host={tmp_path}", connect_timeout=5)
    said = describe_db_error(ei.value)
    assert said.startswith("the Postgres socket ")
    assert "is missing" in said and "`ops up` starts it" in said
    assert "FileNotFoundError" not in said


def test_other_errors_keep_their_type() -> None:
    try:
        raise FileNotFoundError(2, "No such file or directory")  # not the database's
    except FileNotFoundError as exc:
        assert human_error(exc) is None
        assert describe_db_error(exc).startswith("FileNotFoundError: ")
    assert human_error(ValueError("x")) is None
    sock = ConnectionRefusedError(111, "Connection refused", "/h/pg/.s.PGSQL.5432")
    assert human_error(sock) == (
        "the Postgres socket /h/pg/.s.PGSQL.5432 refuses connections: the embedded Postgres "
        "is not running for this OPS_HOME (`ops up` starts it), or OPS_HOME is not the one "
        "the stack runs in")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_said_in_words(status: int) -> None:
    exc = BrokerApiError("get account", "unauthorized.", http_status=status)
    assert human_error(exc) == f"get account: {AUTH_HINTS[status]}"
    assert human_error(BrokerApiError("get account", "x", http_status=500)) is None
    assert human_error(BrokerUnavailable("get account", "timeout")) is None


def test_html_bodies_are_summarised() -> None:
    page = ("<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>"
            "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center>"
            "</body></html>")
    assert summarise_body(page, 502) == "HTML error page: 502 Bad Gateway"
    assert summarise_body("<html><body><h1>Oops &amp; sorry</h1></body></html>") == (
        "HTML error page: Oops & sorry")
    assert summarise_body("<html><body></body></html>", 503) == "HTML error page: HTTP 503"
    assert summarise_body('{"message": "forbidden."}', 403) == '{"message": "forbidden."}'
    assert summarise_body("plain text") == "plain text"
