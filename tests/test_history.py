"""Later turns: the client's replayed advisor history, rendered for the executor."""

from __future__ import annotations

import glob
import gzip
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from starlette.applications import Starlette

from advisor_middleware.history import REDACTED_PLACEHOLDER, advice_tool_result, render_history

from .support.helpers import (
    ADDITION,
    ONE_CONSULT,
    REDACTED,
    REMOVAL,
    SECRET,
    advice,
    advisor_pair,
    assert_host_stream,
    assistant,
    block_types,
    call,
    expected_blocks,
    http_for,
    is_advisor_block,
    messages_bytes,
    plain_usage,
    post,
    reminder,
    rendered_blocks,
    result,
    srv,
    strip_cache_control,
    system,
    tool_result,
    user,
)
from .support.upstream import ADVISOR_TOOL, Fail, Reply, Script, text, thinking, tool_use

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Starlette]
CAPTURES = Path(__file__).parent / "fixtures" / "claude-code-2.1.331"
CLOCK = {"name": "clock", "description": "The time.", "input_schema": {"type": "object", "properties": {}}}
DEFERRED_ADVISOR = {**ADVISOR_TOOL, "defer_loading": True}


def body_of(messages: list[Any], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "exec", "max_tokens": 1024, "messages": messages, "tools": [CLOCK, ADVISOR_TOOL]}
    body.update(overrides)
    return body


def ask_at_once(script: Script, call_id: str, advice_text: str) -> None:
    """The executor calls the advisor straight away (``call_id``), then answers "ok"."""
    script.executor(
        Reply([tool_use("advisor", id=call_id)], stop_reason="tool_use"),
        Reply([text("ok")]),
    ).advisor(Reply([text(advice_text)]))


# --- turn 2 after a turn through the middleware ----------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_second_turn_extends_the_first_turns_executor_view(
    client: anthropic.AsyncAnthropic, script: Script, streaming: bool
) -> None:
    script.executor(
        Reply(
            [thinking("plan", "sig-9"), text("Let me ask."), tool_use("advisor", {"why": "x"}, id="toolu_A1")],
            stop_reason="tool_use",
        ),
        Reply([text("Done: 4.")]),
        Reply([text("6.")]),
    ).advisor(Reply([text("Check the arithmetic.")]))
    question = [user("What is 2+2?")]
    turn1 = await call(client, streaming, model="exec", max_tokens=1024, messages=question, tools=[ADVISOR_TOOL])
    # What a client (Claude Code) sends back: the content blocks as it received them.
    replayed = [b.model_dump(exclude_none=True) for b in turn1.content]
    assert block_types(replayed) == ["thinking", *ONE_CONSULT]
    last_leg_turn1 = script.of("executor")[1].body["messages"]

    followup = user([text("And 3+3?")])
    messages = [*question, assistant(replayed), followup]
    turn2 = await call(client, streaming, model="exec", max_tokens=1024, messages=messages, tools=[ADVISOR_TOOL])
    assert [b.model_dump(exclude_none=True) for b in turn2.content] == [text("6.")]

    first_leg_turn2 = script.of("executor")[2].body["messages"]
    assert first_leg_turn2[: len(last_leg_turn1)] == last_leg_turn1
    assert first_leg_turn2 == [
        user("What is 2+2?"),
        assistant(
            [
                {"type": "thinking", "thinking": "plan", "signature": "sig-9"},
                text("Let me ask."),
                tool_use("advisor", id="toolu_A1"),
            ]
        ),
        user([tool_result("toolu_A1", "Check the arithmetic.")]),
        assistant([text("Done: 4.")]),
        followup,
    ]


def wire_content(response: httpx.Response, streaming: bool) -> list[dict[str, Any]]:
    """The assistant content as a client receives it on the wire, keys in wire order (what the JS
    SDK in Claude Code accumulates and later replays)."""
    if not streaming:
        content: list[dict[str, Any]] = response.json()["content"]
        return content
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    for chunk in response.content.split(b"\n\n"):
        if not chunk.strip():
            continue
        event = json.loads(chunk.split(b"\ndata: ", 1)[1])
        if event["type"] == "content_block_start":
            blocks[event["index"]] = dict(event["content_block"])
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
        elif event["type"] == "content_block_stop" and partial.get(event["index"]):
            blocks[event["index"]]["input"] = json.loads(partial[event["index"]])
    return [blocks[i] for i in sorted(blocks)]


@pytest.mark.parametrize("streaming", [True, False])
async def test_second_turn_bytes_start_with_the_first_turns_last_leg(
    make_app: MakeApp, script: Script, streaming: bool
) -> None:
    script.executor(
        Reply(
            [thinking("plan", "sig-9"), text("Let me ask."), tool_use("advisor", {"why": "x"}, id="toolu_A1")],
            stop_reason="tool_use",
        ),
        Reply([text("Done: 4."), tool_use("clock", id="toolu_C")], stop_reason="tool_use"),
        Reply([text("It is noon.")]),
    ).advisor(Reply([text("Check the arithmetic.")]))
    question: list[Any] = [user([text("What is 2+2?")])]
    app = make_app()
    async with http_for(app) as http:
        first = await http.post("/v1/messages", json=body_of(question, stream=streaming))
        replayed = wire_content(first, streaming)
        assert block_types(replayed) == ["thinking", *ONE_CONSULT, "tool_use"]
        clock_result = tool_result("toolu_C", "12:00")
        messages = [*question, assistant(replayed), user([clock_result])]
        second = await http.post("/v1/messages", json=body_of(messages, stream=streaming))
    assert second.status_code == 200
    legs = script.of("executor")
    assert len(legs) == 3
    turn1 = messages_bytes(legs[1].raw)
    turn2 = messages_bytes(legs[2].raw)
    # Turn 1's last leg ended with its own reply; turn 2 sends that reply and the tool result after it.
    assert turn2.startswith(turn1[:-1] + ",")
    assert json.loads(turn2)[len(json.loads(turn1)) :] == [
        assistant([text("Done: 4."), tool_use("clock", id="toolu_C")]),
        user([clock_result]),
    ]


async def test_an_executor_id_already_in_history_gets_a_fresh_one(make_app: MakeApp, script: Script) -> None:
    # Servers that number calls per response reuse ids across turns: the new call must not
    # collide with the one the history already pairs with its advice.
    ask_at_once(script, "toolu_A1", "new advice")
    messages = [
        user("q1"),
        assistant(advisor_pair("srvtoolu_toolu__A1", advice("old advice"))),
        user("q2"),
    ]
    response = await post(make_app(), json=body_of(messages))
    content = response.json()["content"]
    new_id = content[0]["id"]
    assert content[0]["type"] == "server_tool_use"
    assert new_id != "srvtoolu_toolu__A1"
    assert content[1] == {
        "type": "advisor_tool_result",
        "tool_use_id": new_id,
        "content": {"type": "advisor_result", "text": "new advice"},
    }
    second = script.of("executor")[1].body["messages"]
    tool_use_ids = [
        b["id"] for m in second if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_use"
    ]
    assert tool_use_ids[0] == "toolu_A1"
    assert len(tool_use_ids) == len(set(tool_use_ids)) == 2
    assert second[-1]["content"] == [{"type": "tool_result", "tool_use_id": tool_use_ids[1], "content": "new advice"}]


async def test_error_results_render_the_same_in_the_loop_and_in_history(
    client: anthropic.AsyncAnthropic, script: Script
) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_E")], stop_reason="tool_use"),
        Reply([text("Alone.")]),
        Reply([text("Next.")]),
    ).advisor(Fail(529, "overloaded_error"))
    turn1 = await call(client, True, model="exec", max_tokens=1024, messages=[user("q")], tools=[ADVISOR_TOOL])
    replayed = [b.model_dump(exclude_none=True) for b in turn1.content]
    messages = [
        user("q"),
        assistant(replayed),
        user("again"),
    ]
    await call(client, True, model="exec", max_tokens=1024, messages=messages, tools=[ADVISOR_TOOL])
    legs = script.of("executor")
    assert len(legs[1].body["messages"]) == 3
    assert legs[2].body["messages"][:3] == legs[1].body["messages"]
    assert legs[2].body["messages"][2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_E",
        "content": "The advisor is unavailable (overloaded). Continue without its advice.",
        "is_error": True,
    }


def test_replayed_content_renders_as_the_executor_saw_it() -> None:
    messages = [
        user("q"),
        assistant([text("Let me ask."), *advisor_pair("srvtoolu_toolu__01x", advice("Do X.")), text("Done.")]),
    ]
    rendered, info = render_history(messages)
    assert rendered == [
        user("q"),
        assistant([text("Let me ask."), tool_use("advisor", id="toolu_01x")]),
        user([tool_result("toolu_01x", "Do X.")]),
        assistant([text("Done.")]),
    ]
    assert info.had_advisor_blocks is True
    assert info.advisor_removed is None
    # The input is not modified.
    assert messages[1]["content"][1] == srv("srvtoolu_toolu__01x")


def test_replayed_client_tool_after_the_advisor_pair() -> None:
    messages = [
        user("q"),
        assistant(
            [*advisor_pair("srvtoolu_a", advice("Use the clock.")), text("Checking."), tool_use("clock", id="toolu_C")]
        ),
        user([tool_result("toolu_C", "12:00")]),
    ]
    rendered, _ = render_history(messages)
    assert rendered == [
        user("q"),
        assistant([tool_use("advisor", id="a")]),
        user([tool_result("a", "Use the clock.")]),
        assistant([text("Checking."), tool_use("clock", id="toolu_C")]),
        user([tool_result("toolu_C", "12:00")]),
    ]


# --- Claude Code's deferred shape --------------------------------------------------------------


async def test_deferred_shape_never_reaches_the_host(make_app: MakeApp, script: Script) -> None:
    ask_at_once(script, "toolu_D", "advice")
    messages = [
        user([text("hi")]),
        system([text("The advisor is available."), ADDITION]),
    ]
    body = body_of(messages, tools=[CLOCK, DEFERRED_ADVISOR], stream=True)
    response = await post(make_app(), json=body)
    assert response.status_code == 200
    legs = script.requests
    assert [leg.role for leg in legs] == ["executor", "advisor", "executor"]
    for leg in legs:
        assert b"tool_addition" not in leg.raw
        assert b"tool_reference" not in leg.raw
        assert b"defer_loading" not in leg.raw
        assert b"advisor_20260301" not in leg.raw
        assert all(m["role"] != "system" for m in leg.body["messages"])
    assert legs[0].body["messages"] == [user([text("hi"), reminder("The advisor is available.")])]
    assert [t["name"] for t in legs[0].body["tools"]] == ["clock", "advisor"]
    assert "defer_loading" not in legs[0].body["tools"][1]


def test_system_messages_become_user_reminders() -> None:
    messages = [
        user("hi"),
        system("plain string system"),
        assistant("hello"),
        system([text("Tools changed."), {**ADDITION, "cache_control": {"type": "ephemeral"}}]),
    ]
    rendered, info = render_history(messages)
    assert rendered == [
        user([text("hi"), reminder("plain string system")]),
        assistant("hello"),
        user([{**reminder("Tools changed."), "cache_control": {"type": "ephemeral"}}]),
    ]
    assert info.advisor_removed is False


@pytest.mark.parametrize("streaming", [False, True])
async def test_tool_removal_turns_the_advisor_off(make_app: MakeApp, script: Script, streaming: bool) -> None:
    reply = Reply([text("plain answer")], input_tokens=9, output_tokens=4)
    script.direct(reply)
    messages = [
        user("q1"),
        system([text("Advisor on."), ADDITION]),
        assistant([text("A"), *advisor_pair("srvtoolu_toolu__1", advice("adv")), text("B")]),
        user("q2"),
        system([text("Advisor off."), REMOVAL]),
    ]
    body = body_of(messages, tools=[CLOCK, DEFERRED_ADVISOR], tool_choice={"type": "auto"}, stream=streaming)
    response = await post(make_app(), json=body, headers={"anthropic-beta": "advisor-tool-2026-03-01"})
    assert response.status_code == 200
    (recorded,) = script.requests
    assert recorded.role == "direct"
    assert recorded.body == {
        "model": "exec",
        "max_tokens": 1024,
        "stream": streaming,
        "tools": [CLOCK],
        "tool_choice": {"type": "auto"},
        "messages": [
            user([text("q1"), reminder("Advisor on.")]),
            assistant([text("A"), tool_use("advisor", id="toolu_1")]),
            user([tool_result("toolu_1", "adv")]),
            assistant([text("B")]),
            user([text("q2"), reminder("Advisor off.")]),
        ],
    }
    assert recorded.headers["content-length"] == str(len(recorded.raw))
    if streaming:
        assert_host_stream(response.content, reply)
    else:
        message = response.json()
        assert message["content"] == [text("plain answer")]
        assert message["usage"] == plain_usage(9, 4)


async def test_tool_removal_then_addition_turns_it_back_on(make_app: MakeApp, script: Script) -> None:
    script.executor(Reply([text("on again")]))
    messages = [
        user("q1"),
        system([text("off"), REMOVAL]),
        assistant("a1"),
        user("q2"),
        system([text("on"), ADDITION]),
    ]
    response = await post(make_app(), json=body_of(messages, tools=[DEFERRED_ADVISOR]))
    assert response.json()["content"] == [text("on again")]
    assert [r.role for r in script.requests] == ["executor"]
    assert "iterations" in response.json()["usage"]


async def test_only_advisor_tool_removed_drops_tools_and_tool_choice(make_app: MakeApp, script: Script) -> None:
    script.direct(Reply([text("ok")]))
    messages = [
        user("q"),
        system([text("off"), REMOVAL]),
    ]
    body = body_of(messages, tools=[DEFERRED_ADVISOR], tool_choice={"type": "auto"})
    await post(make_app(), json=body)
    (recorded,) = script.requests
    assert "tools" not in recorded.body
    assert "tool_choice" not in recorded.body
    assert recorded.body["messages"] == [user([text("q"), reminder("off")])]


async def test_removed_advisor_is_not_forced(make_app: MakeApp, script: Script) -> None:
    script.direct(Reply([text("ok")]))
    messages = [
        user("q"),
        system([text("off"), REMOVAL]),
    ]
    body = body_of(messages, tools=[CLOCK, DEFERRED_ADVISOR], tool_choice={"type": "tool", "name": "advisor"})
    await post(make_app(), json=body)
    (recorded,) = script.requests
    assert recorded.body["tools"] == [CLOCK]
    # Forcing a tool the request no longer has would make the host answer 400.
    assert recorded.body["tool_choice"] == {"type": "auto"}


# --- advisor history without the advisor tool -------------------------------------------------


HISTORY = [
    user("q1"),
    assistant([text("Let me ask."), *advisor_pair("srvtoolu_toolu__H", advice("Be careful.")), text("Answer 1.")]),
    user("q2"),
]
RENDERED_HISTORY = [
    user("q1"),
    assistant([text("Let me ask."), tool_use("advisor", id="toolu_H")]),
    user([tool_result("toolu_H", "Be careful.")]),
    assistant([text("Answer 1.")]),
    user("q2"),
]


@pytest.mark.parametrize("streaming", [False, True])
async def test_history_without_the_tool_is_rendered_and_answered_by_the_host(
    client: anthropic.AsyncAnthropic, script: Script, streaming: bool
) -> None:
    script.direct(Reply([text("Answer 2.")], input_tokens=21, output_tokens=3))
    message = await call(client, streaming, model="exec", max_tokens=1024, messages=HISTORY, tools=[CLOCK])
    (recorded,) = script.requests
    assert recorded.role == "direct"
    assert recorded.body["messages"] == RENDERED_HISTORY
    assert recorded.body["tools"] == [CLOCK]
    assert recorded.body.get("stream", False) is streaming
    assert [b.model_dump(exclude_none=True) for b in message.content] == [text("Answer 2.")]
    assert message.usage.model_dump(exclude_none=True) == {
        "input_tokens": 21,
        "output_tokens": 3,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


async def test_history_rewrite_of_a_gzip_body(make_app: MakeApp, script: Script) -> None:
    script.direct(Reply([text("ok")]))
    raw = gzip.compress(json.dumps({"model": "exec", "max_tokens": 5, "messages": HISTORY}).encode())
    response = await post(make_app(), raw, {"content-type": "application/json", "content-encoding": "gzip"})
    assert response.status_code == 200
    (recorded,) = script.requests
    assert "content-encoding" not in recorded.headers
    assert recorded.headers["content-length"] == str(len(recorded.raw))
    assert recorded.body == {"model": "exec", "max_tokens": 5, "messages": RENDERED_HISTORY}


# --- odd history --------------------------------------------------------------------------------


def test_orphan_result_becomes_text() -> None:
    messages = [
        user("q"),
        assistant([result("srvtoolu_01nomatch", advice("Old advice.")), text("ok")]),
        user("next"),
    ]
    rendered, _ = render_history(messages)
    assert rendered == [
        user("q"),
        assistant([text("[Earlier advisor response]\nOld advice."), text("ok")]),
        user("next"),
    ]


def test_dangling_call_is_dropped_and_its_neighbours_kept() -> None:
    messages = [
        user("q"),
        assistant([text("a"), srv("srvtoolu_x"), text("b")]),
        user("next"),
    ]
    rendered, _ = render_history(messages)
    assert rendered[1] == assistant([text("a"), text("b")])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (advice("plain"), {"content": "plain"}),
        ([advice("listed")], {"content": "listed"}),
        ("a string", {"content": "a string"}),
        ([text("one")], {"content": "one"}),
        ([text("one"), text("two")], {"content": "one\n\ntwo"}),
        (
            {"type": "advisor_result", "text": "cut", "stop_reason": "max_tokens"},
            {"content": "cut"},
        ),
        (
            {"type": "advisor_tool_result_error", "error_code": "overloaded"},
            {"content": "The advisor is unavailable (overloaded). Continue without its advice.", "is_error": True},
        ),
        (
            REDACTED,
            {"content": REDACTED_PLACEHOLDER},
        ),
        (
            None,
            {"content": "The advisor is unavailable (unavailable). Continue without its advice.", "is_error": True},
        ),
    ],
)
def test_result_content_shapes(content: Any, expected: dict[str, Any]) -> None:
    assert advice_tool_result("id1", content) == {"type": "tool_result", "tool_use_id": "id1", **expected}


async def test_redacted_result_never_forwards_the_blob(make_app: MakeApp, script: Script) -> None:
    ask_at_once(script, "toolu_N", "fresh advice")
    messages = [
        user("q1"),
        assistant([*advisor_pair("srvtoolu_toolu__R", REDACTED), text("first answer")]),
        user("q2"),
    ]
    response = await post(make_app(), json=body_of(messages))
    assert response.status_code == 200
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    for leg in script.requests:
        assert SECRET.encode() not in leg.raw
        assert b"encrypted_content" not in leg.raw
    assert script.of("executor")[0].body["messages"][2] == user(
        [{"type": "tool_result", "tool_use_id": "toolu_R", "content": REDACTED_PLACEHOLDER}]
    )
    transcript = script.of("advisor")[0].body["messages"][0]["content"]
    assert REDACTED_PLACEHOLDER in "".join(block["text"] for block in transcript)


async def test_redacted_result_without_the_tool_never_forwards_the_blob(make_app: MakeApp, script: Script) -> None:
    script.direct(Reply([text("ok")]))
    messages = [
        user("q1"),
        assistant([*advisor_pair("srvtoolu_toolu__R", REDACTED)]),
        user("q2"),
    ]
    await post(make_app(), json={"model": "exec", "max_tokens": 5, "messages": messages})
    (recorded,) = script.requests
    assert SECRET.encode() not in recorded.raw


# --- real Claude Code requests -------------------------------------------------------------------

ADVISOR_NATIVE = ("server_tool_use", "advisor_tool_result", "tool_addition", "tool_removal")


def captured_bodies() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(glob.glob(str(CAPTURES / "*.requests.jsonl"))):
        for n, line in enumerate(Path(path).read_text().splitlines()):
            record = json.loads(line)
            yield f"{Path(path).name}:{n}", record["body"]


def has_advisor_blocks(body: dict[str, Any]) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(is_advisor_block(b) for b in m["content"]) for m in body["messages"]
    )


CAPTURED = [pytest.param(body, id=name) for name, body in captured_bodies() if has_advisor_blocks(body)]


def test_the_captures_have_advisor_history() -> None:
    # Guards the parametrisation below against silently finding nothing.
    with_results = [name for name, body in captured_bodies() if '"advisor_tool_result"' in json.dumps(body)]
    assert with_results == [
        "21_continue.requests.jsonl:0",
        "22_continue_no_flags.requests.jsonl:0",
        "26_advisor_then_tool.requests.jsonl:1",
        "31_redacted_continue.requests.jsonl:0",
        "40_orphan_stop.requests.jsonl:1",
        "40_orphan_stop.requests.jsonl:2",
        "40_orphan_stop.requests.jsonl:3",
        "42_id_mismatch_continue.requests.jsonl:0",
    ]
    assert len(CAPTURED) >= len(with_results)


@pytest.mark.parametrize("body", CAPTURED)
def test_captured_claude_code_history_renders_cleanly(body: dict[str, Any]) -> None:
    original = json.loads(json.dumps(body))
    rendered, info = render_history(body["messages"])
    assert body == original  # not modified
    assert info.had_advisor_blocks is True
    for message in rendered:
        assert message["role"] in ("user", "assistant")
        if isinstance(message["content"], list):
            for block in message["content"]:
                assert block.get("type") not in ADVISOR_NATIVE
    # The executor's turns are never split: no two assistant messages in a row. (Two user messages
    # in a row are valid: the API joins consecutive same-role turns.)
    roles = [m["role"] for m in rendered]
    assert roles[0] == "user"
    assert all(not (a == b == "assistant") for a, b in itertools.pairwise(roles))
    # Every advisor call is answered by a tool_result in the very next message.
    for i, message in enumerate(rendered):
        if not isinstance(message["content"], list):
            continue
        for block in message["content"]:
            if block.get("type") == "tool_use" and block.get("name") == "advisor":
                answers = [b.get("tool_use_id") for b in rendered[i + 1]["content"] if isinstance(b, dict)]
                assert block["id"] in answers
    # Every non-advisor block is kept, in order (a cache breakpoint may move onto a reminder).
    assert strip_cache_control(rendered_blocks(rendered)) == strip_cache_control(expected_blocks(body["messages"]))
    # The advice itself reaches the executor.
    for message in body["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else []:
            if block.get("type") == "advisor_tool_result" and block["content"].get("type") == "advisor_result":
                assert block["content"]["text"] in json.dumps(rendered, ensure_ascii=False)


@pytest.mark.parametrize(
    "name", ["21_continue", "26_advisor_then_tool", "31_redacted_continue", "42_id_mismatch_continue"]
)
async def test_captured_request_through_the_middleware(make_app: MakeApp, script: Script, name: str) -> None:
    lines = (CAPTURES / f"{name}.requests.jsonl").read_text().splitlines()
    record = next(r for r in map(json.loads, lines) if has_advisor_blocks(r["body"]))
    body = record["body"]
    headers = {
        k: v for k, v in record["headers"].items() if k.lower() in ("anthropic-beta", "x-api-key", "anthropic-version")
    }
    script.executor(Reply([text("hi again")]))
    response = await post(make_app(), json=body, headers=headers, path=record["path"])
    assert response.status_code == 200
    (leg,) = script.requests
    assert leg.role == "executor"
    assert b"tool_addition" not in leg.raw
    assert b"tool_removal" not in leg.raw
    assert b"server_tool_use" not in leg.raw
    assert b"advisor_tool_result" not in leg.raw
    assert b"advisor_20260301" not in leg.raw
    assert all(m["role"] != "system" for m in leg.body["messages"])
    assert "advisor-tool-2026-03-01" not in leg.headers["anthropic-beta"]
    # Tools: the advisor entry swapped in place, every other tool (its own defer_loading included) unchanged.
    original_tools = body["tools"]
    index = next(i for i, t in enumerate(original_tools) if t.get("type") == "advisor_20260301")
    assert leg.body["tools"][:index] == original_tools[:index]
    assert leg.body["tools"][index + 1 :] == original_tools[index + 1 :]
    assert leg.body["tools"][index]["name"] == "advisor"
    assert "defer_loading" not in leg.body["tools"][index]
    assert leg.body["messages"] == render_history(body["messages"])[0]
    events = [json.loads(c.split(b"\ndata: ", 1)[1]) for c in response.content.split(b"\n\n") if c]
    assert events[-1] == {"type": "message_stop"}
    assert [e["content_block"] for e in events if e["type"] == "content_block_start"] == [text("")]


async def test_captured_tool_removal_request_is_forwarded_once(make_app: MakeApp, script: Script) -> None:
    record = json.loads((CAPTURES / "22_continue_no_flags.requests.jsonl").read_text().splitlines()[0])
    body = record["body"]
    script.direct(Reply([text("no advisor today")]))
    response = await post(make_app(), json=body, path=record["path"])
    assert response.status_code == 200
    (recorded,) = script.requests
    assert recorded.role == "direct"
    assert all(t.get("type") != "advisor_20260301" for t in recorded.body["tools"])
    assert len(recorded.body["tools"]) == len(body["tools"]) - 1
    assert recorded.body["messages"] == render_history(body["messages"])[0]
    assert b"tool_removal" not in recorded.raw
    assert b"server_tool_use" not in recorded.raw
    assert all(m["role"] != "system" for m in recorded.body["messages"])
