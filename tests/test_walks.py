"""Every walk over a conversation or a leg's events is linear in its size.

Each test times one walk at N and at 2N (the best of several runs, with the garbage collector
off while timing) and asserts the ratio is well under 4: linear work doubles, quadratic work
quadruples. Sizes are large enough that a quadratic walk takes seconds at 2N while a linear one
takes tens of milliseconds. No absolute time is asserted.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.accumulate import MessageAccumulator
from advisor_middleware.classify import classify
from advisor_middleware.endpoints import batch_body, count_tokens_body
from advisor_middleware.history import render_history
from advisor_middleware.transcript import render_transcript

from .support.helpers import advice, advisor_pair, assistant, parse_sse, post, request_body, system, tool_result, user
from .support.upstream import Reply, Script, reply_events, scripted_host, sse, text, tool_use

pytestmark = pytest.mark.anyio

LINEAR = 3.0
"""The most time at 2N may take over time at N: linear is ~2, quadratic ~4 and more."""
RUNS = 5


def _timed(run: Callable[[], object]) -> float:
    # CPU time of this process, not wall time: the machine's other work does not count.
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        run()
        return time.process_time() - start
    finally:
        gc.enable()


def growth(prepare: Callable[[int], Callable[[], object]], n: int) -> float:
    """Best time of ``prepare(2n)()`` over that of ``prepare(n)()`` (inputs built untimed, the
    two sizes run in turn so a slow moment hits both)."""
    small, large = prepare(n), prepare(2 * n)
    times = [(_timed(small), _timed(large)) for _ in range(RUNS)]
    return min(t for _, t in times) / min(t for t, _ in times)


async def async_growth(prepare: Callable[[int], Callable[[], Awaitable[object]]], n: int) -> float:
    """:func:`growth` for a request."""

    async def timed(run: Callable[[], Awaitable[object]]) -> float:
        gc.collect()
        gc.disable()
        try:
            start = time.process_time()
            await run()
            return time.process_time() - start
        finally:
            gc.enable()

    small, large = prepare(n), prepare(2 * n)
    times = [(await timed(small), await timed(large)) for _ in range(RUNS)]
    return min(t for _, t in times) / min(t for t, _ in times)


# --- conversations ------------------------------------------------------------------------------


def user_run(n: int) -> list[Any]:
    """``n`` one-block user messages in a row, the shape a client can send at no cost."""
    return [user([{"type": "text", "text": f"message {i}"}]) for i in range(n)]


def system_run(n: int) -> list[Any]:
    return [user("Start."), *(system(f"reminder {i}") for i in range(n)), assistant("Done.")]


def consults(n: int) -> list[Any]:
    """``n`` turns, each an advisor consult and a client tool call with its result."""
    out: list[Any] = []
    for i in range(n):
        out.append(user([tool_result(f"toolu_{i - 1}", "ok")]) if i else user("Go."))
        srv = f"srvtoolu_{i}"
        out.append(
            assistant(
                [text(f"step {i}"), *advisor_pair(srv, advice(f"advice {i}")), tool_use("Bash", {}, f"toolu_{i}")]
            )
        )
    return out


def advice_in_one_message(n: int) -> list[Any]:
    """One assistant message with ``n`` advisor pairs (each splits it once)."""
    blocks: list[Any] = []
    for i in range(n):
        blocks += [text(f"part {i}"), *advisor_pair(f"srvtoolu_{i}", advice(f"advice {i}"))]
    return [user("Go."), assistant(blocks)]


SIZES = {"user-run": 20_000, "system-run": 20_000, "consults": 10_000, "advice-in-one-message": 10_000}
"""N for each shape: a consult turn is two messages and a dozen blocks."""
CONVERSATIONS = {
    "user-run": user_run,
    "system-run": system_run,
    "consults": consults,
    "advice-in-one-message": advice_in_one_message,
}


@pytest.mark.parametrize("shape", CONVERSATIONS)
def test_history_render_is_linear(shape: str) -> None:
    make = CONVERSATIONS[shape]

    def prepare(n: int) -> Callable[[], object]:
        messages = make(n)
        return lambda: render_history(messages)

    assert growth(prepare, SIZES[shape]) < LINEAR


@pytest.mark.parametrize("shape", CONVERSATIONS)
def test_history_only_request_is_linear(shape: str) -> None:
    # No advisor tool, advisor blocks in the history: classify renders it for the host.
    make = CONVERSATIONS[shape]

    def prepare(n: int) -> Callable[[], object]:
        body = {"model": "exec", "max_tokens": 10, "messages": [*make(n), user([*advisor_pair("srvtoolu_x", "a")])]}
        return lambda: classify(body)

    assert growth(prepare, SIZES[shape]) < LINEAR


def _never_native(model: str) -> bool:
    return False


def test_count_tokens_rewrite_is_linear() -> None:
    def prepare(n: int) -> Callable[[], object]:
        body = request_body(consults(n))
        return lambda: count_tokens_body(body, _never_native)

    assert growth(prepare, SIZES["consults"]) < LINEAR


def test_batch_rewrite_is_linear() -> None:
    # Many requests, each with a short advisor history: each is rendered once.
    def prepare(n: int) -> Callable[[], object]:
        params = [{"model": "exec", "max_tokens": 10, "messages": consults(2)} for _ in range(n)]
        body = {"requests": [{"custom_id": f"r{i}", "params": p} for i, p in enumerate(params)]}
        return lambda: batch_body(body, _never_native)

    assert growth(prepare, 5_000) < LINEAR


@pytest.mark.parametrize("max_chars", [None, 20_000, 10**9], ids=["no-budget", "over-budget", "within-budget"])
@pytest.mark.parametrize("shape", ["user-run", "system-run", "consults"])
def test_transcript_is_linear(shape: str, max_chars: int | None) -> None:
    make = CONVERSATIONS[shape]

    def prepare(n: int) -> Callable[[], object]:
        body = request_body(make(n))
        rendered, _ = render_history(body["messages"])
        return lambda: render_transcript(body, rendered, max_chars=max_chars)

    assert growth(prepare, SIZES[shape]) < LINEAR


def open_blocks_events(n: int) -> list[dict[str, Any]]:
    """A leg that opens ``n`` text blocks, writes into each, then stops them all."""
    events = reply_events(Reply([]), "exec")
    start, tail = events[:1], events[1:]
    for i in range(n):
        start.append({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
        start.append({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": "x"}})
    start += [{"type": "content_block_stop", "index": i} for i in range(n)]
    return start + tail


def sequential_blocks_events(n: int) -> list[dict[str, Any]]:
    return reply_events(Reply([text(f"block {i}") for i in range(n)]), "exec")


@pytest.mark.parametrize("make", [open_blocks_events, sequential_blocks_events], ids=["open-at-once", "one-by-one"])
def test_accumulator_is_linear(make: Callable[[int], list[dict[str, Any]]]) -> None:
    def prepare(n: int) -> Callable[[], object]:
        events = make(n)

        def run() -> object:
            acc = MessageAccumulator()
            for event in events:
                acc.feed(event)
            return acc.complete()

        return run

    assert growth(prepare, 10_000) < LINEAR


# --- through AdvisorMiddleware --------------------------------------------------------------------


def streaming_host(payload: bytes) -> Starlette:
    """A host that answers every leg with these SSE bytes, in one send."""

    async def messages(request: Request) -> StreamingResponse:
        await request.body()

        async def body() -> AsyncIterator[bytes]:
            yield payload

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


@pytest.mark.parametrize("streaming", [True, False])
async def test_open_blocks_are_tracked_in_linear_time(streaming: bool) -> None:
    # The executor holds N blocks open at once: the loop tracks which are open, the client's
    # accumulator (JSON mode) joins each block's text at its stop.
    def prepare(n: int) -> Callable[[], Awaitable[object]]:
        app = AdvisorMiddleware(streaming_host(b"".join(sse(e) for e in open_blocks_events(n))))
        body = {**request_body([user("Hi.")]), "stream": streaming}

        async def run() -> object:
            response = await post(app, json=body)
            assert response.status_code == 200
            return response

        return run

    with anyio.fail_after(300):
        assert await async_growth(prepare, 5_000) < LINEAR


async def test_big_history_request_completes() -> None:
    # 80,000 one-block user messages with the advisor tool: the executor leg gets them as one
    # user message, and the client its answer.
    script = Script().executor(Reply([text("Read them all.")]))
    app = AdvisorMiddleware(scripted_host(script))
    messages = user_run(80_000)
    with anyio.fail_after(120):
        response = await post(app, json={**request_body(messages), "stream": True})
    assert response.status_code == 200
    events = parse_sse(response.content)
    assert [e["delta"]["text"] for name, e in events if name == "content_block_delta"] == ["Read them all."]
    (leg,) = script.of("executor")
    assert leg.body["messages"] == [user([m["content"][0] for m in messages])]


async def test_big_history_reaches_the_host_in_linear_time() -> None:
    # Time from the request to the executor leg at the host, at N and 2N messages.
    def prepare(n: int) -> Callable[[], Awaitable[object]]:
        raw = json.dumps(request_body(user_run(n))).encode()

        async def run() -> object:
            script = Script().executor(Reply([text("ok")]))
            return await post(AdvisorMiddleware(scripted_host(script)), raw, {"content-type": "application/json"})

        return run

    with anyio.fail_after(300):
        assert await async_growth(prepare, 40_000) < LINEAR


async def test_a_consult_on_a_long_history_takes_linear_time() -> None:
    # The whole loop on a long history: render, two executor legs, one consult's transcript.
    def prepare(n: int) -> Callable[[], Awaitable[object]]:
        raw = json.dumps(request_body(consults(n))).encode()

        async def run() -> object:
            script = Script().executor(
                Reply([tool_use("advisor", id="toolu_new")], stop_reason="tool_use"), Reply([text("Done.")])
            )
            script.advisor(Reply([text("Advice.")]))
            response = await post(AdvisorMiddleware(scripted_host(script)), raw, {"content-type": "application/json"})
            assert response.json()["content"][-1] == {"type": "text", "text": "Done."}
            return response

        return run

    with anyio.fail_after(300):
        assert await async_growth(prepare, 5_000) < LINEAR
