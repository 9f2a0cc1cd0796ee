"""Caps on what a misbehaving host or a runaway executor can make the middleware do.

- ``max_leg_bytes``: a leg that answers more is cut off (executor: 502 or an ``error`` event;
  advisor: ``advisor_tool_result_error``), with every shipped router;
- block indices: a stream opens blocks at 0, 1, 2, ...; one that jumps ahead is broken, and
  nothing is allocated to reach it;
- ``max_consults``: by default a request runs at most 10 consults, however many calls the
  executor makes.

All through ``AdvisorMiddleware`` around a Starlette host; the legs that misbehave are streams
of our own, the others the scripted host's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import StreamingResponse

from advisor_middleware import AdvisorMiddleware, HTTPRouter
from advisor_middleware.routers import LiteLLMRouter

from .support.helpers import ADVISOR_PARAMS, answer_content, check_stream, post
from .support.servers import uvicorn_server
from .support.upstream import Reply, Script, reply_events, scripted_host, sse, text, tool_use

pytestmark = pytest.mark.anyio

Stream = Callable[[], AsyncIterator[bytes]]
DEADLINE = 60
"""Seconds a request may take before the test gives up on it (each finishes in well under one)."""
CAP = 256 * 1024
"""``max_leg_bytes`` in these tests."""
CHUNK = "x" * 16 * 1024
ASK = Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use")


def host(script: Script, streams: dict[str, list[Stream]]) -> Any:
    """The scripted host, except that the next leg of a role in ``streams`` gets that stream."""
    scripted = scripted_host(script)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        role = dict(scope.get("headers") or []).get(b"x-advisor-leg", b"direct").decode()
        if scope["type"] == "http" and streams.get(role):
            stream = streams[role].pop(0)
            await StreamingResponse(stream(), media_type="text/event-stream")(scope, receive, send)
            return
        await scripted(scope, receive, send)

    return app


def _start() -> list[bytes]:
    return [sse(event) for event in reply_events(Reply([]), "exec")[:1]]


def _end() -> list[bytes]:
    return [sse(event) for event in reply_events(Reply([]), "exec")[-2:]]


def block_at(index: Any) -> Stream:
    """A stream whose one block, of text, starts at ``index``."""

    async def stream() -> AsyncIterator[bytes]:
        for chunk in _start():
            yield chunk
        block = {"type": "text", "text": ""}
        yield sse({"type": "content_block_start", "index": index, "content_block": block})
        yield sse({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": "Hm."}})
        yield sse({"type": "content_block_stop", "index": index})
        for chunk in _end():
            yield chunk

    return stream


def endless(sent: list[int], upto: int | None = None) -> Stream:
    """A stream that writes text without end (counting the bytes it sent into ``sent``); with
    ``upto``, it stops writing after that many bytes, but never ends."""

    async def stream() -> AsyncIterator[bytes]:
        for chunk in _start():
            yield chunk
        yield sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        delta = sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": CHUNK}})
        while upto is None or sent[0] < upto:
            sent[0] += len(delta)
            yield delta
            await anyio.lowlevel.checkpoint()
        await anyio.sleep_forever()

    return stream


def error_of(result: dict[str, Any]) -> Any:
    return result["content"].get("error_code")


async def request(app: Any, streaming: bool) -> httpx.Response:
    with anyio.fail_after(DEADLINE):
        return await post(app, json={**ADVISOR_PARAMS, "stream": streaming})


# --- block indices ------------------------------------------------------------------------------------

FAR = [1, 5, 10**9, 10**18, -1, "0", None]


@pytest.mark.parametrize("index", FAR, ids=repr)
async def test_executor_block_not_next_is_a_502(index: Any) -> None:
    app = AdvisorMiddleware(host(Script(), {"executor": [block_at(index)]}))
    response = await request(app, streaming=False)
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "api_error"


@pytest.mark.parametrize("index", FAR, ids=repr)
async def test_executor_block_not_next_ends_the_stream(index: Any) -> None:
    app = AdvisorMiddleware(host(Script(), {"executor": [block_at(index)]}))
    response = await request(app, streaming=True)
    events, _ = check_stream(response.content)
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"


@pytest.mark.parametrize("index", FAR, ids=repr)
async def test_advisor_block_not_next_is_an_error_result(index: Any) -> None:
    script = Script().executor(ASK, Reply([text("Alone.")]))
    app = AdvisorMiddleware(host(script, {"advisor": [block_at(index)]}))
    response = await request(app, streaming=False)
    assert response.status_code == 200
    content = response.json()["content"]
    assert [b["type"] for b in content] == ["text", "server_tool_use", "advisor_tool_result", "text"]
    assert error_of(content[2]) == "unavailable"
    assert content[3]["text"] == "Alone."


async def test_a_block_started_again_at_its_own_index_is_kept() -> None:
    # Starting a block again where one started is the accumulators' rule (not a jump ahead).
    async def stream() -> AsyncIterator[bytes]:
        for chunk in _start():
            yield chunk
        for value in ("first", "second"):
            yield sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            yield sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": value}})
            yield sse({"type": "content_block_stop", "index": 0})
        for chunk in _end():
            yield chunk

    script = Script().executor(ASK, Reply([text("Done.")]))
    app = AdvisorMiddleware(host(script, {"advisor": [stream]}))
    response = await request(app, streaming=False)
    assert response.json()["content"][2]["content"] == {"type": "advisor_result", "text": "second"}


# --- max_leg_bytes -------------------------------------------------------------------------------------


async def test_endless_advisor_is_cut_off_at_the_cap() -> None:
    sent = [0]
    script = Script().executor(ASK, Reply([text("Without advice.")]))
    app = AdvisorMiddleware(host(script, {"advisor": [endless(sent)]}), max_leg_bytes=CAP)
    response = await request(app, streaming=True)
    _, message = check_stream(response.content)
    assert message is not None
    dumped = [b.model_dump(exclude_none=True) for b in message.content]
    assert dumped[2]["content"] == {"type": "advisor_tool_result_error", "error_code": "unavailable"}
    assert dumped[3] == {"type": "text", "text": "Without advice."}
    # Read up to the cap and not much further (the host is stopped at its next send).
    assert CAP < sent[0] < 2 * CAP


async def test_the_default_cap_stops_an_advisor_that_never_ends() -> None:
    # 40 MiB of advice and no end: read up to the default 32 MiB, not until advisor_timeout.
    sent = [0]
    script = Script().executor(ASK, Reply([text("Without advice.")]))
    app = AdvisorMiddleware(host(script, {"advisor": [endless(sent, upto=40 * 1024 * 1024)]}))
    response = await request(app, streaming=False)
    content = response.json()["content"]
    assert error_of(content[2]) == "unavailable"
    assert content[3] == {"type": "text", "text": "Without advice."}
    assert 32 * 1024 * 1024 < sent[0] < 40 * 1024 * 1024


@pytest.mark.parametrize("streaming", [True, False])
async def test_endless_executor_is_cut_off_at_the_cap(streaming: bool) -> None:
    sent = [0]
    app = AdvisorMiddleware(host(Script(), {"executor": [endless(sent)]}), max_leg_bytes=CAP)
    response = await request(app, streaming)
    if streaming:
        events, _ = check_stream(response.content)
        assert events[-1][0] == "error"
        error = events[-1][1]["error"]
    else:
        assert response.status_code == 502
        error = response.json()["error"]
    assert error["type"] == "api_error"
    assert "max_leg_bytes" in error["message"]
    assert CAP < sent[0] < 2 * CAP


async def test_a_json_answer_over_the_cap_is_a_502() -> None:
    script = Script().executor(Reply([text("y" * 2 * CAP)], json_only=True))
    app = AdvisorMiddleware(scripted_host(script), max_leg_bytes=CAP)
    response = await request(app, streaming=False)
    assert response.status_code == 502
    assert "max_leg_bytes" in response.json()["error"]["message"]


async def test_http_router_cuts_an_endless_advisor_off() -> None:
    sent = [0]
    script = Script().executor(ASK, Reply([text("Without advice.")]))
    upstream = host(script, {"advisor": [endless(sent)]})
    async with uvicorn_server(upstream) as url:
        router = HTTPRouter(url)
        try:
            app = AdvisorMiddleware(Starlette(), router=router, max_leg_bytes=CAP)
            response = await request(app, streaming=False)
        finally:
            await router.aclose()
    content = response.json()["content"]
    assert error_of(content[2]) == "unavailable"
    assert content[3] == {"type": "text", "text": "Without advice."}
    assert sent[0] > CAP


class EndlessLiteLLM:
    """A stand-in ``litellm.Router``: the executor asks once then answers; the advisor streams
    without end."""

    def __init__(self) -> None:
        self.executor = [ASK, Reply([text("Without advice.")])]
        self.sent = [0]

    async def aanthropic_messages(self, **kwargs: Any) -> AsyncIterator[bytes]:
        if kwargs["model"] == "exec":
            return self._events(self.executor.pop(0))
        return endless(self.sent)()

    async def _events(self, reply: Reply) -> AsyncIterator[bytes]:
        for event in reply_events(reply, "exec"):
            yield sse(event)


async def test_litellm_router_cuts_an_endless_advisor_off() -> None:
    stand_in = EndlessLiteLLM()
    app = AdvisorMiddleware(Starlette(), router=LiteLLMRouter(stand_in), max_leg_bytes=CAP)
    response = await request(app, streaming=False)
    content = response.json()["content"]
    assert error_of(content[2]) == "unavailable"
    assert content[3] == {"type": "text", "text": "Without advice."}
    assert CAP < stand_in.sent[0] < 2 * CAP


# --- max_consults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_a_runaway_executor_stops_at_the_default_cap(streaming: bool) -> None:
    # One executor leg calls the advisor 30 times: 10 consults run (the default max_consults);
    # the other 20 calls get max_uses_exceeded, as with the tool's max_uses, and the executor
    # goes on.
    calls = [tool_use("advisor", id=f"toolu_{i}") for i in range(30)]
    script = Script().executor(Reply(calls, stop_reason="tool_use"), Reply([text("Done.")]))
    script.advisor(*(Reply([text(f"Advice {i}.")]) for i in range(30)))
    app = AdvisorMiddleware(scripted_host(script))
    response = await request(app, streaming)
    content = answer_content(response, streaming)
    results = [b["content"] for b in content if b["type"] == "advisor_tool_result"]
    assert results[:10] == [{"type": "advisor_result", "text": f"Advice {i}."} for i in range(10)]
    assert results[10:] == [{"type": "advisor_tool_result_error", "error_code": "max_uses_exceeded"}] * 20
    assert len(script.of("advisor")) == 10
    assert content[-1] == {"type": "text", "text": "Done."}
    # The executor is told each time, in the tool_result of each call.
    answers = script.of("executor")[1].body["messages"][-1]["content"]
    assert [a["is_error"] for a in answers if a.get("is_error")] == [True] * 20


async def test_max_consults_none_lifts_the_operator_cap() -> None:
    calls = [tool_use("advisor", id=f"toolu_{i}") for i in range(12)]
    script = Script().executor(Reply(calls, stop_reason="tool_use"), Reply([text("Done.")]))
    script.advisor(*(Reply([text(f"Advice {i}.")]) for i in range(12)))
    app = AdvisorMiddleware(scripted_host(script), max_consults=None)
    response = await request(app, streaming=False)
    results = [b["content"] for b in response.json()["content"] if b["type"] == "advisor_tool_result"]
    assert results == [{"type": "advisor_result", "text": f"Advice {i}."} for i in range(12)]
