"""Green must mean "the account is being managed" (issue 13), through a real supervisord,
the real watchdog and the simulator: revoke an account's API key at the broker and its
processes go `failing` (alive, heartbeating, every run refused) with the 401 named, one
incident per process and an alert; restore it and everything closes by itself and the
report is healthy again, with no operator action. Meanwhile a failing process is
restarted at most `failing_restarts` times and the alert escalates: never a crash loop.

Durations: $OPS_E2E_REVOKED_S (how long the key stays revoked, default 90 s; the issue's
5-minute count: 300). The pure decision over a simulated 5 minutes is in
tests/watchdog/test_decisions.py.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack, make_home, tear_down, up_demo
from tests.watchdog.test_supervised import Receiver

pytestmark = pytest.mark.timeout(900)

REVOKED_S = float(os.environ.get("OPS_E2E_REVOKED_S", "90"))
FAILING_BOUND_S = 30.0  # revoke -> failing + incident + alert (issue 13's "done when")
HEALTHY_BOUND_S = 60.0  # restore -> every incident closed, report healthy


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


# The stream's bounds, short so each connectivity fault below lasts seconds, not minutes
# (the product's defaults: 60 / 30 / 5 / 5 in 300 s; fill checks every 60 s).
STREAM_BOUNDS = {"stream_silence_s = 60": "stream_silence_s = 8",
                 "stream_disconnected_s = 30": "stream_disconnected_s = 5",
                 "stream_flap_drops = 5": "stream_flap_drops = 3",
                 "stream_flap_window_s = 300": "stream_flap_window_s = 20",
                 "fill_check_s = 60": "fill_check_s = 10"}


def _tweak(text: str, hook: str) -> str:
    text = text.replace("webhook_urls = []", hook)
    for old, new in STREAM_BOUNDS.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def stack(receiver: Receiver) -> Iterator[Stack]:
    hook = f'webhook_urls = ["http://127.0.0.1:{receiver.port}/hook"]'
    _, port, environ, env = make_home(lambda t: _tweak(t, hook))
    try:
        s = up_demo(env, environ, port)
        assert s.up.returncode == 0, s.up.stdout + s.up.stderr
        yield s
    finally:
        tear_down(env, environ)


def fault(stack: Stack, action: str, **kw: Any) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{stack.sim_port}/_sim/faults",
                                 data=json.dumps({"action": action, **kw}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["result"]


def status(stack: Stack) -> tuple[int, dict[str, Any]]:
    out = stack.ops("status", "--json", timeout=60)
    return out.returncode, json.loads(out.stdout)


def test_a_revoked_key_is_failing_named_and_alerted_then_clears_by_itself(
    stack: Stack, receiver: Receiver
) -> None:
    stack.poll("the stack healthy before the fault", lambda: status(stack)[0] == 0, 90)
    t0 = time.monotonic()
    fault(stack, "revoke_key", account="tiny")

    def failing_named() -> list[dict[str, Any]]:
        _, js = status(stack)
        return [p for p in js["processes"] if p["status"] == "failing"
                and "rotate the secret ops-pipeline/alpaca/tiny" in (p.get("failure") or "")]
    procs = stack.poll("a tiny process failing with the 401 named", failing_named,
                       FAILING_BOUND_S)
    assert all(p["account"] == "tiny" for p in procs)

    def incident_and_alert() -> bool:
        rows = stack.query("SELECT kind, detail FROM incidents WHERE closed_at IS NULL "
                           "AND kind = 'failing' AND detail LIKE '%(401)%'")
        alerted = any("failing" in t and "401" in t for t in receiver.texts())
        return bool(rows) and alerted
    stack.poll("a failing incident and its alert", incident_and_alert,
               FAILING_BOUND_S - (time.monotonic() - t0))
    detected_s = time.monotonic() - t0

    # Keep it revoked: restarts stay bounded, then the alert escalates.
    observe_until = t0 + REVOKED_S
    restarts: dict[str, int] = {}
    while time.monotonic() < observe_until:
        for r in stack.query("SELECT process, restarts FROM incidents WHERE kind = 'failing'"):
            restarts[r["process"]] = max(restarts.get(r["process"], 0), int(r["restarts"]))
        time.sleep(2)
    assert restarts and max(restarts.values()) <= 2, restarts  # failing_restarts default 2
    escalated = [t for t in receiver.texts() if "ESCALATED" in t]
    assert escalated, receiver.texts()[-5:]

    t1 = time.monotonic()
    fault(stack, "revoke_key", account="tiny", on=False)

    def healthy() -> bool:
        code, js = status(stack)
        return code == 0 and not js["incidents"]
    stack.poll("every incident closed by itself and the report healthy", healthy,
               HEALTHY_BOUND_S)
    cleared_s = time.monotonic() - t1
    closed = stack.query("SELECT kind, close_reason FROM incidents WHERE kind = 'failing'")
    assert closed and all(r["close_reason"] for r in closed)
    print(f"\nFAILING detected in {detected_s:.1f}s (bound {FAILING_BOUND_S:g}); restarts "
          f"{restarts}; cleared in {cleared_s:.1f}s (bound {HEALTHY_BOUND_S:g})")


def test_one_bad_config_edit_is_one_incident_closed_by_the_fix(stack: Stack) -> None:
    """Every process refuses the edit; the operator sees one `config-invalid` incident
    listing them, and the fix closes it with the reason."""
    path = stack.env.config_path
    good = path.read_text()
    path.write_text(good.replace("stream_check_s = 5", "stream_check_s = -5", 1))
    try:
        def one_incident() -> list[Any]:
            rows = stack.query("SELECT id, seen_by FROM incidents WHERE kind = "
                               "'config-invalid' AND closed_at IS NULL")
            return rows if rows and len(rows[0]["seen_by"]) >= 3 else []
        rows = stack.poll("one config-invalid incident, seen by several processes",
                          one_incident, 60)
        assert len(rows) == 1
        code, js = status(stack)
        assert code == 1 and any(r.startswith("config file is invalid")
                                 for r in js["reasons"]), js["reasons"]
    finally:
        path.write_text(good)
    def closed() -> bool:
        r = stack.query("SELECT closed_at, close_reason FROM incidents WHERE kind = "
                        "'config-invalid'")
        return bool(r) and all(x["closed_at"] is not None for x in r)
    stack.poll("the config-invalid incident closed by the fix", closed, 60)
    [row] = stack.query("SELECT close_reason FROM incidents WHERE kind = 'config-invalid'")
    assert "valid config" in row["close_reason"]
    assert len(stack.query("SELECT 1 FROM incidents WHERE kind = 'config-invalid'")) == 1


def test_a_sigkill_says_sigkill(stack: Stack) -> None:
    import signal as sig

    from ops.supervise.supervisor import SupervisorClient

    sup = SupervisorClient.for_env(stack.env, timeout_s=10)
    victim = next(p for p in sup.processes() if p.name == "large-position-manager")
    assert victim.pid
    os.kill(victim.pid, sig.SIGKILL)

    def exited() -> list[Any]:
        return stack.query("SELECT detail FROM incidents WHERE kind = 'exited' AND "
                           "process = 'large-position-manager' AND detail LIKE $1",
                           f"%pid {victim.pid}%")
    [row] = stack.poll("an exited incident for the killed pid", exited, 30)
    assert "terminated by SIGKILL" in row["detail"], row["detail"]
    assert "exit status" not in row["detail"]


def _open(stack: Stack, kind: str, process: str) -> list[Any]:
    return stack.query("SELECT detail, opened_at FROM incidents WHERE kind = $1 AND "
                       "process = $2 AND closed_at IS NULL", kind, process)


def _closed(stack: Stack, kind: str, process: str) -> bool:
    rows = stack.query("SELECT closed_at, close_reason FROM incidents WHERE kind = $1 AND "
                       "process = $2", kind, process)
    return bool(rows) and all(r["closed_at"] is not None and r["close_reason"] for r in rows)


def test_stream_refused_flapping_and_deaf_are_incidents_within_their_bounds(
    stack: Stack
) -> None:
    """Through the real stream processes (bounds shortened, STREAM_BOUNDS): a stream the
    broker refuses at authentication, one dropped every 2 s, one connected but deaf while
    the account trades; each opens its incident within its bound and closes by itself."""
    # Refused: valid keys the broker's stream now rejects; REST keeps working.
    fault(stack, "refuse_auth", account="large")
    fault(stack, "drop_streams", account="large")
    t0 = time.monotonic()
    [row] = stack.poll("stream-refused on large-stream", lambda: _open(
        stack, "stream-refused", "large-stream"), 5 + 25)
    refused_s = time.monotonic() - t0
    assert "ops-pipeline/alpaca" in row["detail"]  # the secret to check, never key material
    fault(stack, "refuse_auth", account="large", on=False)
    stack.poll("stream-refused closed by itself", lambda: _closed(
        stack, "stream-refused", "large-stream"), 60)

    # Flapping: dropped every 2 s; each reconnect is quick, so it is never down long.
    fault(stack, "drop_every", seconds=2, account="tiny")
    t1 = time.monotonic()
    try:
        stack.poll("stream-flapping on tiny-stream", lambda: _open(
            stack, "stream-flapping", "tiny-stream"), 20)
        flap_s = time.monotonic() - t1
    finally:
        fault(stack, "drop_every", seconds=0, account="tiny")
    stack.poll("stream-flapping closed after a quiet window", lambda: _closed(
        stack, "stream-flapping", "tiny-stream"), 60)

    # Deaf: connected, pings answered, no trade update while the account trades.
    fault(stack, "mute", account="large", for_s=40)
    t2 = time.monotonic()
    try:
        stack.poll("stream-silent on large-stream", lambda: _open(
            stack, "stream-silent", "large-stream"), 8 + 10 + 20)
        silent_s = time.monotonic() - t2
    finally:
        fault(stack, "unmute", account="large")
    stack.poll("stream-silent closed once updates flow", lambda: _closed(
        stack, "stream-silent", "large-stream"), 60)
    print(f"\nstream incidents opened after: refused {refused_s:.1f}s (bound 5), flapping "
          f"{flap_s:.1f}s (3 drops in 20 s), silent {silent_s:.1f}s (bound 8 + a check)")
