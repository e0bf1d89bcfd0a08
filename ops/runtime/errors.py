"""Failures said in words: what `ops` prints (and roles log) instead of a raw exception.

`human_error` turns the errors a user meets first (the embedded Postgres not running, the
broker refusing the keys) into one sentence naming what to do; `summarise_body` cuts an
HTML error page down to its status and title. Pure functions: no I/O, no imports of the
database or broker libraries.
"""

from __future__ import annotations

import html
import re

_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_H1 = re.compile(r"<h1[^>]*>(.*?)</h1>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")

#: What a 401 / 403 from the broker means for this pipeline.
AUTH_HINTS = {
    401: "the broker refused the API key (401 unauthorized): wrong, revoked or rotated "
         "credentials, or a URL that reaches another broker (another stack's simulator)",
    403: "the broker refused the request for these credentials (403 forbidden): the key "
         "lacks the permission, or the account is restricted",
}


def looks_like_html(body: str) -> bool:
    head = body.lstrip()[:200].lower()
    return head.startswith(("<!doctype html", "<html")) or "<body" in head or "<head" in head


def summarise_body(body: str, status: int | None = None) -> str:
    """`body` as it should appear in a message or log: an HTML page becomes
    "HTML error page: TITLE" (status and title, never the page); anything else unchanged."""
    if not looks_like_html(body):
        return body
    found = _TITLE.search(body) or _H1.search(body)
    text = found.group(1) if found else _TAG.sub(" ", re.sub(
        r"<(script|style)[^>]*>.*?</\1>", " ", body, flags=re.IGNORECASE | re.DOTALL))
    title = " ".join(html.unescape(_TAG.sub("", text)).split())[:120]
    title = title or (f"HTTP {status}" if status is not None else "untitled")
    return f"HTML error page: {title}"


def auth_hint(status: int | None) -> str | None:
    return AUTH_HINTS.get(status) if status is not None else None


def _raised_by_asyncpg(exc: BaseException) -> bool:
    """asyncpg connecting to a unix socket that is not there raises a bare OSError (no
    file name): its traceback is what says it was the database."""
    tb = exc.__traceback__
    while tb is not None:
        if "/asyncpg/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _postgres_socket(exc: BaseException) -> str | None:
    """The Postgres unix socket an OSError is about, if it is one."""
    text = " ".join(str(x) for x in (getattr(exc, "filename", None), exc) if x)
    m = re.search(r"(\S*\.s\.PGSQL\.\d+)", text)
    return m.group(1) if m else None


def underlying(exc: BaseException) -> BaseException:
    """The error a message should name: for the store's `StorageUnavailable` (an outage,
    ops/store/errors.py) the driver's error it carries as its cause, else `exc` itself.
    Matched by class name: this module imports nothing of the store."""
    cause = exc.__cause__
    if cause is not None and any(c.__name__ == "StorageUnavailable" for c in type(exc).__mro__):
        return cause
    return exc


def describe_db_error(exc: BaseException) -> str:
    """A database failure in words where it has some, else `Type: message`."""
    exc = underlying(exc)
    return human_error(exc) or f"{type(exc).__name__}: {exc}"


def human_error(exc: BaseException) -> str | None:
    """One sentence for a failure the user can act on, or None (then the traceback is
    the better report)."""
    exc = underlying(exc)
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        sock = _postgres_socket(exc)
        if sock is not None or _raised_by_asyncpg(exc):
            where = f" {sock}" if sock else ""
            state = "is missing" if isinstance(exc, FileNotFoundError) else "refuses connections"
            return (f"the Postgres socket{where} {state}: the embedded Postgres is not "
                    "running for this OPS_HOME (`ops up` starts it), or OPS_HOME is not the "
                    "one the stack runs in")
    # Duck-typed: importing ops.broker would load alpaca-py into every `ops` command.
    status = getattr(exc, "http_status", None)
    if type(exc).__name__ == "BrokerApiError" and (hint := auth_hint(status)):
        return f"{getattr(exc, 'what', 'broker call')}: {hint}"
    return None
