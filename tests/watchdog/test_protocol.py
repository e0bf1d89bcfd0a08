"""The supervisord event-listener protocol: READY / header + payload / RESULT, and parsing."""

from __future__ import annotations

import io

from ops.roles.watchdog import ListenerProtocol, parse_event, parse_tokens

TICK = b"ver:3.0 server:supervisor serial:21 pool:watchdog poolserial:10 eventname:TICK_5 len:15\n"
EXITED_PAYLOAD = (b"processname:large-dispatcher groupname:large from_state:RUNNING "
                  b"expected:0 pid:42")
EXITED = (b"ver:3.0 server:supervisor serial:22 pool:watchdog poolserial:11 "
          b"eventname:PROCESS_STATE_EXITED len:%d\n" % len(EXITED_PAYLOAD))


def test_protocol_answers_every_event_and_stops_at_eof() -> None:
    stdin = io.BytesIO(TICK + b"when:1700000000" + EXITED + EXITED_PAYLOAD)
    stdout = io.BytesIO()
    seen: list[tuple[dict[str, str], str]] = []
    proto = ListenerProtocol(stdin, stdout, lambda h, p: seen.append((h, p)))
    proto.serve()
    assert stdout.getvalue() == b"READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
    assert [h["eventname"] for h, _ in seen] == ["TICK_5", "PROCESS_STATE_EXITED"]
    assert seen[0][1] == "when:1700000000"
    assert proto.events == 2


def test_a_failing_handler_still_gets_an_answer_out() -> None:
    stdin = io.BytesIO(TICK + b"when:1700000000")
    stdout = io.BytesIO()

    def boom(headers: dict[str, str], payload: str) -> None:
        raise RuntimeError("handler bug")

    ListenerProtocol(stdin, stdout, boom).serve()
    assert stdout.getvalue() == b"READY\nRESULT 2\nOKREADY\n"


def test_parse_process_state_events() -> None:
    headers = parse_tokens(EXITED.decode())
    ev = parse_event(headers, EXITED_PAYLOAD.decode())
    assert ev is not None
    assert (ev.name, ev.from_state, ev.to_state, ev.expected, ev.pid) == (
        "large-dispatcher", "RUNNING", "EXITED", False, 42)
    backoff = parse_event({"eventname": "PROCESS_STATE_BACKOFF"},
                          "processname:x groupname:x from_state:STARTING tries:1")
    assert backoff is not None and backoff.to_state == "BACKOFF" and backoff.expected is None
    assert parse_event({"eventname": "TICK_5"}, "when:1") is None
