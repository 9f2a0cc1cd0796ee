"""The advisor loop, end to end through ``AdvisorMiddleware`` around the scripted host.

The Anthropic SDK is the oracle for response shapes; ``script.requests`` shows the exact legs
the host received.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, MutableMapping
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.beta import BetaMessage
from starlette.applications import Starlette

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.prompts import ADVISOR_SYSTEM_PROMPT, EXECUTOR_TOOL_DESCRIPTION, budget_note

from .support.helpers import ONE_CONSULT, assert_stream_rules, block_types, call, parse_sse, post, read_body, sdk_for
from .support.upstream import ADVISOR_TOOL, ErrorEvent, Fail, Reply, Script, scripted_host, text, thinking, tool_use

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Starlette]
SRV_ID = re.compile(r"^srvtoolu_[a-zA-Z0-9_]+$")
QUESTION = "What is 2+2?"
SYSTEM = "You are a careful pirate executor."
FUNCTION_ADVISOR = {
    "name": "advisor",
    "description": EXECUTOR_TOOL_DESCRIPTION,
    "input_schema": {"type": "object", "properties": {}},
}
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLOCK = {"name": "clock", "description": "The time.", "input_schema": {"type": "object", "properties": {}}}


def params(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "exec",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": QUESTION}],
        "tools": [ADVISOR_TOOL],
    }
    base.update(overrides)
    return base


async def post_raw(app: Starlette, body: dict[str, Any]) -> httpx.Response:
    return await post(app, json=body, headers={"x-api-key": "sk-raw"})


def input_tokens_by_iteration(message: BetaMessage) -> list[tuple[str, int]]:
    return [(it["type"], it["input_tokens"]) for it in message.usage.model_dump()["iterations"]]


def one_consult(script: Script, advice: str = "Do X.") -> None:
    script.executor(
        Reply(
            [thinking("hmm", "sig-1"), text("Let me ask."), tool_use("advisor", {"question": "?"}, id="toolu_A1")],
            stop_reason="tool_use",
            input_tokens=100,
            output_tokens=20,
            cache_read=7,
            cache_creation=3,
        ),
        Reply([text("Done.")], input_tokens=150, output_tokens=30, cache_read=11, cache_creation=5),
    ).advisor(Reply([text(advice)], input_tokens=400, output_tokens=60, cache_read=2, cache_creation=1))


EXPECTED_USAGE = {
    "input_tokens": 250,
    "output_tokens": 50,
    "cache_read_input_tokens": 18,
    "cache_creation_input_tokens": 8,
    "iterations": [
        {
            "type": "message",
            "input_tokens": 100,
            "output_tokens": 20,
            "cache_read_input_tokens": 7,
            "cache_creation_input_tokens": 3,
        },
        {
            "type": "advisor_message",
            "model": "adv-model",
            "input_tokens": 400,
            "output_tokens": 60,
            "cache_read_input_tokens": 2,
            "cache_creation_input_tokens": 1,
        },
        {
            "type": "message",
            "input_tokens": 150,
            "output_tokens": 30,
            "cache_read_input_tokens": 11,
            "cache_creation_input_tokens": 5,
        },
    ],
}


# --- shape and usage --------------------------------------------------------------------------


async def test_streamed_and_non_streamed_consults_are_identical(
    client: anthropic.AsyncAnthropic, script: Script
) -> None:
    one_consult(script)
    one_consult(script)
    streamed = await call(client, True, **params())
    created = await call(client, False, **params())
    assert streamed.model_dump(exclude={"id"}) == created.model_dump(exclude={"id"})
    assert [b.model_dump(exclude_none=True) for b in streamed.content] == [
        b.model_dump(exclude_none=True) for b in created.content
    ]
    assert streamed.usage.model_dump(exclude_none=True) == created.usage.model_dump(exclude_none=True) == EXPECTED_USAGE
    assert streamed.stop_reason == created.stop_reason == "end_turn"
    assert len(script.of("executor")) == 4
    assert len(script.of("advisor")) == 2


@pytest.mark.parametrize("streaming", [True, False])
async def test_block_order_ids_and_usage(client: anthropic.AsyncAnthropic, script: Script, streaming: bool) -> None:
    one_consult(script)
    message = await call(client, streaming, **params())
    assert [b.type for b in message.content] == [
        "thinking",
        "text",
        "server_tool_use",
        "advisor_tool_result",
        "text",
    ]
    dumped = [b.model_dump(exclude_none=True) for b in message.content]
    assert dumped[0] == {"type": "thinking", "thinking": "hmm", "signature": "sig-1"}
    assert dumped[1] == {"type": "text", "text": "Let me ask."}
    call_block = dumped[2]
    assert SRV_ID.match(call_block["id"])
    assert call_block == {"type": "server_tool_use", "id": "srvtoolu_toolu__A1", "name": "advisor", "input": {}}
    assert dumped[3] == {
        "type": "advisor_tool_result",
        "tool_use_id": call_block["id"],
        "content": {"type": "advisor_result", "text": "Do X."},
    }
    assert dumped[4] == {"type": "text", "text": "Done."}
    assert message.stop_reason == "end_turn"
    assert message.model == "exec"
    assert message.role == "assistant"
    assert message.usage.model_dump(exclude_none=True) == EXPECTED_USAGE


async def test_result_without_tool_max_tokens_has_no_stop_reason_on_the_wire(make_app: MakeApp, script: Script) -> None:
    one_consult(script)
    response = await post_raw(make_app(), params())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["content"][3] == {
        "type": "advisor_tool_result",
        "tool_use_id": "srvtoolu_toolu__A1",
        "content": {"type": "advisor_result", "text": "Do X."},
    }
    assert body["usage"] == EXPECTED_USAGE
    assert body["stop_reason"] == "end_turn"
    assert body["stop_sequence"] is None


async def test_raw_stream_events(make_app: MakeApp, script: Script) -> None:
    one_consult(script)
    response = await post_raw(make_app(), params(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.content)
    assert_stream_rules(events)
    names = [name for name, _ in events]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_delta") == 1
    start = events[0][1]["message"]
    # message_start carries the first executor leg's real input tokens.
    assert start["usage"]["input_tokens"] == 100
    assert start["usage"]["cache_read_input_tokens"] == 7
    assert start["content"] == []
    assert start["model"] == "exec"
    starts = [e["content_block"] for n, e in events if n == "content_block_start"]
    assert block_types(starts) == ["thinking", *ONE_CONSULT]
    assert starts[2] == {"type": "server_tool_use", "id": "srvtoolu_toolu__A1", "name": "advisor", "input": {}}
    # The result arrives whole in its content_block_start, with no deltas.
    assert starts[3] == {
        "type": "advisor_tool_result",
        "tool_use_id": "srvtoolu_toolu__A1",
        "content": {"type": "advisor_result", "text": "Do X."},
    }
    assert [e for n, e in events if n == "content_block_delta" and e["index"] == 3] == []
    # One empty input_json_delta on the call, like real advisor streams.
    assert [e["delta"] for n, e in events if n == "content_block_delta" and e["index"] == 2] == [
        {"type": "input_json_delta", "partial_json": ""}
    ]
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == EXPECTED_USAGE


async def test_pings_while_the_advisor_is_slow(make_app: MakeApp, script: Script) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_P")], stop_reason="tool_use"),
        Reply([text("ok")]),
    ).advisor(Reply([text("slow advice")], delay=0.35))
    response = await post_raw(make_app(ping_interval=0.05), params(stream=True))
    events = parse_sse(response.content)
    names = [name for name, _ in events]
    first_ping = names.index("ping")
    assert names.count("ping") >= 2
    # The pings come after the call closed and before the result.
    call_stop = names.index("content_block_stop")
    result = next(i for i, (n, e) in enumerate(events) if n == "content_block_start" and e["index"] == 1)
    assert call_stop < first_ping < result
    assert_stream_rules([(n, e) for n, e in events if n != "ping"])


# --- the executor leg -------------------------------------------------------------------------


async def test_executor_leg_body_and_headers(client: anthropic.AsyncAnthropic, script: Script) -> None:
    one_consult(script)
    advisor_entry = {**ADVISOR_TOOL, "defer_loading": True, "max_uses": 3}
    await call(
        client,
        True,
        **params(
            system=SYSTEM,
            tools=[WEATHER, advisor_entry, CLOCK],
            tool_choice={"type": "auto"},
            stop_sequences=["STOP"],
            metadata={"user_id": "u-1"},
            betas=["interleaved-thinking-2025-05-14", "advisor-tool-2026-03-01", "context-1m-2025-08-07"],
            extra_headers={"x-api-key": "sk-caller", "x-custom": "kept"},
        ),
    )
    first, second = script.of("executor")
    assert first.body == {
        "model": "exec",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": QUESTION}],
        "system": SYSTEM,
        "tools": [WEATHER, FUNCTION_ADVISOR, CLOCK],
        "tool_choice": {"type": "auto"},
        "stop_sequences": ["STOP"],
        "metadata": {"user_id": "u-1"},
        "stream": True,
    }
    assert b"defer_loading" not in first.raw
    assert b"advisor_20260301" not in first.raw
    for leg in script.requests:
        assert leg.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
        assert leg.headers["x-api-key"] == "sk-caller"
        assert leg.headers["authorization"] == "Bearer sk-test"
        assert leg.headers["x-custom"] == "kept"
        assert leg.headers["x-advisor-leg"] == leg.role
        assert leg.headers["content-length"] == str(len(leg.raw))
        assert leg.headers["content-type"] == "application/json"
    # The second leg: the first leg's messages + the executor's blocks verbatim (thinking keeps its
    # signature, the advisor call has input {}) + the advice as a tool_result.
    assert second.body == {
        **first.body,
        "messages": [
            *first.body["messages"],
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig-1"},
                    {"type": "text", "text": "Let me ask."},
                    {"type": "tool_use", "id": "toolu_A1", "name": "advisor", "input": {}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_A1", "content": "Do X."}]},
        ],
    }


async def test_advisor_beta_alone_drops_the_header(client: anthropic.AsyncAnthropic, script: Script) -> None:
    one_consult(script)
    await call(client, False, **params(betas=["advisor-tool-2026-03-01"]))
    assert len(script.requests) == 3
    for leg in script.requests:
        assert "anthropic-beta" not in leg.headers


async def test_executor_leg_keeps_a_cache_breakpoint_on_the_advisor_entry(
    client: anthropic.AsyncAnthropic, script: Script
) -> None:
    one_consult(script)
    entry = {**ADVISOR_TOOL, "cache_control": {"type": "ephemeral"}}
    await call(client, True, **params(tools=[CLOCK, entry]))
    assert script.of("executor")[0].body["tools"] == [
        CLOCK,
        {**FUNCTION_ADVISOR, "cache_control": {"type": "ephemeral"}},
    ]


# --- the advisor leg --------------------------------------------------------------------------


async def test_advisor_leg_body(client: anthropic.AsyncAnthropic, script: Script) -> None:
    one_consult(script)
    await call(
        client,
        True,
        **params(
            system=[{"type": "text", "text": SYSTEM}],
            tools=[WEATHER, ADVISOR_TOOL],
            tool_choice={"type": "auto"},
            metadata={"user_id": "u-1"},
        ),
    )
    (advisor,) = script.of("advisor")
    body = advisor.body
    assert set(body) == {"model", "max_tokens", "system", "messages", "stream", "metadata"}
    assert "tools" not in body
    assert "tool_choice" not in body
    assert body["model"] == "adv-model"
    assert body["max_tokens"] == 8192
    assert body["stream"] is True
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["system"] == ADVISOR_SYSTEM_PROMPT
    assert SYSTEM not in body["system"]
    assert len(body["messages"]) == 1
    (message,) = body["messages"]
    assert message["role"] == "user"
    assert [block["type"] for block in message["content"]] == ["text"] * len(message["content"])
    transcript = "".join(block["text"] for block in message["content"])
    assert "cache_control" not in json.dumps(body)  # the tool asks for no caching
    assert SYSTEM in transcript
    assert QUESTION in transcript
    assert "Let me ask." in transcript
    assert "hmm" in transcript
    assert "get_weather" in transcript
    # The executor's own words appear after the question (the transcript is in order).
    assert transcript.index(SYSTEM) < transcript.index(QUESTION) < transcript.index("Let me ask.")
    assert advisor.headers["x-advisor-leg"] == "advisor"


async def test_advisor_max_tokens_from_the_tool(client: anthropic.AsyncAnthropic, script: Script) -> None:
    one_consult(script)
    await call(client, True, **params(tools=[{**ADVISOR_TOOL, "max_tokens": 2048}]))
    body = script.of("advisor")[0].body
    assert body["max_tokens"] == 2048
    assert body["system"] == ADVISOR_SYSTEM_PROMPT + budget_note(2048)


async def test_operator_options_for_the_advisor_leg(make_app: MakeApp, script: Script) -> None:
    one_consult(script)
    async with sdk_for(make_app(advisor_max_tokens=3000, advisor_system_prompt="Be brief.")) as sdk:
        await call(sdk, False, **params())
    body = script.of("advisor")[0].body
    assert body["max_tokens"] == 3000
    assert body["system"] == "Be brief."


async def test_second_consult_transcript_extends_the_first(client: anthropic.AsyncAnthropic, script: Script) -> None:
    script.executor(
        Reply([text("First look."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text("Second look."), tool_use("advisor", id="toolu_2")], stop_reason="tool_use"),
        Reply([text("Final.")]),
    ).advisor(Reply([text("Advice one.")]), Reply([text("Advice two.")]))
    await call(client, True, **params(system=SYSTEM))
    first, second = (r.body["messages"][0]["content"] for r in script.of("advisor"))
    assert len(second) > len(first) and second[: len(first)] == first
    tail = "".join(block["text"] for block in second[len(first) :])
    assert "Advice one." in tail
    assert "Second look." in tail
    assert "Advice two." not in json.dumps(second)


# --- advisor failures -------------------------------------------------------------------------

ADVISOR_FAILURES = [
    pytest.param(Fail(429, "rate_limit_error"), "too_many_requests", id="429"),
    pytest.param(Fail(529, "api_error"), "overloaded", id="529"),
    pytest.param(Fail(503, "overloaded_error"), "overloaded", id="overloaded_error"),
    pytest.param(Fail(404, "not_found_error", "model: adv-model"), "model_not_found", id="404"),
    pytest.param(Fail(413, "request_too_large"), "prompt_too_long", id="413"),
    pytest.param(
        Fail(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"),
        "prompt_too_long",
        id="prompt-too-long",
    ),
    pytest.param(Fail(500, "api_error"), "unavailable", id="500"),
    pytest.param(
        Fail(
            500,
            "api_error",
            "litellm.InternalServerError: AnthropicException - "
            '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        ),
        "overloaded",
        id="gateway-rewrapped-529",
    ),
    pytest.param(
        Fail(400, "invalid_request_error", "model is overloaded with requests"), "unavailable", id="400-overloaded-text"
    ),
    pytest.param(Fail(401, "authentication_error"), "unavailable", id="401"),
    pytest.param(Fail(504, "timeout_error"), "execution_time_exceeded", id="504"),
    pytest.param(Fail(502, raw=b"<html>bad gateway</html>"), "unavailable", id="html-502"),
    pytest.param(ErrorEvent(Reply([text("partial")]), after=3), "overloaded", id="error-event-overloaded"),
    pytest.param(
        ErrorEvent(Reply([text("partial")]), after=1, error_type="rate_limit_error"),
        "too_many_requests",
        id="error-event-rate-limit",
    ),
    pytest.param(Reply([text("cut")], drop_after=3), "unavailable", id="no-message-delta"),
    pytest.param(Reply([]), "unavailable", id="empty-advice"),
]


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize(("failure", "code"), ADVISOR_FAILURES)
async def test_advisor_failure_becomes_an_error_result(
    client: anthropic.AsyncAnthropic, script: Script, failure: Any, code: str, streaming: bool
) -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_E")], stop_reason="tool_use"),
        Reply([text("Carrying on.")]),
    ).advisor(failure)
    message = await call(client, streaming, **params())
    dumped = [b.model_dump(exclude_none=True) for b in message.content]
    assert dumped == [
        {"type": "text", "text": "Asking."},
        {"type": "server_tool_use", "id": "srvtoolu_toolu__E", "name": "advisor", "input": {}},
        {
            "type": "advisor_tool_result",
            "tool_use_id": "srvtoolu_toolu__E",
            "content": {"type": "advisor_tool_result_error", "error_code": code},
        },
        {"type": "text", "text": "Carrying on."},
    ]
    assert message.stop_reason == "end_turn"
    executor_legs = script.of("executor")
    assert len(executor_legs) == 2
    assert executor_legs[1].body["messages"][-1] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_E",
                "content": f"The advisor is unavailable ({code}). Continue without its advice.",
                "is_error": True,
            }
        ],
    }
    # An advisor leg that never started bills nothing; one that started (even if it then failed)
    # is an advisor_message iteration.
    started = not isinstance(failure, Fail) and not (isinstance(failure, ErrorEvent) and failure.after == 0)
    kinds = [it["type"] for it in message.usage.model_dump()["iterations"]]
    assert kinds == (["message", "advisor_message", "message"] if started else ["message", "message"])


@pytest.mark.parametrize("streaming", [True, False])
async def test_advisor_timeout(make_app: MakeApp, script: Script, streaming: bool) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_T")], stop_reason="tool_use"),
        Reply([text("Without advice.")]),
    ).advisor(Reply([text("too late")], delay=1.0))
    async with sdk_for(make_app(advisor_timeout=0.2)) as sdk:
        message = await call(sdk, streaming, **params())
    dumped = [b.model_dump(exclude_none=True) for b in message.content]
    assert dumped[1] == {
        "type": "advisor_tool_result",
        "tool_use_id": "srvtoolu_toolu__T",
        "content": {"type": "advisor_tool_result_error", "error_code": "execution_time_exceeded"},
    }
    assert dumped[2] == {"type": "text", "text": "Without advice."}
    assert "advisor" not in script.finished


# --- caps -------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_max_uses_exceeded(client: anthropic.AsyncAnthropic, script: Script, streaming: bool) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_1")], stop_reason="tool_use", input_tokens=11),
        Reply([tool_use("advisor", id="toolu_2")], stop_reason="tool_use", input_tokens=12),
        Reply([text("Finished.")], input_tokens=13),
    ).advisor(Reply([text("Only advice.")], input_tokens=400), Reply([text("never asked")]))
    message = await call(client, streaming, **params(tools=[{**ADVISOR_TOOL, "max_uses": 1}]))
    dumped = [b.model_dump(exclude_none=True) for b in message.content]
    assert dumped == [
        {"type": "server_tool_use", "id": "srvtoolu_toolu__1", "name": "advisor", "input": {}},
        {
            "type": "advisor_tool_result",
            "tool_use_id": "srvtoolu_toolu__1",
            "content": {"type": "advisor_result", "text": "Only advice."},
        },
        {"type": "server_tool_use", "id": "srvtoolu_toolu__2", "name": "advisor", "input": {}},
        {
            "type": "advisor_tool_result",
            "tool_use_id": "srvtoolu_toolu__2",
            "content": {"type": "advisor_tool_result_error", "error_code": "max_uses_exceeded"},
        },
        {"type": "text", "text": "Finished."},
    ]
    assert len(script.of("advisor")) == 1
    assert input_tokens_by_iteration(message) == [
        ("message", 11),
        ("advisor_message", 400),
        ("message", 12),
        ("message", 13),
    ]
    assert message.usage.input_tokens == 36
    assert script.of("executor")[2].body["messages"][-1]["content"][0]["content"] == (
        "The advisor is unavailable (max_uses_exceeded). Continue without its advice."
    )


async def test_operator_max_consults_zero(make_app: MakeApp, script: Script) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_Z")], stop_reason="tool_use"),
        Reply([text("Alone.")]),
    )
    async with sdk_for(make_app(max_consults=0)) as sdk:
        message = await call(sdk, True, **params())
    assert [b.model_dump(exclude_none=True) for b in message.content][1] == {
        "type": "advisor_tool_result",
        "tool_use_id": "srvtoolu_toolu__Z",
        "content": {"type": "advisor_tool_result_error", "error_code": "max_uses_exceeded"},
    }
    assert script.of("advisor") == []
    assert [it["type"] for it in message.usage.model_dump()["iterations"]] == ["message", "message"]


async def test_operator_max_executor_legs(make_app: MakeApp, script: Script) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([tool_use("advisor", id="toolu_2")], stop_reason="tool_use"),
    ).advisor(Reply([text("a1")]), Reply([text("a2")]))
    async with sdk_for(make_app(max_executor_legs=2)) as sdk:
        message = await call(sdk, True, **params())
    assert len(script.of("executor")) == 2
    assert [b.type for b in message.content] == [
        "server_tool_use",
        "advisor_tool_result",
        "server_tool_use",
        "advisor_tool_result",
    ]
    assert message.stop_reason == "end_turn"


async def test_the_last_allowed_leg_sends_its_held_blocks_once(make_app: MakeApp, script: Script) -> None:
    # The executor writes on after its advisor call: that text waits for the consult, and on
    # the leg where max_executor_legs stops the loop it is sent once, before message_delta.
    script.executor(
        Reply([tool_use("advisor", id="toolu_1"), text("After one.")], stop_reason="tool_use"),
        Reply([tool_use("advisor", id="toolu_2"), text("After two.")], stop_reason="tool_use"),
    ).advisor(Reply([text("a1")]), Reply([text("a2")]))
    response = await post_raw(make_app(max_executor_legs=2), params(stream=True))
    events = parse_sse(response.content)
    assert_stream_rules(events)
    starts = [event["content_block"]["type"] for name, event in events if name == "content_block_start"]
    assert starts == ["server_tool_use", "advisor_tool_result", "text"] * 2


# --- result stop_reason -----------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_truncated_advice(client: anthropic.AsyncAnthropic, script: Script, streaming: bool) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_M")], stop_reason="tool_use"),
        Reply([text("ok")]),
    ).advisor(Reply([text("Step one, then")], stop_reason="max_tokens"))
    message = await call(client, streaming, **params(tools=[{**ADVISOR_TOOL, "max_tokens": 1024}]))
    truncated = "Step one, then\n\n[Advisor output truncated at max_tokens=1024.]"
    assert message.content[1].model_dump(exclude_none=True) == {
        "type": "advisor_tool_result",
        "tool_use_id": "srvtoolu_toolu__M",
        "content": {"type": "advisor_result", "text": truncated, "stop_reason": "max_tokens"},
    }
    assert script.of("advisor")[0].body["max_tokens"] == 1024
    assert script.of("executor")[1].body["messages"][-1]["content"][0]["content"] == truncated


async def test_result_stop_reason_when_tool_max_tokens_is_set(make_app: MakeApp, script: Script) -> None:
    one_consult(script)
    response = await post_raw(make_app(), params(tools=[{**ADVISOR_TOOL, "max_tokens": 4096}]))
    assert response.json()["content"][3]["content"] == {
        "type": "advisor_result",
        "text": "Do X.",
        "stop_reason": "end_turn",
    }


@pytest.mark.parametrize("advice", ["I can't help with that.", ""])
async def test_advisor_refusal_passes_through(client: anthropic.AsyncAnthropic, script: Script, advice: str) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_R")], stop_reason="tool_use"),
        Reply([text("ok")]),
    ).advisor(Reply([text(advice)] if advice else [], stop_reason="refusal"))
    message = await call(client, True, **params())
    assert message.content[1].model_dump(exclude_none=True) == {
        "type": "advisor_tool_result",
        "tool_use_id": "srvtoolu_toolu__R",
        "content": {"type": "advisor_result", "text": advice, "stop_reason": "refusal"},
    }


# --- tool_choice and client tools -------------------------------------------------------------


@pytest.mark.parametrize(
    ("forced", "relaxed"),
    [
        ({"type": "tool", "name": "advisor"}, {"type": "auto"}),
        (
            {"type": "tool", "name": "advisor", "disable_parallel_tool_use": True},
            {"type": "auto", "disable_parallel_tool_use": True},
        ),
    ],
)
async def test_forced_tool_choice_relaxed_after_the_consult(
    client: anthropic.AsyncAnthropic, script: Script, forced: dict[str, Any], relaxed: dict[str, Any]
) -> None:
    one_consult(script)
    await call(client, True, **params(tool_choice=forced))
    first, second = script.of("executor")
    assert first.body["tool_choice"] == forced
    assert second.body["tool_choice"] == relaxed


async def test_other_forced_tool_choice_is_kept(client: anthropic.AsyncAnthropic, script: Script) -> None:
    one_consult(script)
    await call(client, True, **params(tools=[CLOCK, ADVISOR_TOOL], tool_choice={"type": "any"}))
    assert [leg.body["tool_choice"] for leg in script.of("executor")] == [{"type": "any"}, {"type": "any"}]


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("client_tool_first", [False, True])
async def test_advisor_and_client_tool_in_one_leg(
    client: anthropic.AsyncAnthropic, script: Script, streaming: bool, client_tool_first: bool
) -> None:
    weather = tool_use("get_weather", {"city": "Paris"}, id="toolu_W")
    advisor = tool_use("advisor", id="toolu_A")
    blocks = [text("Checking."), weather, advisor] if client_tool_first else [text("Checking."), advisor, weather]
    script.executor(Reply(blocks, stop_reason="tool_use")).advisor(Reply([text("Check the forecast.")]))
    message = await call(client, streaming, **params(tools=[WEATHER, ADVISOR_TOOL]))
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "text", "text": "Checking."},
        {"type": "server_tool_use", "id": "srvtoolu_toolu__A", "name": "advisor", "input": {}},
        {
            "type": "advisor_tool_result",
            "tool_use_id": "srvtoolu_toolu__A",
            "content": {"type": "advisor_result", "text": "Check the forecast."},
        },
        {"type": "tool_use", "id": "toolu_W", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert message.stop_reason == "tool_use"
    assert len(script.of("executor")) == 1
    assert len(script.of("advisor")) == 1


async def test_text_after_the_call_is_held_until_the_result(make_app: MakeApp, script: Script) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_A"), text("and then")], stop_reason="tool_use"),
        Reply([text("final")]),
    ).advisor(Reply([text("advice")]))
    response = await post_raw(make_app(), params(stream=True))
    events = parse_sse(response.content)
    assert_stream_rules(events)
    starts = [e["content_block"]["type"] for n, e in events if n == "content_block_start"]
    assert starts == ["server_tool_use", "advisor_tool_result", "text", "text"]


# --- executor failures ------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_executor_failure_before_start_keeps_its_status(
    client: anthropic.AsyncAnthropic, script: Script, streaming: bool
) -> None:
    script.executor(Fail(429, "rate_limit_error", "slow down"))
    with pytest.raises(anthropic.RateLimitError) as info:
        await call(client, streaming, **params())
    assert info.value.status_code == 429
    assert info.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    assert len(script.requests) == 1
    assert script.of("advisor") == []


async def test_executor_failure_before_start_raw(make_app: MakeApp, script: Script) -> None:
    script.executor(Fail(529, "overloaded_error", "busy"))
    response = await post_raw(make_app(), params(stream=True))
    assert response.status_code == 529
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}


async def test_executor_failure_on_the_second_leg_streaming(make_app: MakeApp, script: Script) -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_A")], stop_reason="tool_use"),
        Fail(529, "overloaded_error", "busy"),
    ).advisor(Reply([text("advice")]))
    response = await post_raw(make_app(), params(stream=True))
    assert response.status_code == 200
    events = parse_sse(response.content)
    assert_stream_rules(events)
    names = [n for n, _ in events]
    assert names[-1] == "error"
    assert "message_delta" not in names
    assert "message_stop" not in names
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    starts = [e["content_block"]["type"] for n, e in events if n == "content_block_start"]
    assert starts == ["text", "server_tool_use", "advisor_tool_result"]


async def test_executor_error_event_mid_block_closes_open_blocks(make_app: MakeApp, script: Script) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_A")], stop_reason="tool_use"),
        ErrorEvent(Reply([text("partial answer")]), after=3, error_type="api_error", message="boom"),
    ).advisor(Reply([text("advice")]))
    response = await post_raw(make_app(), params(stream=True))
    events = parse_sse(response.content)
    assert_stream_rules(events)
    names = [n for n, _ in events]
    # The half-sent text block (index 2) is closed before the error.
    assert names[-3:] == ["content_block_delta", "content_block_stop", "error"]
    assert events[-2][1] == {"type": "content_block_stop", "index": 2}
    assert events[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "boom"}}


async def test_executor_failure_on_the_second_leg_sdk(client: anthropic.AsyncAnthropic, script: Script) -> None:
    for _ in range(2):
        script.executor(
            Reply([tool_use("advisor", id="toolu_A")], stop_reason="tool_use"),
            Fail(529, "overloaded_error", "busy"),
        ).advisor(Reply([text("advice")]))
    with pytest.raises(anthropic.APIStatusError) as streamed:
        await call(client, True, **params())
    assert streamed.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    with pytest.raises(anthropic.APIStatusError) as created:
        await call(client, False, **params())
    assert created.value.status_code == 529
    assert created.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}


@pytest.mark.parametrize("drop_after", [1, 3, 4])
async def test_executor_stream_without_message_delta(make_app: MakeApp, script: Script, drop_after: int) -> None:
    script.executor(Reply([text("hello")], drop_after=drop_after))
    response = await post_raw(make_app(), params(stream=True))
    assert response.status_code == 200
    events = parse_sse(response.content)
    assert_stream_rules(events)
    assert [n for n, _ in events][-1] == "error"
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "the executor's stream ended before its message_delta"},
    }
    assert "message_stop" not in [n for n, _ in events]


async def test_executor_stream_without_message_delta_json(make_app: MakeApp, script: Script) -> None:
    script.executor(Reply([text("hello")], drop_after=4))
    response = await post_raw(make_app(), params())
    assert response.status_code == 502
    assert response.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": "the executor's stream ended before its message_delta"},
    }


async def test_executor_stream_without_message_delta_sdk(client: anthropic.AsyncAnthropic, script: Script) -> None:
    script.executor(Reply([text("hello")], drop_after=4), Reply([text("hello")], drop_after=4))
    with pytest.raises(anthropic.APIStatusError):
        await call(client, True, **params())
    with pytest.raises(anthropic.APIStatusError) as created:
        await call(client, False, **params())
    assert created.value.status_code == 502


# --- several consults -------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_two_consults_in_sequence(client: anthropic.AsyncAnthropic, script: Script, streaming: bool) -> None:
    script.executor(
        Reply([text("One."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use", input_tokens=1),
        Reply([text("Two."), tool_use("advisor", id="toolu_2")], stop_reason="tool_use", input_tokens=2),
        Reply([text("Three.")], input_tokens=3),
    ).advisor(Reply([text("Advice 1.")], input_tokens=401), Reply([text("Advice 2.")], input_tokens=402))
    message = await call(client, streaming, **params())
    dumped = [b.model_dump(exclude_none=True) for b in message.content]
    assert block_types(dumped) == [*ONE_CONSULT, "server_tool_use", "advisor_tool_result", "text"]
    assert [b.get("text") for b in dumped if b["type"] == "text"] == ["One.", "Two.", "Three."]
    assert dumped[2]["tool_use_id"] == dumped[1]["id"] == "srvtoolu_toolu__1"
    assert dumped[5]["tool_use_id"] == dumped[4]["id"] == "srvtoolu_toolu__2"
    assert dumped[2]["content"] == {"type": "advisor_result", "text": "Advice 1."}
    assert dumped[5]["content"] == {"type": "advisor_result", "text": "Advice 2."}
    assert input_tokens_by_iteration(message) == [
        ("message", 1),
        ("advisor_message", 401),
        ("message", 2),
        ("advisor_message", 402),
        ("message", 3),
    ]
    assert message.usage.input_tokens == 6
    third = script.of("executor")[2].body["messages"]
    assert [m["role"] for m in third] == ["user", "assistant", "user", "assistant", "user"]
    assert third[3]["content"] == [
        {"type": "text", "text": "Two."},
        {"type": "tool_use", "id": "toolu_2", "name": "advisor", "input": {}},
    ]
    assert third[4]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "Advice 2."}]


async def test_two_calls_in_one_leg(client: anthropic.AsyncAnthropic, script: Script) -> None:
    script.executor(
        Reply([tool_use("advisor", id="toolu_1"), tool_use("advisor", id="toolu_2")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    ).advisor(Reply([text("A.")]), Reply([text("B.")]))
    message = await call(client, True, **params())
    dumped = [b.model_dump(exclude_none=True) for b in message.content]
    calls = [b for b in dumped if b["type"] == "server_tool_use"]
    results = [b for b in dumped if b["type"] == "advisor_tool_result"]
    assert [c["id"] for c in calls] == ["srvtoolu_toolu__1", "srvtoolu_toolu__2"]
    assert [(r["tool_use_id"], r["content"]["text"]) for r in results] == [
        ("srvtoolu_toolu__1", "A."),
        ("srvtoolu_toolu__2", "B."),
    ]
    assert dumped[-1] == {"type": "text", "text": "Done."}
    second = script.of("executor")[1].body["messages"]
    assert second[-2]["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "advisor", "input": {}},
        {"type": "tool_use", "id": "toolu_2", "name": "advisor", "input": {}},
    ]
    assert second[-1]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "A."},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "B."},
    ]


async def test_reused_executor_ids_stay_unique(client: anthropic.AsyncAnthropic, script: Script) -> None:
    # Some OpenAI-compatible servers number calls per response: the same id on every leg.
    script.executor(
        Reply([tool_use("advisor", id="call_0")], stop_reason="tool_use"),
        Reply([tool_use("advisor", id="call_0")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    ).advisor(Reply([text("A.")]), Reply([text("B.")]))
    message = await call(client, True, **params())
    ids = [b.id for b in message.content if b.type == "server_tool_use"]
    assert ids[0] == "srvtoolu_call__0"
    assert len(set(ids)) == 2
    assert all(SRV_ID.match(i) for i in ids)
    results = [b.tool_use_id for b in message.content if b.type == "advisor_tool_result"]
    assert results == ids
    third = script.of("executor")[2].body["messages"]
    executor_ids = [b["id"] for m in third if m["role"] == "assistant" for b in m["content"]]
    result_ids = [
        b["tool_use_id"] for m in third if m["role"] == "user" and isinstance(m["content"], list) for b in m["content"]
    ]
    assert executor_ids == result_ids
    assert len(set(executor_ids)) == 2


async def test_prefilled_assistant_turn_is_continued(client: anthropic.AsyncAnthropic, script: Script) -> None:
    one_consult(script)
    prefill = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Arr,"}]
    await call(client, True, **params(messages=prefill))
    second = script.of("executor")[1].body["messages"]
    assert second[0] == {"role": "user", "content": QUESTION}
    assert second[1]["role"] == "assistant"
    assert second[1]["content"][0] == {"type": "text", "text": "Arr,"}
    assert second[1]["content"][-1] == {"type": "tool_use", "id": "toolu_A1", "name": "advisor", "input": {}}
    assert len(second) == 3


class IgnoresStream:
    """A host that answers every request with one JSON Message, whatever ``stream`` says."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = await read_body(receive)
        body = json.dumps({**json.loads(raw), "stream": False}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        await self.app({**scope, "headers": headers}, replay, send)


@pytest.mark.parametrize("streaming", [True, False])
async def test_host_answering_json_to_streaming_legs(script: Script, streaming: bool) -> None:
    one_consult(script)
    app = AdvisorMiddleware(IgnoresStream(scripted_host(script)))
    async with sdk_for(app) as sdk:
        message = await call(sdk, streaming, **params())
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig-1"},
        {"type": "text", "text": "Let me ask."},
        {"type": "server_tool_use", "id": "srvtoolu_toolu__A1", "name": "advisor", "input": {}},
        {
            "type": "advisor_tool_result",
            "tool_use_id": "srvtoolu_toolu__A1",
            "content": {"type": "advisor_result", "text": "Do X."},
        },
        {"type": "text", "text": "Done."},
    ]
    assert message.usage.model_dump(exclude_none=True) == EXPECTED_USAGE
    assert script.of("executor")[1].body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig-1"},
        {"type": "text", "text": "Let me ask."},
        {"type": "tool_use", "id": "toolu_A1", "name": "advisor", "input": {}},
    ]


@pytest.mark.parametrize("role", ["advisor", "executor"])
async def test_a_host_that_crashes_on_a_leg(script: Script, role: str, caplog: pytest.LogCaptureFixture) -> None:
    # The host raises instead of answering: an advisor leg becomes an error result and the
    # executor goes on; an executor leg is the request's 500. Either way the traceback is logged.
    host = scripted_host(script)

    async def crashing(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if dict(scope.get("headers") or []).get(b"x-advisor-leg") == role.encode():
            raise RuntimeError(f"host bug on the {role} leg")
        await host(scope, receive, send)

    one_consult(script)
    async with sdk_for(AdvisorMiddleware(crashing)) as sdk:
        if role == "executor":
            with pytest.raises(anthropic.InternalServerError):
                await call(sdk, True, **params())
        else:
            message = await call(sdk, True, **params())
            results = [
                b for b in message.model_dump(exclude_none=True)["content"] if b["type"] == "advisor_tool_result"
            ]
            assert [r["content"] for r in results] == [
                {
                    "type": "advisor_tool_result_error",
                    "error_code": "unavailable",
                }
            ]
            assert block_types(message.content)[-1] == "text"
    logged = [r for r in caplog.records if r.getMessage() == f"the host app raised on a {role} leg"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert str(logged[0].exc_info[1]) == f"host bug on the {role} leg"
