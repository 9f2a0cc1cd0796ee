"""Deltas relayed as the bytes they came in (``RawDelta``).

The host here writes its own SSE bytes (``BytesHost``), so the tests can say exactly what the
client must get: each ``content_block_delta`` of a block relayed live, byte for byte as the host
wrote it, with only the index changed when a consult came first; and, where the text is needed
again (the next executor leg, the advisor's transcript, a JSON answer), all of it, read from those
bytes. Both routers that read SSE take part: ``AppRouter`` (the host's sends, one event each or
any other split) and ``HTTPRouter`` (the host under uvicorn, network reads).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from advisor_middleware import AdvisorMiddleware, AppRouter, HTTPRouter, Leg

from .support.helpers import ONE_CONSULT, block_types, check_stream, post
from .support.servers import uvicorn_server
from .support.upstream import ADVISOR_TOOL, Reply, reply_events

pytestmark = pytest.mark.anyio

Split = Callable[[list[bytes]], list[bytes]]


def pieces(whole: bytes, size: int) -> list[bytes]:
    return [whole[i : i + size] for i in range(0, len(whole), size)]


SPLITS: dict[str, Split] = {
    "per-event": lambda events: events,  # what a host sends per send: the decoder's fast path
    "one-send": lambda events: [b"".join(events)],
    "7-byte": lambda events: pieces(b"".join(events), 7),
}

# Text that JSON writes in more than one way: escapes, non-ASCII (escaped and as UTF-8), a line
# separator that str.splitlines would break on, quotes and backslashes.
TRICKY = ['caf\u00e9 "quoted" \\ back', "line\nbreak\ttab \u2028 sep", "emoji \U0001f600 and \u00e9"]


def layout(event: dict[str, Any], *, ascii: bool = True, compact: bool = True) -> bytes:
    """One SSE event the way Anthropic writes it (``compact``: no spaces, keys in order)."""
    separators = (",", ":") if compact else (", ", ": ")
    data = json.dumps(event, separators=separators, ensure_ascii=ascii)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def start(model: str) -> dict[str, Any]:
    return reply_events(Reply([]), model)[0]


def delta(index: int, kind: str, value: str) -> dict[str, Any]:
    field = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}[kind]
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: value}}


def block(index: int, content: dict[str, Any], *deltas: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": content},
        *deltas,
        {"type": "content_block_stop", "index": index},
    ]


def end(stop_reason: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]


def texts(index: int, parts: list[str]) -> list[dict[str, Any]]:
    return block(index, {"type": "text", "text": ""}, *(delta(index, "text_delta", p) for p in parts))


def asking(*blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An executor leg: ``blocks``, then a call of the advisor after them."""
    call = {"type": "tool_use", "id": "toolu_ask1", "name": "advisor", "input": {}}
    ask = block(
        len(blocks),
        call,
        {
            "type": "content_block_delta",
            "index": len(blocks),
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
    )
    return [start("exec"), *[e for b in blocks for e in b], *ask, *end("tool_use")]


def final(*blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [start("exec"), *[e for b in blocks for e in b], *end("end_turn")]


ADVICE = [start("adv"), *texts(0, ["Check ", "the edge cases."]), *end("end_turn")]


class BytesHost:
    """A Starlette host that answers each leg with the next of its scripted streams, written as
    the given SSE bytes and split into sends by ``split``. It records every request body."""

    def __init__(self, executor: list[list[bytes]], advisor: list[list[bytes]], split: Split) -> None:
        self.streams = {"executor": list(executor), "advisor": list(advisor)}
        self.split = split
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> StreamingResponse:
        role = request.headers.get("x-advisor-leg", "direct")
        self.requests.append((role, json.loads(await request.body())))
        chunks = self.split(self.streams[role].pop(0))

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return StreamingResponse(body(), media_type="text/event-stream")

    def of(self, role: str) -> list[dict[str, Any]]:
        return [body for r, body in self.requests if r == role]


async def ask(host: BytesHost, via: str, *, stream: bool = True) -> tuple[int, bytes]:
    """One advisor request through the middleware around ``host``; legs go through ``via``."""
    body = {
        "model": "exec",
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": "Plan it."}],
        "tools": [ADVISOR_TOOL],
    }
    if via == "app":
        response = await post(AdvisorMiddleware(host.app), json=body)
        return response.status_code, response.content
    async with uvicorn_server(host.app) as url:
        router = HTTPRouter(url)
        try:
            response = await post(AdvisorMiddleware(host.app, router=router), json=body)
        finally:
            await router.aclose()
    return response.status_code, response.content


def reindexed(raw: bytes, upstream: int, client: int) -> bytes:
    """The host's bytes of one delta at the index the client reads it at."""
    head = b'"type":"content_block_delta","index":'
    assert head + b"%d," % upstream in raw
    return raw.replace(head + b"%d," % upstream, head + b"%d," % client, 1)


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("via", ["app", "http"])
async def test_the_client_gets_each_delta_as_the_host_wrote_it(via: str, split: str) -> None:
    # After a consult the final leg's blocks move up by three (text, server_tool_use,
    # advisor_tool_result come first): its twelve blocks, 0..11 upstream, are 3..14 for the
    # client, so indexes gain a digit (7 -> 10) and keep two (10 -> 13).
    leg1 = asking(texts(0, ["Let me ", "ask first."]))
    blocks = [texts(i, [TRICKY[i % 3], f" part {i}"]) for i in range(12)]
    leg2 = final(*blocks)
    ascii_flags = [i % 2 == 0 for i in range(len(leg2))]  # escaped and raw UTF-8, alternately
    leg2_bytes = [layout(e, ascii=a) for e, a in zip(leg2, ascii_flags, strict=True)]
    host = BytesHost([[layout(e) for e in leg1], leg2_bytes], [[layout(e) for e in ADVICE]], SPLITS[split])

    status, raw = await ask(host, via)

    assert status == 200
    events, message = check_stream(raw)
    assert message is not None
    assert block_types(message.content) == [*ONE_CONSULT[:3], *["text"] * 12]
    assert [b.text for b in message.content[3:]] == [TRICKY[i % 3] + f" part {i}" for i in range(12)]  # type: ignore[union-attr]
    sent = raw.split(b"\n\n")
    checked = 0
    for written in leg2_bytes:
        if written.startswith(b"event: content_block_delta"):
            upstream = json.loads(written.split(b"data: ", 1)[1])["index"]
            assert reindexed(written, upstream, upstream + 3)[:-2] in sent, written
            checked += 1
    assert checked == 24
    # Leg 1's deltas keep their index (nothing came before them) and their bytes.
    for event in leg1[2:4]:
        assert layout(event)[:-2] in sent
    assert [name for name, _ in events].count("content_block_delta") == 2 + 1 + 24  # + the advisor's input


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("via", ["app", "http"])
async def test_text_kept_as_bytes_is_whole_where_it_is_read_again(via: str, stream: bool, split: str) -> None:
    # The executor thinks, writes, and asks: the next executor leg must carry that thinking (with
    # its signature) and text verbatim, the advisor must read the text, and a JSON answer must
    # hold every block whole.
    thought = block(
        0,
        {"type": "thinking", "thinking": "", "signature": ""},
        delta(0, "thinking_delta", "Hmm, "),
        delta(0, "thinking_delta", TRICKY[0]),
        delta(0, "signature_delta", "sig-XYZ"),
    )
    leg1 = asking(thought, texts(1, ["I will ", TRICKY[1], " ask."]))
    leg2 = final(texts(0, ["Done: ", TRICKY[2]]))
    host = BytesHost(
        [[layout(e) for e in leg1], [layout(e) for e in leg2]], [[layout(e) for e in ADVICE]], SPLITS[split]
    )

    status, raw = await ask(host, via, stream=stream)

    assert status == 200
    if stream:
        _, message = check_stream(raw)
        assert message is not None
        content = [b.model_dump(exclude_none=True) for b in message.content]
    else:
        content = json.loads(raw)["content"]
    assert content[0] == {"type": "thinking", "thinking": "Hmm, " + TRICKY[0], "signature": "sig-XYZ"}
    assert content[1] == {"type": "text", "text": "I will " + TRICKY[1] + " ask."}
    assert content[4] == {"type": "text", "text": "Done: " + TRICKY[2]}
    second = host.of("executor")[1]["messages"]
    assert second[1]["role"] == "assistant"
    assert second[1]["content"][:2] == [content[0], content[1]]
    transcript = json.dumps(host.of("advisor")[0]["messages"], ensure_ascii=False)
    assert json.dumps(TRICKY[1], ensure_ascii=False)[1:-1] in transcript


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("via", ["app", "http"])
async def test_a_live_block_that_is_not_text_keeps_its_input(via: str, stream: bool) -> None:
    # The host runs a server tool of its own (web search) before the executor asks: that block is
    # relayed live too, but its input_json deltas are parsed as they come, since the input is
    # read at its content_block_stop.
    search = {"type": "server_tool_use", "id": "srvtoolu_web1", "name": "web_search", "input": {}}
    parts = ['{"query": "we', 'ather in Paris"}']
    found = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_web1", "content": []}
    leg1 = asking(
        block(
            0,
            search,
            *(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}}
                for p in parts
            ),
        ),
        block(1, found),
        texts(2, ["Now ", "I ask."]),
    )
    leg2 = final(texts(0, ["Done."]))
    host = BytesHost(
        [[layout(e) for e in leg1], [layout(e) for e in leg2]], [[layout(e) for e in ADVICE]], SPLITS["per-event"]
    )

    status, raw = await ask(host, via, stream=stream)

    assert status == 200
    used = {**search, "input": {"query": "weather in Paris"}}
    assert host.of("executor")[1]["messages"][1]["content"][:3] == [used, found, {"type": "text", "text": "Now I ask."}]
    if not stream:
        assert json.loads(raw)["content"][:3] == [used, found, {"type": "text", "text": "Now I ask."}]


@pytest.mark.parametrize("via", ["app", "http"])
async def test_deltas_written_another_way_are_parsed_and_encoded_again(via: str) -> None:
    # Spaces after the separators: not Anthropic's layout, so each delta is read as a dict and
    # the client gets it in our compact encoding; the message is the same either way.
    leg1 = asking(texts(0, ["Asking."]))
    leg2 = final(texts(0, [TRICKY[0], TRICKY[1]]))
    messages = []
    for compact in (True, False):
        host = BytesHost(
            [[layout(e, compact=compact) for e in leg1], [layout(e, compact=compact) for e in leg2]],
            [[layout(e, compact=compact) for e in ADVICE]],
            SPLITS["per-event"],
        )
        status, raw = await ask(host, via)
        assert status == 200
        _, message = check_stream(raw)
        assert message is not None
        messages.append([b.model_dump() for b in message.content if b.type == "text"])
        if not compact:
            assert b'"type": "content_block_delta"' not in raw
            assert b'{"type":"content_block_delta","index":3,"delta":{"type":"text_delta"' in raw
    assert messages[0] == messages[1]


BROKEN = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta"\n\n'


@pytest.mark.parametrize("via", ["app", "http"])
async def test_a_broken_delta_of_the_last_leg_reaches_the_client_as_the_host_sent_it(via: str) -> None:
    # The relay does not validate the JSON of a delta it passes on (the host alone would have
    # sent the same bytes); the rest of the stream follows as usual.
    leg1 = asking(texts(0, ["Asking."]))
    leg2 = [layout(e) for e in final(texts(0, ["fine "]))]
    leg2.insert(3, BROKEN)
    host = BytesHost([[layout(e) for e in leg1], leg2], [[layout(e) for e in ADVICE]], SPLITS["per-event"])

    status, raw = await ask(host, via)

    assert status == 200
    assert reindexed(BROKEN, 0, 3) in raw
    assert raw.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("via", ["app", "http"])
async def test_a_broken_delta_that_is_read_again_is_the_legs_failure(via: str, stream: bool) -> None:
    # The leg asks the advisor, so its text is parsed for the next leg: the broken delta is a
    # 502 (JSON) or an api_error event that ends the stream with every block closed (streaming),
    # never an internal error.
    leg1 = [layout(e) for e in asking(texts(0, ["Asking."]))]
    leg1.insert(3, BROKEN)
    host = BytesHost([leg1], [[layout(e) for e in ADVICE]], SPLITS["per-event"])

    status, raw = await ask(host, via, stream=stream)

    assert b"internal error" not in raw
    if stream:
        # Relayed before it was read, as from the host alone; then the stream ends.
        assert status == 200
        assert BROKEN in raw
        events, _ = check_stream(raw.replace(BROKEN, b""))
        assert events[-1][0] == "error"
        assert events[-1][1]["error"]["type"] == "api_error"
    else:
        assert status == 502
        assert json.loads(raw)["error"]["type"] == "api_error"
    assert host.of("advisor") == []


@pytest.mark.parametrize("via", ["app", "http"])
async def test_a_router_streams_dicts_even_for_a_leg_that_takes_raw_deltas(via: str) -> None:
    # Leg.raw_deltas changes what batches()/push() may hand over, never the protocol's stream().
    stream = [layout(e) for e in final(texts(0, ["one ", "two"]), texts(1, [TRICKY[2]]))]
    body = {"model": "exec", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = [(b"x-advisor-leg", b"executor")]
    seen = []
    for raw_deltas in (True, False):
        host = BytesHost([stream], [], SPLITS["7-byte"])
        leg = Leg("executor", body, headers, {"type": "http", "path": "/v1/messages"}, raw_deltas=raw_deltas)
        if via == "app":
            seen.append([e async for e in AppRouter(host.app).stream(leg)])
            continue
        async with uvicorn_server(host.app) as url:
            router = HTTPRouter(url)
            seen.append([e async for e in router.stream(leg)])
            await router.aclose()
    assert all(type(e) is dict for e in seen[0])
    assert seen[0] == seen[1] == [json.loads(e.split(b"data: ", 1)[1]) for e in stream]


def multi_line(event: dict[str, Any]) -> bytes:
    """A legal SSE event whose JSON is split over two ``data:`` lines (joined with a newline,
    which JSON reads as whitespace): in Anthropic's layout up to the index, but not one line."""
    data = json.dumps(event, separators=(",", ":"))
    cut = data.index('"delta"')
    return f"event: {event['type']}\ndata: {data[:cut]}\ndata: {data[cut:]}\n\n".encode()


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("via", ["app", "http"])
async def test_a_delta_over_two_data_lines_is_parsed_and_encoded_again(via: str, split: str) -> None:
    # Relayed as its bytes, the second data line would reach the client as a field of its own:
    # only a delta on one data line goes on raw; this one is read and written in our layout.
    leg1 = asking(texts(0, ["Asking."]))
    leg2 = final(texts(0, [TRICKY[1], " and ", TRICKY[2]]))
    written = [multi_line(e) if e["type"] == "content_block_delta" else layout(e) for e in leg2]
    host = BytesHost([[layout(e) for e in leg1], written], [[layout(e) for e in ADVICE]], SPLITS[split])

    status, raw = await ask(host, via)

    assert status == 200
    _, message = check_stream(raw)
    assert message is not None
    assert [b.text for b in message.content[3:]] == [TRICKY[1] + " and " + TRICKY[2]]  # type: ignore[union-attr]
    assert b'\n"delta"' not in raw
