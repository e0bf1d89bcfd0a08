"""Logging setup: one line per event, the documented fields, secrets masked everywhere."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.runtime.credentials import FileProvider
from ops.runtime.logs import configure_logging
from ops.runtime.redaction import mask, mask_secrets, register_secret

SECRET = "zQ9sEcReTlOgVaLuE0123456789"
KEY = "PKLOGTESTKEY000000042"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_ops_logs_handler", False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_line_has_the_fields(out: io.StringIO) -> None:
    configure_logging("tiny-dispatcher", stream=out)
    logging.getLogger("ops.roles.dispatcher").info("submitted %s orders", 3)
    [line] = lines(out)
    ts, level, process, rest = line.split(" ", 3)
    assert ts.endswith("Z") and "T" in ts
    assert (level, process) == ("INFO", "tiny-dispatcher")
    assert rest == "ops.roles.dispatcher: submitted 3 orders"


def test_json_line_has_the_fields(out: io.StringIO) -> None:
    configure_logging("watchdog", level="DEBUG", json=True, stream=out)
    logging.getLogger("ops.roles.watchdog").debug(
        "restarting %s", "large-stream", extra={"account": "large"}
    )
    [line] = lines(out)
    doc = json.loads(line)
    assert set(doc) == {"ts", "level", "process", "logger", "message", "account"}
    assert (doc["level"], doc["process"], doc["logger"]) == (
        "DEBUG",
        "watchdog",
        "ops.roles.watchdog",
    )
    assert doc["message"] == "restarting large-stream"
    assert doc["account"] == "large"


def test_level_filters(out: io.StringIO) -> None:
    configure_logging("x", level="WARNING", stream=out)
    logging.getLogger("a").info("hidden")
    logging.getLogger("a").warning("shown")
    assert [line.split(": ", 1)[1] for line in lines(out)] == ["shown"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("x", level="LOUD")


def test_exception_stays_on_one_line(out: io.StringIO) -> None:
    configure_logging("x", stream=out)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("a").exception("run failed")
    [line] = lines(out)
    assert "a: run failed exc=Traceback (most recent call last):\\n" in line
    assert "RuntimeError: boom\\nsecond line" in line


def test_reconfiguring_replaces_only_our_handler(out: io.StringIO) -> None:
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    try:
        configure_logging("one", stream=out)
        configure_logging("two", stream=out)
        logging.getLogger("a").warning("once")
        assert len(lines(out)) == 1 and " two a: once" in lines(out)[0]
        assert other in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(other)


@pytest.mark.parametrize("as_json", [False, True])
def test_registered_secret_is_masked_everywhere(out: io.StringIO, as_json: bool) -> None:
    register_secret(SECRET)
    configure_logging("large-stream", json=as_json, stream=out)
    log = logging.getLogger("ops.broker")
    log.warning("in the message " + SECRET)
    log.warning("in the args %s / %r", SECRET, {"secret": SECRET})
    log.warning("in an extra", extra={"detail": f"x={SECRET}"})
    try:
        raise ValueError(f"auth failed for {SECRET}")
    except ValueError:
        log.exception("in the exception")
    log.warning("with a stack", stack_info=True)
    text = out.getvalue()
    assert SECRET not in text
    assert text.count(mask(SECRET)) >= 5
    assert len(lines(out)) == 5


def test_masking_does_not_depend_on_the_handler_formatter(out: io.StringIO) -> None:
    """The filter itself rewrites the record, so a plain formatter also sees the mask."""
    register_secret(SECRET)
    handler = configure_logging("x", stream=out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        raise KeyError(SECRET)
    except KeyError:
        logging.getLogger("a").exception("bad %s", SECRET)
    text = out.getvalue()
    assert SECRET not in text and f"bad {mask(SECRET)}" in text
    assert f"KeyError: '{mask(SECRET)}'" in text


def test_longest_secret_wins_and_short_values_are_ignored() -> None:
    register_secret("abcdefghijkl")
    register_secret("abcdefghijkl-and-more")
    register_secret("ab")  # too short to mask without garbling every line
    assert mask_secrets("x abcdefghijkl-and-more y") == f"x {mask('abcdefghijkl-and-more')} y"
    assert mask_secrets("x abcdefghijkl y") == f"x {mask('abcdefghijkl')} y"
    assert mask_secrets("ab") == "ab"


def test_loading_credentials_registers_them(tmp_path: Path, out: io.StringIO) -> None:
    path = tmp_path / "secrets.json"
    secret = "zzLoadedSecretNeverLogged0001"
    # Written by hand, not by write_secrets_file (which registers too): the read must.
    path.write_text(
        json.dumps({"s": {"api_key": KEY, "api_secret": secret, "account_name": "tiny"}})
    )
    path.chmod(0o600)
    creds = FileProvider(path).get("s")
    configure_logging("x", stream=out)
    logging.getLogger("a").error("oops %s %s", creds.api_key, creds.api_secret)
    text = out.getvalue()
    assert KEY not in text and secret not in text
    assert f"oops {mask(KEY)} {mask(secret)}" in text
