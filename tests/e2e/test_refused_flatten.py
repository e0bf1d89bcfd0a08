"""Issue 13.3 end to end: a flatten the broker refuses (pattern-day-trading protection on
the 1k account) is an incident within a dispatcher pass or two, naming the broker's
message, and an alert goes out; it closes itself once the closes are accepted.

A demo stack of its own (`ops up --demo` under a real supervisord) whose alert sink is a
webhook served by this test, so the alert is seen twice: as a row of the watchdog's
outbox ($OPS_HOME/alerts.sqlite3) and as the POST the sink received. The refusal is armed
through the simulator's admin API (`POST /_sim/faults`, action `refuse_next_orders`).
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.conftest import Stack, make_home, tear_down, up_demo, webhook

pytestmark = pytest.mark.timeout(300)

DISPATCHER_S = 2.0  # conf/ops.toml [accounts.tiny.schedule] dispatcher_s
PDT_TEXT = "pattern-day-trading protection (403 40310100)"


@contextmanager
def demo_with_webhook(url: str) -> Iterator[Stack]:
    def tweak(text: str) -> str:
        assert "webhook_urls = []" in text
        return text.replace("webhook_urls = []", f'webhook_urls = ["{url}"]')

    _, port, environ, env = make_home(tweak)
    try:
        yield up_demo(env, environ, port)
    finally:
        tear_down(env, environ)


def sim_call(stack: Stack, path: str, body: Any = None, account: str = "tiny") -> Any:
    """GET with the account's keys, or POST `body` to an admin path (loopback only)."""
    url = f"http://127.0.0.1:{stack.sim_port}{path}"
    if body is not None:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    else:
        secrets = json.loads((stack.env.home / "secrets.json").read_text())
        keys = secrets[f"ops-pipeline/alpaca/{account}"]
        req = urllib.request.Request(url, headers={
            "APCA-API-KEY-ID": keys["api_key"], "APCA-API-SECRET-KEY": keys["api_secret"]})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{path}: HTTP {exc.code}: {exc.read()!r}") from None


def outbox_rows(stack: Stack, kind: str) -> list[dict[str, Any]]:
    path = stack.env.home / "alerts.sqlite3"
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute("SELECT payload FROM outbox").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()
    payloads = [json.loads(r[0]) for r in rows]  # {"text": ..., "alert": {"kind": ...}}
    return [p for p in payloads if p.get("alert", {}).get("kind") == kind]


def test_pdt_refused_flatten_is_an_incident_and_an_alert_then_clears() -> None:
    with webhook() as (url, received), demo_with_webhook(url) as stack:
        assert stack.up.returncode == 0, stack.up.stdout + stack.up.stderr
        held = stack.poll("tiny holds a position at the simulator",
                          lambda: sim_call(stack, "/v2/positions"), timeout_s=120)
        symbols = {p["symbol"] for p in held}
        armed = sim_call(stack, "/_sim/faults", {"action": "refuse_next_orders",
                                                 "n": 100000, "account": "tiny"})
        assert armed["ok"] and armed["result"]["code"] == 40310100

        out = stack.ops("pause", "tiny", "--mode", "flatten")
        assert out.returncode == 0, out.stdout + out.stderr
        engaged = stack.query("SELECT updated_at FROM controls WHERE account = 'tiny' "
                              "AND key = 'kill_switch'")[0]["updated_at"]

        def open_refusals() -> list[Any]:
            return stack.query("SELECT dedupe_key, detail, opened_at, process FROM incidents"
                               " WHERE kind = 'flatten-refused' AND account = 'tiny'"
                               " AND closed_at IS NULL")

        rows = stack.poll("a flatten-refused incident for tiny", open_refusals,
                          timeout_s=30, interval_s=0.2)
        first: datetime = min(r["opened_at"] for r in rows)
        # Within a dispatcher pass or two of the switch (its kill-switch read is cached 1 s).
        assert (first - engaged).total_seconds() < 2 * DISPATCHER_S + 2, (first, engaged)
        inc = rows[0]
        assert inc["process"] == "tiny-dispatcher"
        assert inc["dedupe_key"].startswith("flatten-refused:tiny:")
        assert "the broker refused the flatten close of" in inc["detail"]
        assert " on tiny " in inc["detail"] and PDT_TEXT in inc["detail"]
        assert "close it by hand or wait" in inc["detail"]

        # The alert: queued in the outbox and received by the sink.
        stack.poll("the alert in the watchdog's outbox",
                   lambda: outbox_rows(stack, "flatten-refused"), timeout_s=30)
        stack.poll("the alert delivered to the webhook",
                   lambda: [b for b in received if "flatten-refused" in json.dumps(b)],
                   timeout_s=60)

        # Passes keep being refused: still one incident per symbol, never a second.
        passes_later = time.monotonic() + 3 * DISPATCHER_S
        stack.poll("three more dispatcher passes", lambda: time.monotonic() > passes_later,
                   timeout_s=30, interval_s=0.5)
        per_key = stack.query("SELECT dedupe_key, count(*) AS n FROM incidents "
                              "WHERE kind = 'flatten-refused' GROUP BY dedupe_key")
        assert per_key and all(r["n"] == 1 for r in per_key), per_key
        assert {r["dedupe_key"].rsplit(":", 1)[1] for r in per_key} <= symbols | {
            p["symbol"] for p in sim_call(stack, "/v2/positions")}

        # The refusal is lifted: the closes go through, the incidents close themselves.
        sim_call(stack, "/_sim/faults", {"action": "clear"})
        stack.poll("tiny's flatten-refused incidents closed",
                   lambda: not open_refusals(), timeout_s=30)
        closed = stack.query("SELECT close_reason, closed_by FROM incidents "
                             "WHERE kind = 'flatten-refused'")
        assert all(r["closed_by"] == "tiny-dispatcher" and r["close_reason"]
                   for r in closed), closed
        stack.poll("tiny flat at the simulator",
                   lambda: sim_call(stack, "/v2/positions") == [], timeout_s=60)
