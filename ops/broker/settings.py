"""Where a Broker connects and with which bounds: `BrokerEndpoints`, `BrokerSettings`.

Config supplies these per account; validation errors name the field and the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ops.core.backoff import Backoff


def _origin(name: str, value: str, schemes: tuple[str, ...]) -> str:
    url = value.strip().rstrip("/")
    if not url.startswith(tuple(f"{s}://" for s in schemes)):
        raise ValueError(f"broker endpoint {name} = {value!r}: must start with "
                         + " or ".join(f"{s}://" for s in schemes))
    return url


@dataclass(frozen=True, slots=True)
class BrokerEndpoints:
    """Where one account's broker lives. REST and data URLs are bare origins (no /v2);
    the stream URL is used verbatim (e.g. wss://paper-api.alpaca.markets/stream)."""

    rest_url: str
    stream_url: str
    data_url: str
    paper: bool = True

    def __post_init__(self) -> None:
        rest = _origin("rest_url", self.rest_url, ("http", "https"))
        data = _origin("data_url", self.data_url, ("http", "https"))
        for name, url in (("rest_url", rest), ("data_url", data)):
            if url.endswith(("/v2", "/v1beta1")):
                raise ValueError(f"broker endpoint {name} = {url!r}: give the bare origin, "
                                 "without the API version (the adapter appends it)")
        object.__setattr__(self, "rest_url", rest)
        object.__setattr__(self, "data_url", data)
        object.__setattr__(self, "stream_url", _origin("stream_url", self.stream_url,
                                                       ("ws", "wss")))


def _default_retry() -> Backoff:
    return Backoff(initial_s=0.5, max_s=4.0, max_attempts=4, deadline_s=30.0)


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Bounds for broker REST calls."""

    rest_timeout_s: float = 10.0
    """The connect and the read timeout of every call (transport.Http)."""
    retry: Backoff = field(default_factory=_default_retry)
    """Bounds for retrying reads, cancels and 429s; also for the lookup that settles a submit."""
    rate_limit_per_min: int = 200
    """Request budget of this Broker (Alpaca: 200/min per account, shared by all processes
    of the account, so give each process its share)."""
    rate_limit_burst: int = 20
    """Requests that may go out back to back before the budget paces them."""
    data_feed: str | None = None
    """Market-data feed (iex, sip, ...); None lets the server pick."""

    def __post_init__(self) -> None:
        if self.rest_timeout_s <= 0:
            raise ValueError(f"rest_timeout_s must be > 0, got {self.rest_timeout_s}")
