"""Helpers shared by the test modules: clients for an in-process app, SSE parsing, common shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx
import httpx2
from anthropic.types.beta import BetaMessage

from .upstream import Reply, Script, reply_events, sse, text, tool_use

ONE_CONSULT = ["text", "server_tool_use", "advisor_tool_result", "text"]
"""The block types of a reply with one consult: words, the call, its result, the answer."""


def block_types(content: Iterable[Any]) -> list[str]:
    """The ``type`` of each content block, whether wire JSON (dicts) or SDK objects."""
    return [block["type"] if isinstance(block, dict) else block.type for block in content]


def consult(script: Script) -> None:
    """The executor asks the advisor once (``toolu_1``), then answers after the advice."""
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    ).advisor(Reply([text("Advice.")]))


def plain_usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    """The ``usage`` of a host's JSON Message without cache tokens."""
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


# --- clients ------------------------------------------------------------------------------------


@asynccontextmanager
async def sdk_for(app: Any) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The Anthropic SDK talking to ``app`` in-process, without retries."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    async with anthropic.AsyncAnthropic(
        api_key="sk-test", base_url="http://testserver", http_client=http, max_retries=0
    ) as sdk:
        yield sdk


async def call(client: anthropic.AsyncAnthropic, streaming: bool, **kwargs: Any) -> BetaMessage:
    """One request through the SDK, streamed or not: the final message either way."""
    client = client.with_options(max_retries=0)
    if streaming:
        async with client.beta.messages.stream(**kwargs) as stream:
            return await stream.get_final_message()
    message = await client.beta.messages.create(**kwargs)
    assert isinstance(message, BetaMessage)
    return message


@asynccontextmanager
async def http_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A raw HTTP client for ``app`` in-process (whole responses, buffered)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield http


async def post(
    app: Any,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    json: Any = None,
    path: str = "/v1/messages",
) -> httpx.Response:
    """One POST to ``app`` with exactly these bytes (or this JSON) and headers."""
    async with http_for(app) as http:
        return await http.post(path, content=content, json=json, headers=headers)


# --- SSE ----------------------------------------------------------------------------------------


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every event in a whole SSE body; each name matches its data's type."""
    events: list[tuple[str, dict[str, Any]]] = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk.strip():
            continue
        name = ""
        data = ""
        for line in chunk.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data += line[len("data: ") :]
        payload = json.loads(data)
        assert payload["type"] == name
        events.append((name, payload))
    return events


def assert_host_stream(raw: bytes, reply: Reply, model: str = "exec") -> None:
    """``raw`` is, byte for byte, the scripted host's own stream of ``reply`` (with its message id)."""
    expected = reply_events(reply, model)
    expected[0]["message"]["id"] = parse_sse(raw)[0][1]["message"]["id"]
    assert raw == b"".join(sse(event) for event in expected)


# --- raw ASGI -----------------------------------------------------------------------------------


async def read_body(receive: Callable[[], Awaitable[Any]]) -> bytes:
    """The whole request body, from every ``http.request`` message up to the last."""
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body", False):
            return body
