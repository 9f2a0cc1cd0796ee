"""``advisor-middleware check URL`` against real servers on 127.0.0.1: the demo gateway behind
``AdvisorMiddleware`` (every check passes), small gateways that each break one rule (the report
names it and the exit status is 1), and addresses nothing answers (one line, exit status 2).
"""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.accumulate import message_to_events
from advisor_middleware.check import INSTALL_SDK, index_problem
from advisor_middleware.cli import main
from advisor_middleware.demo import DemoGateway
from advisor_middleware.sse import encode_event, encode_json

from .support.helpers import Slot, read_body
from .support.servers import free_port, threaded, uvicorn_server

SCRIPT = Path(sys.executable).with_name("advisor-middleware")

Events = list[dict[str, Any]]
Break = Callable[[dict[str, Any], Events], None]


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, Slot]]:
    """One uvicorn server for the module; each test puts its gateway in the slot."""
    slot = Slot()
    with threaded(uvicorn_server, slot) as url:
        yield url, slot


def demo() -> AdvisorMiddleware:
    """The demo gateway, unpaced, behind the middleware."""
    return AdvisorMiddleware(DemoGateway(delay=0, advisor_delay=0))


def check(url: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Runs the command in this process: its exit status and what it printed."""
    status = main(["check", url, "--timeout", "60", *args])
    return status, capsys.readouterr().out


def lines(out: str, verdict: str) -> list[tuple[str, str, str]]:
    """(probe, rule, detail) of every report line with this verdict."""
    found = []
    for line in out.splitlines():
        if line.startswith(f"  {verdict}  "):
            probe = line[8:16].strip()
            rule, _, detail = line[18:].partition(" ")
            found.append((probe, rule, detail.strip()))
    return found


# --- the demo gateway behind AdvisorMiddleware --------------------------------------------------


def test_every_check_passes_against_the_demo(gateway: tuple[str, Slot], capsys: pytest.CaptureFixture[str]) -> None:
    url, slot = gateway
    slot.app = demo()
    status, out = check(url, capsys, "--model", "exec-m", "--advisor", "adv-m")
    assert status == 0, out
    assert lines(out, "FAIL") == [] and lines(out, "skip") == []
    passed = {(probe, rule) for probe, rule, _ in lines(out, "pass")}
    message_rules = {"advisor-call", "advisor-result", "advice", "iterations", "usage-total"}
    stream_rules = {"event-order", "indices", *message_rules}
    expected = {("streamed", rule) for rule in {"status", "sdk", *stream_rules}}
    expected |= {("json", rule) for rule in {"status", *message_rules}}
    expected |= {("turn 2", rule) for rule in {"history", *stream_rules}}
    assert passed == expected
    assert "23 checks: 0 failed, 0 not checked." in out


def test_the_timeline_shows_the_consults_legs_in_order(
    gateway: tuple[str, Slot], capsys: pytest.CaptureFixture[str]
) -> None:
    url, slot = gateway
    slot.app = demo()
    status, out = check(url, capsys, "--model", "exec-m", "--advisor", "adv-m", "--json")
    assert status == 0, out
    report = json.loads(out)
    assert report["ok"] is True
    assert report["url"] == url + "/v1/messages"
    legs = report["timeline"]
    assert [(leg["kind"], leg["model"]) for leg in legs] == [
        ("executor", "exec-m"),
        ("advisor", "adv-m"),
        ("executor", "exec-m"),
    ]
    for before, after in itertools.pairwise(legs):
        assert before["end"] == after["start"]  # each leg starts where the one before ended
    for leg in legs:
        assert leg["start"] <= leg["end"]
        assert leg["input_tokens"] > 0 and leg["output_tokens"] > 0
    assert legs[1]["first_byte"] is None  # the advisor's result arrives whole
    assert {(c["probe"], c["rule"], c["passed"]) for c in report["checks"]} >= {("streamed", "sdk", True)}


def test_the_text_report_draws_the_timeline(gateway: tuple[str, Slot], capsys: pytest.CaptureFixture[str]) -> None:
    url, slot = gateway
    slot.app = demo()
    status, out = check(url, capsys, "--model", "exec-m", "--advisor", "adv-m")
    assert status == 0, out
    timeline = out.split("Timeline of the streamed consult", 1)[1]
    assert "legs are not seen separately" in timeline
    rows = [line.split() for line in timeline.splitlines() if line.startswith(("  executor", "  advisor"))]
    assert [(row[0], row[1]) for row in rows] == [("executor", "exec-m"), ("advisor", "adv-m"), ("executor", "exec-m")]


# --- gateways that break one rule ---------------------------------------------------------------


def consult_message() -> dict[str, Any]:
    """A correct answer with one consult, as the middleware would give it."""
    srv = "srvtoolu_canned1"
    return {
        "id": "msg_canned",
        "type": "message",
        "role": "assistant",
        "model": "exec-m",
        "content": [
            {"type": "text", "text": "Asking."},
            {"type": "server_tool_use", "id": srv, "name": "advisor", "input": {}},
            {"type": "advisor_tool_result", "tool_use_id": srv, "content": {"type": "advisor_result", "text": "Go."}},
            {"type": "text", "text": "Done."},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 30,
            "output_tokens": 12,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "iterations": [
                {"type": "message", "input_tokens": 10, "output_tokens": 5},
                {"type": "advisor_message", "model": "adv-m", "input_tokens": 100, "output_tokens": 40},
                {"type": "message", "input_tokens": 20, "output_tokens": 7},
            ],
        },
    }


class Canned:
    """A gateway that answers every request with ``consult_message()``, after ``damage`` has
    broken it (the Message for JSON answers, and the event list for streams)."""

    def __init__(self, damage: Break | None = None, refuse_history: bool = False, key: str | None = None) -> None:
        self.damage = damage
        self.refuse_history = refuse_history
        self.key = key
        """With a key, requests without it get a 401."""
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        """(path, headers, body) of every request."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = json.loads(await read_body(receive))
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        self.requests.append((scope["path"], headers, body))
        if self.key is not None and headers.get("x-api-key") != self.key:
            await refuse(send, 401, "authentication_error", "invalid x-api-key")
            return
        if self.refuse_history and len(body["messages"]) > 1:
            await refuse(send, 400, "invalid_request_error", "no advisor blocks")
            return
        message = consult_message()
        events = list(message_to_events(copy.deepcopy(message)))
        if self.damage is not None:
            self.damage(message, events)
        if body.get("stream"):
            await respond(send, 200, "text/event-stream", b"".join(map(encode, events)))
        else:
            await respond(send, 200, "application/json", encode_json(message))


def encode(event: dict[str, Any]) -> bytes:
    """The event as SSE; an ``event_line`` key (a damage's) replaces its ``event:`` name."""
    name = event.pop("event_line", None)
    sse = encode_event(event)
    return sse if name is None else b"event: " + name.encode() + sse[sse.index(b"\n") :]


async def refuse(send: Any, status: int, kind: str, message: str) -> None:
    error = {"type": "error", "error": {"type": kind, "message": message}}
    await respond(send, status, "application/json", encode_json(error))


async def respond(send: Any, status: int, kind: str, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind.encode())]})
    await send({"type": "http.response.body", "body": payload})


def skip_index(message: dict[str, Any], events: Events) -> None:
    """The second block and everything after it one index too far."""
    for event in events:
        if "index" in event and event["index"] >= 1:
            event["index"] += 1


def drop_advisor_iteration(message: dict[str, Any], events: Events) -> None:
    for usage in (message["usage"], events[-2]["usage"]):
        usage["iterations"] = [it for it in usage["iterations"] if it["type"] != "advisor_message"]


def no_consult(message: dict[str, Any], events: Events) -> None:
    """The executor answered without the advisor (as if ``tool_choice`` was ignored)."""
    message["content"] = [{"type": "text", "text": "Done."}]
    message["usage"]["iterations"] = message["usage"]["iterations"][:1]
    message["usage"].update(input_tokens=10, output_tokens=5)
    events[:] = list(message_to_events(copy.deepcopy(message)))


def wrong_call_id(message: dict[str, Any], events: Events) -> None:
    for content in (message["content"], [e["content_block"] for e in events if "content_block" in e]):
        for block in content:
            if block["type"] == "advisor_tool_result":
                block["tool_use_id"] = "srvtoolu_other"


def advisor_tokens_on_top(message: dict[str, Any], events: Events) -> None:
    for usage in (message["usage"], events[-2]["usage"]):
        usage.update(input_tokens=130, output_tokens=52)


def no_message_delta(message: dict[str, Any], events: Events) -> None:
    del events[-2]


def block_after_message_delta(message: dict[str, Any], events: Events) -> None:
    """The last block comes after the message_delta."""
    last_start = max(i for i, event in enumerate(events) if event["type"] == "content_block_start")
    events.insert(last_start, events.pop(-2))


def failed_advisor(message: dict[str, Any], events: Events) -> None:
    error = {"type": "advisor_tool_result_error", "error_code": "overloaded"}
    for content in (message["content"], [e["content_block"] for e in events if "content_block" in e]):
        for block in content:
            if block["type"] == "advisor_tool_result":
                block["content"] = error


def misnamed(message: dict[str, Any], events: Events) -> None:
    events[1]["event_line"] = "ping"  # a content_block_start whose event line says ping


def json_without_the_last_block(message: dict[str, Any], events: Events) -> None:
    """The JSON answer ends at the advice: its shape is not the stream's."""
    del message["content"][-1]


def named_wrong(message: dict[str, Any], events: Events) -> None:
    for content in (message["content"], [e["content_block"] for e in events if "content_block" in e]):
        for block in content:
            if block["type"] == "server_tool_use":
                block["name"] = "web_search"


@pytest.mark.parametrize(
    ("damage", "failures"),
    [
        (
            skip_index,
            {
                (probe, "indices"): "content_block_start at index 2, where 1 was next (event 4)"
                for probe in ("streamed", "turn 2")
            },
        ),
        (
            drop_advisor_iteration,
            {
                (probe, "iterations"): "0 advisor_message iteration(s) for 1 consult(s)"
                for probe in ("streamed", "json", "turn 2")
            },
        ),
        (no_consult, {(probe, "advisor-call"): "the forced consult did not happen" for probe in ("streamed", "json")}),
        (
            wrong_call_id,
            {
                (probe, "advisor-result"): "names 'srvtoolu_other', which no server_tool_use before it has"
                for probe in ("streamed", "json", "turn 2")
            },
        ),
        (
            advisor_tokens_on_top,
            {
                (probe, "usage-total"): "usage.input_tokens is 130, the executor iterations sum to 30: "
                "it includes the advisor's tokens"
                for probe in ("streamed", "json", "turn 2")
            },
        ),
        (
            no_message_delta,
            {
                **{(p, "event-order"): "no message_delta before message_stop" for p in ("streamed", "turn 2")},
                # message_start's usage is all there is: output_tokens 0
                **{(p, "usage-total"): "usage.output_tokens is 0" for p in ("streamed", "turn 2")},
            },
        ),
        (
            block_after_message_delta,
            {(p, "event-order"): "content_block_start after message_delta" for p in ("streamed", "turn 2")},
        ),
        (failed_advisor, {(probe, "advice"): "'overloaded'" for probe in ("streamed", "json", "turn 2")}),
        (misnamed, {(p, "event-order"): "event 1 is named 'ping' but its data's type" for p in ("streamed", "turn 2")}),
        (json_without_the_last_block, {("streamed", "sdk"): "streamed [text, server_tool_use"}),
        (named_wrong, {(probe, "advisor-call"): "named 'web_search'" for probe in ("streamed", "json", "turn 2")}),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_a_broken_rule_is_named(
    gateway: tuple[str, Slot], capsys: pytest.CaptureFixture[str], damage: Break, failures: dict[Any, str]
) -> None:
    url, slot = gateway
    slot.app = Canned(damage)
    status, out = check(url, capsys)
    assert status == 1, out
    failed = {(probe, rule): detail for probe, rule, detail in lines(out, "FAIL")}
    # The broken rule fails, and nothing else (the SDK may fail on the same bytes too).
    assert set(failed) - {("streamed", "sdk")} == set(failures) - {("streamed", "sdk")}, out
    for key, words in failures.items():
        assert words in failed[key], (key, failed[key])


def test_the_canned_gateway_passes_unbroken(gateway: tuple[str, Slot], capsys: pytest.CaptureFixture[str]) -> None:
    url, slot = gateway
    slot.app = Canned()
    status, out = check(url, capsys)
    assert status == 0, out
    assert len(lines(out, "pass")) == 23


def test_a_refused_second_turn_fails_history(gateway: tuple[str, Slot], capsys: pytest.CaptureFixture[str]) -> None:
    url, slot = gateway
    slot.app = Canned(refuse_history=True)
    status, out = check(url, capsys)
    assert status == 1, out
    assert lines(out, "FAIL") == [("turn 2", "history", "HTTP 400: invalid_request_error: no advisor blocks")]


def test_what_is_sent(gateway: tuple[str, Slot], capsys: pytest.CaptureFixture[str]) -> None:
    url, slot = gateway
    slot.app = canned = Canned(key="sk-right")
    options = ("--key", "sk-right", "--header", "x-team: infra", "--model", "exec-m", "--advisor", "adv-m")
    status, out = check(url + "/v1/messages", capsys, *options)  # the Messages URL works too
    assert status == 0, out
    assert [(path, body["stream"]) for path, _, body in canned.requests] == [
        ("/v1/messages", True),
        ("/v1/messages", False),
        ("/v1/messages", True),
    ]
    for _, headers, body in canned.requests:
        assert headers["x-api-key"] == "sk-right" and headers["x-team"] == "infra"
        assert headers["anthropic-beta"] == "advisor-tool-2026-03-01"
        assert body["model"] == "exec-m"
        assert body["tools"] == [{"type": "advisor_20260301", "name": "advisor", "model": "adv-m"}]
    forced = {"type": "tool", "name": "advisor"}
    assert [body.get("tool_choice") for _, _, body in canned.requests] == [forced, forced, None]
    history = canned.requests[2][2]["messages"]
    assert [message["role"] for message in history] == ["user", "assistant", "user"]
    assert history[1]["content"] == consult_message()["content"]  # the first answer, verbatim


def test_a_refused_key_fails_every_answer(gateway: tuple[str, Slot], capsys: pytest.CaptureFixture[str]) -> None:
    url, slot = gateway
    slot.app = Canned(key="sk-right")
    status, out = check(url, capsys, "--key", "sk-wrong")
    assert status == 1, out
    refused = "HTTP 401: authentication_error: invalid x-api-key"
    assert lines(out, "FAIL") == [
        ("streamed", "status", refused),
        ("streamed", "sdk", "not compared: an answer failed (see status)"),
        ("json", "status", refused),
        ("turn 2", "history", "not sent: neither first answer can be sent back"),
    ]
    assert lines(out, "pass") == [] and "Timeline" not in out


def test_without_the_sdk_its_check_says_how_to_install_it(
    gateway: tuple[str, Slot], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, slot = gateway
    slot.app = demo()
    monkeypatch.setitem(sys.modules, "anthropic", None)  # import anthropic raises ImportError
    status, out = check(url, capsys)
    assert status == 1, out  # a check that could not run has not passed
    assert lines(out, "skip") == [("streamed", "sdk", f"not checked: the official SDK is not installed: {INSTALL_SDK}")]
    assert lines(out, "FAIL") == []


# --- nothing there --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "no-such-host.invalid"])
def test_an_address_nothing_answers_is_one_line(host: str) -> None:
    url = "http://" + host.format(port=free_port())
    done = subprocess.run(
        [str(SCRIPT), "check", url, "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"advisor-middleware check: cannot reach {url}/v1/messages: ")
    assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize("index", [[0], {"i": 0}, "0", None])
def test_an_index_that_is_not_a_number_is_a_problem_not_a_crash(index: object) -> None:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": "x"}},
    ]
    problem = index_problem(events)
    assert problem is not None and "not open" in problem
