"""Helpers shared by the test modules: clients for an in-process app, SSE parsing, common shapes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import anyio
import httpx
import httpx2
import pytest
from anthropic.lib.streaming._beta_messages import accumulate_event
from anthropic.types.beta import BetaMessage

from advisor_middleware._types import Message, Receive
from advisor_middleware.check import index_problem, order_problem

from .upstream import ADVISOR_TOOL, Reply, Script, reply_events, sse, text, tool_use

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


# --- message and block shapes as clients send them ----------------------------------------------


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def system(content: Any) -> dict[str, Any]:
    return {"role": "system", "content": content}


def tool_result(tool_use_id: str, content: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}


def srv(srv_id: str) -> dict[str, Any]:
    """An advisor call as the client replays it."""
    return {"type": "server_tool_use", "id": srv_id, "name": "advisor", "input": {}}


def result(srv_id: str, content: Any) -> dict[str, Any]:
    return {"type": "advisor_tool_result", "tool_use_id": srv_id, "content": content}


def advice(value: str) -> dict[str, Any]:
    return {"type": "advisor_result", "text": value}


ADDITION = {"type": "tool_addition", "tool": {"type": "tool_reference", "name": "advisor"}}
REMOVAL = {"type": "tool_removal", "tool": {"type": "tool_reference", "name": "advisor"}}
SECRET = "EqQBCkYIBRgCIiQ5ZjE0SECRETBLOB"
"""The ``encrypted_content`` of a redacted result: no model may ever be sent it."""
REDACTED = {"type": "advisor_redacted_result", "encrypted_content": SECRET}
BASH = {
    "name": "Bash",
    "description": "Run a command.",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
}


def request_body(messages: list[Any], **overrides: Any) -> dict[str, Any]:
    """A Messages request with a client tool (``Bash``) and the advisor tool."""
    return {"model": "exec", "max_tokens": 1024, "messages": messages, "tools": [BASH, ADVISOR_TOOL], **overrides}


def reminder(value: str) -> dict[str, Any]:
    return {"type": "text", "text": f"<system-reminder>\n{value}\n</system-reminder>"}


def advisor_pair(srv_id: str, content: Any) -> list[dict[str, Any]]:
    """An advisor call and its result, as a client replays them."""
    return [srv(srv_id), result(srv_id, content)]


def is_advisor_block(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind in ("tool_addition", "tool_removal"):
        return (block.get("tool") or {}).get("name") == "advisor"
    return kind == "advisor_tool_result" or (kind == "server_tool_use" and block.get("name") == "advisor")


def expected_blocks(messages: list[Any]) -> list[Any]:
    """The client's non-advisor blocks in order, as the executor should get them."""
    out: list[Any] = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append(reminder(content) if message["role"] == "system" else {"type": "text", "text": content})
            continue
        for block in content:
            if is_advisor_block(block):
                continue
            if message["role"] == "system" and block.get("type") == "text":
                out.append(reminder(block["text"]))
            else:
                out.append(block)
    return out


def rendered_blocks(messages: list[Any]) -> list[Any]:
    """The blocks of rendered messages that came from the client: the synthesised advisor calls,
    their results and orphaned advice (as text) left out."""
    advisor_ids = {
        b["id"]
        for m in messages
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_use" and b.get("name") == "advisor"
    }
    out: list[Any] = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"type": "text", "text": content})
            continue
        for block in content:
            if block.get("type") == "tool_use" and block.get("id") in advisor_ids:
                continue
            if block.get("type") == "tool_result" and block.get("tool_use_id") in advisor_ids:
                continue
            if block.get("type") == "text" and block["text"].startswith("[Earlier advisor response]\n"):
                continue
            out.append(block)
    return out


def strip_cache_control(blocks: list[Any]) -> list[Any]:
    return [{k: v for k, v in b.items() if k != "cache_control"} for b in blocks]


def messages_bytes(raw: bytes) -> str:
    """The ``messages`` array of a recorded leg, serialised compactly in the order it was sent."""
    return json.dumps(json.loads(raw)["messages"], separators=(",", ":"), ensure_ascii=False)


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


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands ``body`` (already read) over as one message, then defers to ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# --- waiting ------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``condition``; return the seconds it took, or fail after ``within`` seconds."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            pytest.fail(f"{what}: not within {within} s")
        await anyio.sleep(0.005)
    return time.monotonic() - start


# --- the stream protocol ------------------------------------------------------------------------


def assert_stream_rules(events: list[tuple[str, dict[str, Any]]]) -> None:
    """``events`` keep the event-order and indices rules (the package's own, which
    ``advisor-middleware check`` holds deployments to): one ``message_start``, first; blocks
    started at 0, 1, 2, ..., deltas and stops naming an open block; ``message_delta`` after the
    last block; ``message_stop`` (or an ``error`` with every block stopped) last."""
    data = [event for _, event in events]
    problem = order_problem(data) or index_problem(data)
    assert problem is None, problem


def check_stream(raw: bytes, *, sdk: bool = True) -> tuple[list[tuple[str, dict[str, Any]]], BetaMessage | None]:
    """Assert that ``raw`` (a whole SSE response body) keeps Anthropic's stream protocol; return
    its events and, when no ``error`` event ended it (and ``sdk``), the message the SDK's
    accumulator built.

    Exactly one ``message_start``, first; block indices start at 0 and rise by one; every
    ``content_block_start`` is closed by one ``content_block_stop`` and deltas and stops name an
    open block; nothing follows ``message_stop`` (which must be last) or ``error`` (which may end
    the stream instead, with every block closed); pings may come anywhere after the start.
    """
    events = parse_sse(raw)
    assert events, "empty stream"
    assert_stream_rules(events)
    names = [name for name, _ in events]
    if names[-1] == "error":
        return events, None
    assert names.count("message_delta") == 1, names
    if not sdk:
        return events, None
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    for _, event in events:
        snapshot = accumulate_event(
            event=event,  # type: ignore[arg-type]
            current_snapshot=snapshot,
            json_bufs=json_bufs,
            request_headers=httpx2.Headers(),
        )
    return events, BetaMessage.model_validate(snapshot.to_dict())


# --- raw ASGI requests and shared servers ---------------------------------------------------------

ADVISOR_PARAMS: dict[str, Any] = {
    "model": "exec",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Plan the migration."}],
    "tools": [ADVISOR_TOOL],
}
"""A minimal advisor request: one user turn, the advisor tool alone."""


def answer_content(response: httpx.Response, streaming: bool) -> list[dict[str, Any]]:
    """The answer's content blocks as dicts: a stream checked by :func:`check_stream` and
    accumulated by the SDK, or the JSON Message's own."""
    if not streaming:
        content: list[dict[str, Any]] = response.json()["content"]
        return content
    _, message = check_stream(response.content)
    assert message is not None, "the stream ended in an error event"
    return [block.model_dump(exclude_none=True) for block in message.content]


_PLAIN_RECORD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def logged_fields(record: logging.LogRecord) -> str:
    """The fields a log record carries beyond a plain one's (``extra``), as text to scan."""
    return repr({key: value for key, value in vars(record).items() if key not in _PLAIN_RECORD})


def http_scope(headers: list[tuple[bytes, bytes]], **overrides: Any) -> dict[str, Any]:
    """The scope a server gives ``POST /v1/messages`` with these headers (``overrides`` win)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/messages",
        "raw_path": b"/v1/messages",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    scope.update(overrides)
    return scope


class Slot:
    """An ASGI app that hands HTTP requests to whatever app the current test put in ``app``: one
    server for a whole module instead of one per test (uvicorn takes ~0.15 s to stop)."""

    app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.app(scope, receive, send)
