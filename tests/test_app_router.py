"""``AppRouter`` drives the host in the request's own task (``push``): what that promises. The
consumer's exceptions come out unchanged and the host is told the client left; a host that
carries on is cancelled; a slow client holds the host back (no read-ahead); the pulled form
(``batches``/``stream``, built on ``push``) groups what is waiting, stops the host when closed
early and raises a leg's failure as it is."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, MutableMapping
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from advisor_middleware import AdvisorMiddleware, AppRouter, Leg, UpstreamError
from advisor_middleware.routers.base import Batch, BatchRouter
from bench.inproc import receiver

from .support.helpers import ADVISOR_PARAMS, ONE_CONSULT, block_types, call, check_stream, http_scope, sdk_for
from .support.upstream import HOSTS, Reply, Script, sse, text, tool_use

pytestmark = pytest.mark.anyio

LEG = Leg("executor", {"model": "m", "max_tokens": 10, "messages": [], "stream": True}, [], http_scope([]))


def delta(index: int, text: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}


START: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 0},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
]


class Stubborn:
    """A raw ASGI host that ignores errors from ``send`` and keeps streaming, 20 ms per event."""

    def __init__(self) -> None:
        self.sent = 0
        self.errors: list[type[BaseException]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(100):
            try:
                await send({"type": "http.response.body", "body": sse(delta(0, f"w{i}")), "more_body": True})
            except OSError as exc:
                self.errors.append(type(exc))
            self.sent += 1
            await anyio.sleep(0.02)


async def test_a_host_that_carries_on_after_the_leg_stopped_is_cancelled() -> None:
    host = Stubborn()

    async def on_batch(batch: Batch) -> None:
        raise RuntimeError("the consumer stops here")

    with anyio.fail_after(30):  # a host not cancelled streams all 100 events: the count below fails
        with pytest.raises(RuntimeError, match="the consumer stops here"):
            await AppRouter(host).push(LEG, on_batch)
    assert host.errors and all(issubclass(e, OSError) for e in host.errors)
    # Cancelled at its first await once its wind-down (0.1 s, 20 ms per event) is over.
    assert 1 < host.sent <= 8


def streaming_host(events: list[dict[str, Any]], gap: float = 0.0) -> tuple[Starlette, list[str]]:
    """A Starlette host streaming ``events``; the list it returns gets "sent" per event handed to
    Starlette, then how its stream ended."""
    ended: list[str] = []

    async def messages(request: Request) -> StreamingResponse:
        await request.body()

        async def stream() -> Any:
            try:
                for event in events:
                    yield sse(event)
                    ended.append("sent")
                    if gap:
                        await anyio.sleep(gap)
                ended.append("complete")
            except BaseException as exc:
                ended.append(type(exc).__name__)
                raise

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])]), ended


async def test_the_consumers_error_comes_out_of_push_unchanged_and_the_host_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, ended = streaming_host([*START, *(delta(0, f"w{i}") for i in range(50))], gap=0.001)
    mine = UpstreamError(502, "the loop found this stream malformed")
    seen: Batch = []

    async def on_batch(batch: Batch) -> None:
        seen.extend(batch)
        if len(seen) >= 5:
            raise mine

    with caplog.at_level(logging.DEBUG, logger="advisor_middleware"), anyio.fail_after(30):
        with pytest.raises(UpstreamError) as caught:
            await AppRouter(app).push(LEG, on_batch)
    assert caught.value is mine
    assert len(seen) == 5
    # The send of the fifth event raised: Starlette never asked its generator for a sixth.
    assert ended.count("sent") == 4 and "complete" not in ended
    assert not [r for r in caplog.records if "host app raised" in r.getMessage()]


async def test_a_slow_client_holds_the_host_back() -> None:
    # The host runs inside the client's send: it cannot get ahead of what the client has taken
    # (a reader in its own task would let it run up to a buffer's worth ahead).
    made = 0  # text deltas of the final leg the host has sent
    taken = 0  # ... and the client has received
    lag = 0

    async def host(scope: Any, receive: Any, send: Any) -> None:
        nonlocal made
        body = json.loads((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        executor = body["model"] == ADVISOR_PARAMS["model"]
        final = executor and len(body["messages"]) > 1
        events: list[dict[str, Any]] = [*START, delta(0, "Words.")]
        if executor and not final:
            tool = {"type": "tool_use", "id": "toolu_1", "name": "advisor", "input": {}}
            events += [
                {"type": "content_block_stop", "index": 0},
                {"type": "content_block_start", "index": 1, "content_block": tool},
                {"type": "content_block_stop", "index": 1},
            ]
        elif final:
            events += [*(delta(0, f" w{i}") for i in range(40)), {"type": "content_block_stop", "index": 0}]
        else:
            events.append({"type": "content_block_stop", "index": 0})
        stop = "tool_use" if executor and not final else "end_turn"
        events += [
            {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 5}},
            {"type": "message_stop"},
        ]
        for event in events:
            if final and event["type"] == "content_block_delta":
                made += 1
            await send({"type": "http.response.body", "body": sse(event), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    bodies: list[bytes] = []
    in_final_leg = False

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal in_final_leg, taken, lag
        if message["type"] != "http.response.body" or not message["body"]:
            return
        bodies.append(message["body"])
        if b"advisor_tool_result" in message["body"]:
            in_final_leg = True
        elif in_final_leg:
            taken += message["body"].count(b"event: content_block_delta")
            lag = max(lag, made - taken)
        await anyio.sleep(0.002)  # a slow client

    request = json.dumps({**ADVISOR_PARAMS, "stream": True}).encode()
    with anyio.fail_after(30):
        await AdvisorMiddleware(host)(http_scope([]), receiver([request]), send)
    _, message = check_stream(b"".join(bodies))
    assert message is not None and block_types(message.content) == ONE_CONSULT
    assert taken == made == 41
    assert lag == 0, f"the host ran {lag} events ahead of a slow client"


async def test_pulled_batches_group_what_is_waiting_and_closing_early_stops_the_host() -> None:
    app, ended = streaming_host([*START, *(delta(0, f"w{i}") for i in range(10)), delta(0, "late")], gap=0)
    slow, slow_ended = streaming_host([*START, delta(0, "first")], gap=30.0)

    with anyio.fail_after(30):
        # All eleven events are sent before the host waits (it never does): one or a few groups.
        groups = [group async for group in AppRouter(app).batches(LEG)]
        assert sum(len(g) for g in groups) == 13
        assert len(groups) < 13
        assert ended[-1] == "complete"

        batches = AppRouter(slow).batches(LEG)
        assert isinstance(batches, AsyncGenerator)
        first = await batches.__anext__()
        assert first[0]["type"] == "message_start"
        await batches.aclose()  # the host is in a 30 s sleep: closing must cancel it
    assert slow_ended == ["sent", "CancelledError"]


async def test_pulled_batches_raise_a_legs_failure_as_it_is() -> None:
    async def limited(request: Request) -> JSONResponse:
        return JSONResponse({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}, 429)

    app = Starlette(routes=[Route("/v1/messages", limited, methods=["POST"])])
    with anyio.fail_after(30), pytest.raises(UpstreamError) as caught:
        async for _ in AppRouter(app).stream(LEG):
            pass
    assert caught.value.status == 429 and caught.value.kind == "rate_limit_error"


def test_a_router_must_implement_batches_or_push() -> None:
    with pytest.raises(TypeError, match="must implement batches\\(\\) or push\\(\\)"):

        class Neither(BatchRouter):
            pass

    class Pushes(BatchRouter):
        async def push(self, leg: Leg, on_batch: Any) -> None:
            await on_batch([{"type": "message_stop"}])

    assert isinstance(Pushes(), BatchRouter)


@pytest.mark.parametrize("host", list(HOSTS))
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_a_consult_through_a_host_with_http_middleware(script: Script, host: str, streaming: bool) -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"), Reply([text("Done.")])
    ).advisor(Reply([text("Advice.")]))
    async with sdk_for(AdvisorMiddleware(HOSTS[host](script))) as sdk:
        message = await call(sdk, streaming, **ADVISOR_PARAMS)
    assert block_types(message.content) == ONE_CONSULT
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]


@pytest.mark.parametrize("host", list(HOSTS))
async def test_a_client_gone_mid_stream_ends_the_request_quietly(
    script: Script, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An ASGI 2.4 server's send raises OSError once the client is gone: the host's stream stops
    # there, and nobody logs a crash.
    script.executor(Reply([text(f"part {i}") for i in range(200)], gap=0.001))
    body = json.dumps({**ADVISOR_PARAMS, "stream": True}).encode()
    sent = 0

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal sent
        if message["type"] == "http.response.body":
            sent += 1
            if sent > 5:
                raise OSError("the client is gone")

    with caplog.at_level(logging.DEBUG), anyio.fail_after(30):
        await AdvisorMiddleware(HOSTS[host](script))(http_scope([]), receiver([body]), send)
    assert sent == 6
    # Nothing must happen now: unloaded, the whole answer takes 0.2 s, so a host that went on
    # would be done well within this wait.
    await anyio.sleep(1.0)
    assert script.finished == [], "the host streamed on after the client left"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
