"""Exceptions raised by the broker adapter; callers catch these, never the HTTP or
WebSocket libraries' own.

Every message is built from the broker's response body, HTTP status and our own
description of the call; none ever formats a client, a request's headers or Credentials.
"""

from __future__ import annotations


class BrokerError(Exception):
    """A broker call failed. `what` names the call, e.g. "get order 7d1b...".

    `http_status` and `code` are the HTTP status and Alpaca's 8-digit error code when the
    broker answered; `reason` is Alpaca's message (or our description of the failure).
    """

    def __init__(
        self,
        what: str,
        reason: str,
        *,
        http_status: int | None = None,
        code: int | None = None,
    ) -> None:
        suffix = ""
        if http_status is not None:
            suffix = f" (HTTP {http_status}" + (f", code {code})" if code is not None else ")")
        super().__init__(f"{what}: {reason}{suffix}")
        self.what = what
        self.reason = reason
        self.http_status = http_status
        self.code = code


class BrokerApiError(BrokerError):
    """The broker answered with an HTTP error status (4xx/5xx)."""


class BrokerUnavailable(BrokerError):
    """No answer: timeout, refused or reset connection. The call's effect is unknown."""


class BrokerDataError(BrokerError):
    """A broker response or stream message could not be converted; names the field and value."""


class AccountMismatchError(BrokerError):
    """The credentials configured for an account belong to a different broker account.

    Carries what an incident needs: the configured account name, the expected and the
    actual account number (never keys).
    """

    def __init__(self, account_name: str, expected: str, actual: str) -> None:
        super().__init__(
            f"account binding for {account_name!r}",
            f"credentials configured for account {account_name!r} belong to broker account "
            f"{actual!r}, but the config expects {expected!r}; refusing to run",
        )
        self.account_name = account_name
        self.expected = expected
        self.actual = actual
