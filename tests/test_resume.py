"""Resumed turns: an advisor call left pending at the end of the conversation runs first.

A ``pause_turn`` (or a mixed turn whose client tools have run) leaves the last assistant message
with a ``server_tool_use(advisor)`` and no result. Sent back with the advisor tool present, the
turn resumes: the response begins with that call's ``advisor_tool_result`` and the executor
continues (docs/protocol.md §6). Also the histories clients build afterwards, where a result
sits in a later message than its call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import pytest
from starlette.applications import Starlette

from advisor_middleware.history import render_history

from .support.helpers import (
    BASH,
    REMOVAL,
    advice,
    advisor_pair,
    assistant,
    block_types,
    call,
    http_for,
    messages_bytes,
    parse_sse,
    post,
    request_body,
    result,
    srv,
    system,
    tool_result,
    user,
)
from .support.upstream import ADVISOR_TOOL, Fail, Reply, Script, text, tool_use

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Starlette]

# A pause_turn: the call is the last block, with no result. The executor knows it as toolu_P1.
QUESTION = user("What is 2+2?")
PAUSED = [QUESTION, assistant([text("Let me ask."), srv("srvtoolu_toolu__P1")])]
PAUSED_AS_CALLED = [QUESTION, assistant([text("Let me ask."), tool_use("advisor", id="toolu_P1")])]

# The mixed shape: the advisor call and a client tool in one turn; the client ran its tool.
LIST = user("List the files.")
LS = tool_use("Bash", {"command": "ls"}, id="toolu_B1")
MIXED = [
    LIST,
    assistant([text("Asking, then listing."), srv("srvtoolu_toolu__M1"), LS]),
    user([tool_result("toolu_B1", "a.txt")]),
]
MIXED_AS_CALLED = [LIST, assistant([text("Asking, then listing."), tool_use("advisor", id="toolu_M1"), LS])]


def dump(message: anthropic.types.beta.BetaMessage) -> list[dict[str, Any]]:
    return [block.model_dump(exclude_none=True) for block in message.content]


# --- pause_turn ----------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_paused_turn_resumes_with_the_pending_result(
    client: anthropic.AsyncAnthropic, script: Script, streaming: bool
) -> None:
    script.executor(Reply([text("It is 4.")], input_tokens=30, output_tokens=4)).advisor(
        Reply([text("Check twice.")], input_tokens=400, output_tokens=60)
    )
    message = await call(client, streaming, **request_body(PAUSED))
    assert dump(message) == [result("srvtoolu_toolu__P1", advice("Check twice.")), text("It is 4.")]
    assert message.stop_reason == "end_turn"
    assert message.model == "exec"
    # The consult ran before the executor's leg, which got the call answered.
    assert [r.role for r in script.requests] == ["advisor", "executor"]
    (leg,) = script.of("executor")
    assert leg.body["messages"] == [*PAUSED_AS_CALLED, user([tool_result("toolu_P1", "Check twice.")])]
    blocks = script.of("advisor")[0].body["messages"][0]["content"]
    assert blocks[-1]["text"].endswith("\n[Executor]\nLet me ask.\n(the executor consulted the advisor)\n")
    usage = message.usage.model_dump()
    assert [(it["type"], it["input_tokens"]) for it in usage["iterations"]] == [
        ("advisor_message", 400),
        ("message", 30),
    ]
    assert (usage["input_tokens"], usage["output_tokens"]) == (30, 4)  # executor legs only


async def test_resumed_stream_starts_with_the_result(make_app: MakeApp, script: Script) -> None:
    script.executor(Reply([text("It is 4.")])).advisor(Reply([text("Check twice.")]))
    response = await post(make_app(), json=request_body(PAUSED, stream=True))
    assert response.status_code == 200
    events = parse_sse(response.content)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": result("srvtoolu_toolu__P1", advice("Check twice.")),
    }
    assert events[3][1]["index"] == 1


@pytest.mark.parametrize("streaming", [True, False])
async def test_mixed_turn_puts_the_advice_before_the_clients_results(
    client: anthropic.AsyncAnthropic, script: Script, streaming: bool
) -> None:
    script.executor(Reply([text("There is a.txt.")])).advisor(Reply([text("Look first.")]))
    message = await call(client, streaming, **request_body(MIXED))
    assert dump(message) == [result("srvtoolu_toolu__M1", advice("Look first.")), text("There is a.txt.")]
    (leg,) = script.of("executor")
    assert leg.body["messages"] == [
        *MIXED_AS_CALLED,
        user([tool_result("toolu_M1", "Look first."), tool_result("toolu_B1", "a.txt")]),
    ]


async def test_several_pending_calls_run_in_order(client: anthropic.AsyncAnthropic, script: Script) -> None:
    script.executor(Reply([text("Both heard.")])).advisor(Reply([text("First.")]), Reply([text("Second.")]))
    messages = [QUESTION, assistant([srv("srvtoolu_toolu__1"), srv("srvtoolu_toolu__2")])]
    message = await call(client, True, **request_body(messages))
    assert dump(message) == [
        result("srvtoolu_toolu__1", advice("First.")),
        result("srvtoolu_toolu__2", advice("Second.")),
        text("Both heard."),
    ]
    assert script.of("executor")[0].body["messages"][-1] == user(
        [tool_result("toolu_1", "First."), tool_result("toolu_2", "Second.")]
    )


@pytest.mark.parametrize("streaming", [True, False])
async def test_resumed_advisor_failure_is_an_error_result_and_the_executor_continues(
    client: anthropic.AsyncAnthropic, script: Script, streaming: bool
) -> None:
    script.executor(Reply([text("On my own, 4.")])).advisor(Fail(529, "overloaded_error", "Overloaded"))
    message = await call(client, streaming, **request_body(PAUSED))
    assert dump(message) == [
        result("srvtoolu_toolu__P1", {"type": "advisor_tool_result_error", "error_code": "overloaded"}),
        text("On my own, 4."),
    ]
    (leg,) = script.of("executor")
    assert leg.body["messages"][-1] == user(
        [
            {
                **tool_result("toolu_P1", "The advisor is unavailable (overloaded). Continue without its advice."),
                "is_error": True,
            }
        ]
    )


# --- calls that must not be resumed ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param(
            [QUESTION, assistant([text("a"), srv("srvtoolu_x"), text("b")]), user("next")],
            [QUESTION, assistant([text("a"), text("b")]), user("next")],
            id="mid-message",
        ),
        pytest.param(
            [QUESTION, assistant([text("a"), srv("srvtoolu_x")]), user("next")],
            [QUESTION, assistant([text("a")]), user("next")],
            id="end-of-message-then-user-text",
        ),
        pytest.param(
            [QUESTION, assistant([srv("srvtoolu_x"), *advisor_pair("srvtoolu_toolu__Y", advice("Y.")), text("b")])],
            [
                QUESTION,
                assistant([tool_use("advisor", id="toolu_Y")]),
                user([tool_result("toolu_Y", "Y.")]),
                assistant([text("b")]),
            ],
            id="before-a-consult-at-the-end",
        ),
        pytest.param(
            [*MIXED, assistant([text("done")]), user("next")],
            [LIST, assistant([text("Asking, then listing."), LS]), MIXED[2], assistant([text("done")]), user("next")],
            id="followed-by-more-turns",
        ),
    ],
)
async def test_a_dangling_call_before_the_end_is_dropped(
    make_app: MakeApp, script: Script, messages: list[Any], expected: list[Any]
) -> None:
    script.executor(Reply([text("ok")]))
    response = await post(make_app(), json=request_body(messages))
    assert response.json()["content"] == [text("ok")]
    assert [r.role for r in script.requests] == ["executor"]
    assert script.requests[0].body["messages"] == expected


@pytest.mark.parametrize(
    ("messages", "tools"),
    [
        pytest.param(PAUSED, [BASH], id="no-advisor-tool"),
        pytest.param(
            [QUESTION, system([text("Advisor off."), REMOVAL]), PAUSED[1]],
            [BASH, {**ADVISOR_TOOL, "defer_loading": True}],
            id="advisor-removed",
        ),
    ],
)
async def test_a_pending_call_without_the_advisor_is_dropped(
    make_app: MakeApp, script: Script, messages: list[Any], tools: list[Any]
) -> None:
    # With no advisor on this turn nothing can answer the call: the host must not see it.
    script.direct(Reply([text("4.")]))
    response = await post(make_app(), json=request_body(messages, tools=tools))
    assert response.json()["content"] == [text("4.")]
    (recorded,) = script.requests
    assert recorded.role == "direct"
    assert recorded.body["messages"][-1] == assistant([text("Let me ask.")])
    assert b'"advisor"' not in recorded.raw


# --- the histories clients build after a resume ----------------------------------------------------


def test_pause_and_resume_concatenated_render_as_one_consult() -> None:
    messages = [
        *PAUSED,
        assistant([result("srvtoolu_toolu__P1", advice("Check twice.")), text("It is 4.")]),
        user("Thanks."),
    ]
    rendered, info = render_history(messages)
    assert rendered == [
        *PAUSED_AS_CALLED,
        user([tool_result("toolu_P1", "Check twice.")]),
        assistant([text("It is 4.")]),
        user("Thanks."),
    ]
    assert info.pending == []


def test_a_later_result_moves_to_the_head_of_the_users_tool_results() -> None:
    messages = [*MIXED, assistant([result("srvtoolu_toolu__M1", advice("Look first.")), text("There is a.txt.")])]
    rendered, info = render_history(messages)
    assert rendered == [
        *MIXED_AS_CALLED,
        user([tool_result("toolu_M1", "Look first."), tool_result("toolu_B1", "a.txt")]),
        assistant([text("There is a.txt.")]),
    ]
    assert info.pending == []


@pytest.mark.parametrize("history", [PAUSED, MIXED], ids=["pause", "mixed"])
async def test_the_turn_after_a_resume_extends_the_resumed_leg(
    make_app: MakeApp, script: Script, history: list[Any]
) -> None:
    script.executor(Reply([text("It is 4.")]), Reply([text("You're welcome.")])).advisor(Reply([text("Look.")]))
    async with http_for(make_app()) as http:
        first = await http.post("/v1/messages", json=request_body(history))
        resumed = first.json()["content"]
        assert block_types(resumed) == ["advisor_tool_result", "text"]
        # The client keeps the resumed response as its own assistant message.
        second = await http.post("/v1/messages", json=request_body([*history, assistant(resumed), user("Thanks.")]))
    assert second.json()["content"] == [text("You're welcome.")]
    assert len(script.of("advisor")) == 1  # the answered call does not run again
    resumed_leg, next_leg = (messages_bytes(leg.raw) for leg in script.of("executor"))
    assert next_leg.startswith(resumed_leg[:-1] + ",")
    assert json.loads(next_leg)[len(json.loads(resumed_leg)) :] == [assistant([text("It is 4.")]), user("Thanks.")]
