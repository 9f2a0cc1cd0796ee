"""The executor's legs re-send the conversation, encoding only the messages the previous leg did
not have (``LegEncoder``, docs/performance.md step 28): every leg must still carry the bytes of
its body encoded whole."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from advisor_middleware.cli import build_app
from advisor_middleware.legs import _FEW, LegEncoder
from advisor_middleware.sse import encode_json

from .helpers import assistant, post, request_body, user
from .servers import uvicorn_server
from .upstream import Reply, Script, scripted_host, text, tool_use

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


# --- LegEncoder against encoding each body whole ------------------------------------------------


def message(draw: Any, n: int) -> dict[str, Any]:
    value = draw(st.sampled_from(["plain", 'ünï"co\\de\n', 7, 2.5, 2**70, None, True]))
    return {"role": ["user", "assistant"][n % 2], "content": [{"type": "text", "text": str(n), "extra": value}]}


@st.composite
def legs(draw: Any) -> list[Any]:
    """Bodies as a request's legs could be: each step appends, replaces the last, repeats the
    list, starts afresh or is not a list; the messages key anywhere among the others."""
    keys = draw(st.permutations(["model", "messages", "max_tokens", "tools"]))
    counter = iter(range(10_000))
    messages: Any = [message(draw, next(counter)) for _ in range(draw(st.integers(0, 12)))]
    bodies = []
    for _ in range(draw(st.integers(1, 6))):
        step = draw(st.sampled_from(["append", "append", "replace", "same", "fresh", "odd"]))
        if step == "append" and isinstance(messages, list):
            messages = [*messages, *(message(draw, next(counter)) for _ in range(draw(st.integers(1, 3))))]
        elif step == "replace" and isinstance(messages, list) and messages:
            messages = [*messages[:-1], message(draw, next(counter))]
        elif step == "fresh":
            messages = [message(draw, next(counter)) for _ in range(draw(st.integers(0, 12)))]
        elif step == "odd":
            messages = draw(st.sampled_from(["not a list", None, {"a": 1}]))
        values = {"model": "m", "messages": messages, "max_tokens": 10, "tools": [{"name": "t"}]}
        bodies.append({key: values[key] for key in keys})
    return bodies


@settings(max_examples=300, deadline=None)
@given(legs())
def test_the_encoder_gives_the_bytes_of_each_body_encoded_whole(bodies: list[dict[str, Any]]) -> None:
    encoder = LegEncoder()
    for body in bodies:
        assert encoder.encode(body) == encode_json(body)


@pytest.mark.parametrize("count", [_FEW - 1, _FEW, 30])
def test_a_leg_that_extends_the_last_reuses_the_shared_messages_bytes(count: int) -> None:
    # A message changed after the first leg (the middleware never does: it is how this test
    # sees which bytes were reused) keeps its old bytes in the second leg, once the
    # conversation has enough messages for the splice to pay.
    messages: list[Any] = [{"role": "user", "content": str(n)} for n in range(count)]
    encoder = LegEncoder()
    assert encoder.encode({"model": "m", "messages": messages}) == encode_json({"model": "m", "messages": messages})
    messages[0]["content"] = "changed after the first leg"
    extended = [*messages, {"role": "assistant", "content": "more"}]
    sent = json.loads(encoder.encode({"model": "m", "messages": extended}))
    assert sent["messages"][1:] == extended[1:]
    assert sent["messages"][0]["content"] == ("0" if count >= _FEW else "changed after the first leg")
