"""Streaming, pings and disconnects over real sockets (uvicorn and hypercorn, in-process).

``httpx.ASGITransport`` buffers whole responses, so everything about *when* bytes reach the
client, and what happens when the client goes away, is tested here against real servers
(docs/protocol.md §8). Timing bounds are loose (>= 100 ms margins): CI has 2 cores.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anthropic
import anyio
import httpx
import pytest
from httpx_sse import EventSource, aconnect_sse
from starlette.applications import Starlette

from .support.helpers import ONE_CONSULT, block_types, wait_until
from .support.servers import SERVERS, uvicorn_server
from .support.upstream import ADVISOR_TOOL, Reply, Script, text, tool_use

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Starlette]

REQUEST: dict[str, Any] = {
    "model": "exec-model",
    "max_tokens": 1024,
    "stream": True,
    "messages": [{"role": "user", "content": "Plan the migration."}],
    "tools": [ADVISOR_TOOL],
}

CANCEL_WITHIN = 30.0
"""A generous deadline for the leg in flight to be cancelled once the client has closed its
connection; the legs these tests leave hang or wait for SLOW seconds, far past it."""
SLOW = 600.0


@dataclass
class Timed:
    at: float
    """Seconds since the request was sent."""
    event: dict[str, Any]
    done: tuple[str, ...] = ()
    """The roles of the legs whose handlers had run to their end when the event arrived."""

    @property
    def type(self) -> str:
        return str(self.event.get("type"))


def consult(script: Script, *, advisor: Reply, first: Reply | None = None) -> None:
    """The executor says a few words and calls the advisor, then finishes after the advice."""
    script.executor(
        first or Reply([text("Let me ask the advisor."), tool_use("advisor")], stop_reason="tool_use"),
        Reply([text("Following the advice: done.")]),
    ).advisor(advisor)


@asynccontextmanager
async def sse_request(url: str, body: dict[str, Any]) -> AsyncIterator[tuple[float, EventSource]]:
    """POST ``body`` and yield (send time, event source). Leaving early closes the connection."""
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        sent = time.monotonic()
        async with aconnect_sse(client, "POST", "/v1/messages", json=body) as source:
            assert source.response.status_code == 200, await source.response.aread()
            yield sent, source


async def timed_events(url: str, body: dict[str, Any], script: Script) -> list[Timed]:
    out: list[Timed] = []
    async with sse_request(url, body) as (sent, source), aclosing(source.aiter_sse()) as events:
        async for sse in events:
            out.append(Timed(time.monotonic() - sent, sse.json(), tuple(script.finished)))
    return out


def first(events: list[Timed], predicate: Callable[[dict[str, Any]], bool]) -> Timed:
    return next(e for e in events if predicate(e.event))


def is_text_delta(event: dict[str, Any]) -> bool:
    return event.get("type") == "content_block_delta" and event["delta"].get("type") == "text_delta"


def starts(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == "content_block_start" and e["content_block"]["type"] == kind


@pytest.mark.parametrize("server", list(SERVERS))
async def test_servers_start_and_stop_cleanly(server: str, make_app: MakeApp, script: Script) -> None:
    script.direct(Reply([text("plain")]))
    before = asyncio.all_tasks()
    async with SERVERS[server](make_app()) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/v1/messages", json={**REQUEST, "tools": [], "stream": False})
        assert response.status_code == 200
        assert response.json()["content"] == [text("plain")]
    assert asyncio.all_tasks() <= before, "a server task outlived its context"
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url)


@pytest.mark.parametrize("server", list(SERVERS))
async def test_executor_text_reaches_the_client_before_a_slow_advisor_finishes(
    server: str, make_app: MakeApp, script: Script
) -> None:
    consult(script, advisor=Reply([text("Check the backups first.")], delay=2.0))
    async with SERVERS[server](make_app()) as url:
        events = await timed_events(url, REQUEST, script)

    # The executor's text and the call reach the client while the advisor still thinks (2 s);
    # a server or middleware that held them back would deliver them after the advisor's end.
    assert "advisor" not in first(events, is_text_delta).done
    assert "advisor" not in first(events, starts("server_tool_use")).done
    assert "advisor" in first(events, starts("advisor_tool_result")).done
    assert block_types(e.event["content_block"] for e in events if e.type == "content_block_start") == ONE_CONSULT
    assert events[-1].type == "message_stop"
    assert script.finished == ["executor", "advisor", "executor"]


async def test_pings_keep_the_stream_alive_while_the_advisor_thinks(make_app: MakeApp, script: Script) -> None:
    consult(script, advisor=Reply([text("Check the backups first.")], delay=1.2))
    async with uvicorn_server(make_app(ping_interval=0.2)) as url:
        events = await timed_events(url, REQUEST, script)

    types = [e.type for e in events]
    call = types.index("content_block_start", 1)  # the server_tool_use
    call_stop = types.index("content_block_stop", call)
    result = next(i for i, e in enumerate(events) if starts("advisor_tool_result")(e.event))
    waiting = events[call_stop : result + 1]
    pings = [e for e in waiting if e.type == "ping"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(waiting)]
    detail = f"{len(pings)} pings at {[round(p.at, 2) for p in pings]}, longest gap {max(gaps):.3f} s"
    assert len(pings) >= 3, detail
    assert max(gaps) < 0.6, detail  # never silent for much longer than ping_interval
    assert all(e.event == {"type": "ping"} for e in pings)
    # Nothing else changed: the same blocks, then the end of the message.
    assert types.count("ping") == len(pings)
    assert [t for t in types if t != "ping"][-2:] == ["message_delta", "message_stop"]


@pytest.mark.parametrize("server", list(SERVERS))
async def test_client_disconnect_during_the_advisor_leg_cancels_it(
    server: str, make_app: MakeApp, script: Script
) -> None:
    consult(script, advisor=Reply([text("Too late.")], delay=SLOW))
    async with SERVERS[server](make_app()) as url:
        async with sse_request(url, REQUEST) as (_, source), aclosing(source.aiter_sse()) as events:
            seen_call = False
            async for sse in events:
                seen_call = seen_call or starts("server_tool_use")(sse.json())
                if seen_call and sse.event == "content_block_stop":
                    break
            else:
                pytest.fail("the stream ended before the advisor leg started")
            # The advisor's handler has started streaming (and sleeping).
            await wait_until(lambda: "advisor" in script.streamed, CANCEL_WITHIN, "advisor leg streaming")
            assert script.cancelled == []
        # The client has closed the connection.
        await wait_until(lambda: "advisor" in script.cancelled, CANCEL_WITHIN, "advisor leg cancelled")
        await anyio.sleep(0.3)  # time for a wrong next leg to be requested: none may be
    assert "advisor" not in script.finished
    assert script.cancelled == ["advisor"]
    assert [r.role for r in script.requests] == ["executor", "advisor"], "no executor leg after the disconnect"


@pytest.mark.parametrize("server", list(SERVERS))
async def test_client_disconnect_during_the_first_executor_leg_cancels_it(
    server: str, make_app: MakeApp, script: Script
) -> None:
    # The executor streams its first words, then stalls before calling the advisor.
    stalled = Reply(
        [text("Let me ask the advisor."), tool_use("advisor")], stop_reason="tool_use", hang_after=3, hang=SLOW
    )
    consult(script, advisor=Reply([text("Never asked.")]), first=stalled)
    async with SERVERS[server](make_app()) as url:
        async with sse_request(url, REQUEST) as (_, source), aclosing(source.aiter_sse()) as events:
            async for sse in events:
                if is_text_delta(sse.json()):
                    break
            else:
                pytest.fail("no text before the stall")
        await wait_until(lambda: "executor" in script.cancelled, CANCEL_WITHIN, "executor leg cancelled")
        await anyio.sleep(0.3)  # time for a wrong advisor leg to be requested: none may be
    assert script.finished == []
    assert script.cancelled == ["executor"]
    assert [r.role for r in script.requests] == ["executor"], "no advisor leg after the disconnect"


async def test_client_disconnect_before_the_json_response_cancels_the_leg(make_app: MakeApp, script: Script) -> None:
    # Non-streaming: nothing is sent before the whole loop is done, so only receive() can tell.
    consult(script, advisor=Reply([text("Never asked.")]), first=Reply([text("Slow.")], delay=SLOW))
    async with uvicorn_server(make_app()) as url, httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.post("/v1/messages", json={**REQUEST, "stream": False}))
            await wait_until(lambda: bool(script.of("executor")), CANCEL_WITHIN, "executor leg requested")
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()  # httpx closes the connection
        await wait_until(lambda: "executor" in script.cancelled, CANCEL_WITHIN, "executor leg cancelled")
        await anyio.sleep(0.3)  # time for a wrong advisor leg to be requested: none may be
    assert script.finished == []
    assert [r.role for r in script.requests] == ["executor"]


@pytest.mark.parametrize("server", list(SERVERS))
async def test_sdk_round_trip_over_a_real_socket(server: str, make_app: MakeApp, script: Script) -> None:
    consult(script, advisor=Reply([text("Check the backups first.")], delay=0.3, input_tokens=40, output_tokens=7))
    async with SERVERS[server](make_app(ping_interval=0.1)) as url:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-test", max_retries=0) as sdk:
            async with sdk.beta.messages.stream(
                model="exec-model",
                max_tokens=1024,
                messages=[{"role": "user", "content": "Plan the migration."}],
                tools=[ADVISOR_TOOL],  # type: ignore[list-item]
            ) as stream:
                deltas = [event.text async for event in stream if event.type == "text"]
                message = await stream.get_final_message()

    assert deltas == ["Let me ask the advisor.", "Following the advice: done."]
    assert block_types(message.content) == ONE_CONSULT
    call, result = message.content[1], message.content[2]
    assert call.type == "server_tool_use" and result.type == "advisor_tool_result"
    assert call.name == "advisor" and call.input == {} and call.id.startswith("srvtoolu_")
    assert result.tool_use_id == call.id
    assert result.content.type == "advisor_result" and result.content.text == "Check the backups first."
    assert message.stop_reason == "end_turn"
    assert message.usage.iterations is not None
    iterations = [(i.type, getattr(i, "model", None)) for i in message.usage.iterations]
    assert iterations == [("message", None), ("advisor_message", "adv-model"), ("message", None)]
    assert message.usage.input_tokens == 20  # the two executor legs; advisor tokens only in iterations
