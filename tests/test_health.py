"""ops.core.health: the `failing` verdict from heartbeat counters, and causes in words."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.health import MIN_RECENT, FailurePolicy, describe, explain, failing

POLICY = FailurePolicy(after_runs=3, share=0.5)


def counters(job: str = "position-manager", *, in_row: int, recent: int, errors: int,
             last: str = "") -> dict[str, object]:
    return {f"{job}.errors_in_row": in_row, f"{job}.recent_runs": recent,
            f"{job}.recent_errors": errors, f"{job}.last_error": last,
            f"{job}.runs_ok": 7, "phase": "running"}


def test_three_failed_runs_in_a_row_is_failing_two_is_not() -> None:
    assert failing(counters(in_row=2, recent=2, errors=2), POLICY) is None
    f = failing(counters(in_row=3, recent=3, errors=3, last="BrokerApiError: x"), POLICY)
    assert f is not None and f.job == "position-manager" and f.last_error == "BrokerApiError: x"
    assert f.summary() == "its last 3 position-manager run(s) failed"


def test_a_failure_share_counts_only_while_the_latest_run_failed() -> None:
    # 6 of 10 failed, never 3 in a row: failing while the latest failed...
    assert failing(counters(in_row=1, recent=10, errors=6), POLICY) is not None
    # ... and healthy again at the first good run (a fix clears it at once).
    assert failing(counters(in_row=0, recent=10, errors=6), POLICY) is None
    # Too few runs to judge a share.
    assert failing(counters(in_row=1, recent=MIN_RECENT - 1, errors=3), POLICY) is None


def test_the_worst_job_and_a_stuck_binding_are_reported() -> None:
    c = {**counters("a", in_row=3, recent=3, errors=3),
         **counters("b", in_row=5, recent=5, errors=5, last="worse")}
    f = failing(c, POLICY)
    assert f is not None and f.job == "b"
    binding = {"phase": "binding", "binding.errors_in_row": 4,
               "binding.last_error": "BrokerApiError: get account: request is not authorized "
                                     "(HTTP 401, code 40110000)"}
    f = failing(binding, POLICY)
    assert f is not None and f.job == "binding"


def test_a_401_names_the_key_and_the_secret_to_rotate() -> None:
    err = "BrokerApiError: list positions: request is not authorized (HTTP 401, code 40110000)"
    assert explain(err, account="large", secret_id="ops-pipeline/alpaca") == (
        "the broker rejected large's API key (401): rotate the secret ops-pipeline/alpaca")
    f = failing(counters(in_row=3, recent=3, errors=3, last=err), POLICY)
    assert f is not None
    line = describe(f, account="large", secret_id="ops-pipeline/alpaca")
    assert line.startswith("the broker rejected large's API key (401): rotate the secret")
    assert "last error: BrokerApiError: list positions" in line


def test_other_causes() -> None:
    def why(e: str) -> str:
        return explain(e, account="tiny", secret_id="s")
    assert "pattern-day-trading" in why("BrokerApiError: submit: trade denied due to pattern "
                                        "day trading protection (HTTP 403, code 40310100)")
    assert "rate-limiting" in why("BrokerApiError: x (HTTP 429)")
    assert "answers 503" in why("BrokerApiError: x (HTTP 503)")
    assert "does not answer" in why("BrokerUnavailable: get account: timed out after 10s")
    assert "database" in why("ConnectionDoesNotExistError: connection was closed")
    assert why("ValueError: boom") == "its runs raise an error"


@settings(max_examples=300)
@given(st.integers(0, 30), st.integers(0, 20), st.integers(0, 20))
def test_failing_is_monotonic_in_failures(in_row: int, recent: int, errors: int) -> None:
    errors = min(errors, recent)
    base = failing(counters(in_row=in_row, recent=recent, errors=errors), POLICY)
    worse = failing(counters(in_row=in_row + 1, recent=recent, errors=errors), POLICY)
    assert base is None or worse is not None


def test_a_paused_dispatcher_says_what_the_outage_holds_back() -> None:
    from ops.core.health import dispatch_pause

    assert dispatch_pause({"dispatcher.dispatch_paused": 0}, "large") is None
    p = dispatch_pause({"dispatcher.dispatch_paused": 1, "dispatcher.dispatch_paused_for_s": 41.2,
                        "dispatcher.dispatch_paused_reason": "database unreachable",
                        "dispatcher.signals_waiting": 3}, "large")
    assert p is not None and p.describe() == (
        "large: dispatch paused: database unreachable for 41s, 3 signal(s) waiting")
