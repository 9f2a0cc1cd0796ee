"""The executor's legs re-send the conversation: every leg carries the bytes of its whole body,
the last leg's messages and what the executor and the advisor added since."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette

from advisor_middleware.cli import build_app

from .support.helpers import assistant, post, request_body, user
from .support.servers import uvicorn_server
from .support.upstream import Reply, Script, scripted_host, text, tool_use

MakeApp = Callable[..., Starlette]


def history(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for n in range(turns):
        messages.append(user(f'Question {n} — ünïcode, "quotes", \\ and a newline\n' + "q" * (50 * n)))
        messages.append(assistant([text(f"Answer {n}: {n * 1.5}")]))
    return [*messages, user("And now?")]


def whole_bytes(raw: bytes) -> bytes:
    """What encoding the recorded body whole gives (the keys in the order they were sent)."""
    return orjson.dumps(json.loads(raw))


def two_consults(script: Script) -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text("Again."), tool_use("advisor", id="toolu_2")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    ).advisor(Reply([text("Advice one.")]), Reply([text("Advice two.")]))


@pytest.mark.anyio
@pytest.mark.parametrize("router", ["app", "http"])
async def test_every_leg_of_a_long_conversation_carries_its_whole_body(
    make_app: MakeApp, script: Script, router: str
) -> None:
    # AppRouter (the host re-entered) and HTTPRouter (serve --upstream, over uvicorn) both send
    # what Leg.encode gives.
    two_consults(script)
    messages = history(10)
    body = request_body(messages, metadata={"user_id": "u-1"})
    if router == "app":
        response = await post(make_app(), json=body)
    else:
        async with uvicorn_server(scripted_host(script)) as url:
            gateway = build_app(None, upstream=url)
            response = await post(gateway, json=body)
            await gateway.app.aclose()
    assert response.status_code == 200

    legs = script.of("executor")
    assert len(legs) == 3
    for leg in legs:
        assert leg.raw == whole_bytes(leg.raw)
    first, second, third = (leg.body["messages"] for leg in legs)
    assert first == messages
    # Each leg is the last plus the executor's answer and the advice, nothing lost or repeated.
    assert second[: len(first)] == first and len(second) == len(first) + 2
    assert third[: len(second)] == second and len(third) == len(second) + 2
    assert [m["role"] for m in third[len(first) :]] == ["assistant", "user", "assistant", "user"]
    assert "Advice one." in json.dumps(second[-1]) and "Advice two." in json.dumps(third[-1])
    assert all(leg.body["metadata"] == {"user_id": "u-1"} for leg in legs)


@pytest.mark.anyio
async def test_a_continued_prefill_is_encoded_whole(make_app: MakeApp, script: Script) -> None:
    # The executor's answer continues the prefilled assistant turn: leg 2 replaces the last
    # message, so it shares all but that one with leg 1.
    script.executor(
        Reply([text(" matey."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    ).advisor(Reply([text("Advice.")]))
    messages = [*history(10), assistant("Arr,")]
    response = await post(make_app(), json=request_body(messages))
    assert response.status_code == 200

    first, second = script.of("executor")
    for leg in (first, second):
        assert leg.raw == whole_bytes(leg.raw)
    assert first.body["messages"] == messages
    assert second.body["messages"][: len(messages) - 1] == messages[:-1]
    prefill = second.body["messages"][len(messages) - 1]
    assert prefill["role"] == "assistant" and prefill["content"][0] == text("Arr,")
    assert second.body["messages"][-1]["role"] == "user"
