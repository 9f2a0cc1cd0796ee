"""The one fake in the test suite: a scripted model behind a real Starlette host.

``scripted_host(script)`` is a Starlette app serving ``POST /v1/messages`` the way an
Anthropic-compatible gateway does (SSE for ``stream: true``, JSON otherwise). Which scripted turn
answers a request is decided by its ``x-advisor-leg`` header (``executor``/``advisor``; none
counts as ``direct``). Every request is recorded, so tests can assert on the exact legs the host
received.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from advisor_middleware.demo_cache import ImplicitPrefixCache, PromptCache


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(name: str, input: dict[str, Any] | None = None, id: str | None = None) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": id or "toolu_" + uuid.uuid4().hex[:16],
        "name": name,
        "input": input or {},
    }


def thinking(value: str, signature: str = "sig-abc") -> dict[str, Any]:
    return {"type": "thinking", "thinking": value, "signature": signature}


@dataclass
class Reply:
    """One model turn: these blocks, streamed as an Anthropic stream."""

    blocks: list[dict[str, Any]]
    stop_reason: str = "end_turn"
    input_tokens: int = 10
    output_tokens: int = 5
    cache_read: int = 0
    cache_creation: int = 0
    cache_creation_by_ttl: dict[str, int] | None = None
    """``usage.cache_creation``, when the host reports it."""
    delay: float = 0.0
    """Seconds before the response starts."""
    gap: float = 0.0
    """Seconds between events."""
    hang_after: int | None = None
    """Stop sending (without ending the response) after this many events, for `hang` seconds."""
    hang: float = 0.0
    drop_after: int | None = None
    """End the response after this many events, without message_stop."""
    json_only: bool = False
    """Answer with one JSON Message even when asked to stream (some gateways do)."""


@dataclass
class Fail:
    """A non-200 answer."""

    status: int
    error_type: str = "api_error"
    message: str = "scripted failure"
    raw: bytes | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ErrorEvent:
    """A 200 stream that sends ``after`` events of ``reply`` and then an ``error`` event."""

    reply: Reply
    after: int
    error_type: str = "overloaded_error"
    message: str = "Overloaded"


Turn = Reply | Fail | ErrorEvent


@dataclass
class Recorded:
    role: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    query: str = ""


@dataclass
class Script:
    turns: dict[str, deque[Turn]] = field(default_factory=lambda: defaultdict(deque))
    model_turns: dict[str, deque[Turn]] = field(default_factory=dict)
    """Turns for requests that name a model, whatever their role (see ``model``)."""
    requests: list[Recorded] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    """Roles of legs whose handler ran to the end (not cancelled)."""
    cancelled: list[str] = field(default_factory=list)
    streamed: list[str] = field(default_factory=list)
    """Roles of legs whose stream generator began (it then finishes or is cancelled)."""
    cache: PromptCache | ImplicitPrefixCache | None = None
    """Bills the input of every leg but the executor's like a provider's prompt cache, when set."""
    billed: list[dict[str, Any]] = field(default_factory=list)
    """What ``cache`` billed each of those legs, in order."""

    def executor(self, *turns: Turn) -> Script:
        self.turns["executor"].extend(turns)
        return self

    def advisor(self, *turns: Turn) -> Script:
        self.turns["advisor"].extend(turns)
        return self

    def direct(self, *turns: Turn) -> Script:
        self.turns["direct"].extend(turns)
        return self

    def model(self, name: str, *turns: Turn) -> Script:
        """Requests for model ``name`` get these turns, in order, instead of their role's."""
        self.model_turns.setdefault(name, deque()).extend(turns)
        return self

    def of(self, role: str) -> list[Recorded]:
        return [r for r in self.requests if r.role == role]


def sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def reply_usage(reply: Reply, output_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": reply.cache_creation,
        "cache_read_input_tokens": reply.cache_read,
        "output_tokens": output_tokens,
    }
    if reply.cache_creation_by_ttl is not None:
        usage["cache_creation"] = reply.cache_creation_by_ttl
    return usage


def billed(reply: Reply, usage: dict[str, Any]) -> Reply:
    """``reply`` with the input usage a prompt cache billed."""
    return replace(
        reply,
        input_tokens=usage["input_tokens"],
        cache_read=usage["cache_read_input_tokens"],
        cache_creation=usage["cache_creation_input_tokens"],
        cache_creation_by_ttl=usage.get("cache_creation"),
    )


def reply_events(reply: Reply, model: str) -> list[dict[str, Any]]:
    usage = reply_usage(reply, 1)
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_" + uuid.uuid4().hex[:20],
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            },
        }
    ]
    for i, block in enumerate(reply.blocks):
        kind = block["type"]
        if kind == "text":
            events.append({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
            events.append(
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "text_delta", "text": block["text"]},
                }
            )
        elif kind == "thinking":
            events.append(
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                }
            )
            events.append(
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "thinking_delta", "thinking": block["thinking"]},
                }
            )
            events.append(
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "signature_delta", "signature": block["signature"]},
                }
            )
        elif kind == "tool_use":
            events.append({"type": "content_block_start", "index": i, "content_block": {**block, "input": {}}})
            raw = json.dumps(block["input"])
            events.append(
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": raw[:3]},
                }
            )
            events.append(
                {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": raw[3:]},
                }
            )
        else:
            events.append({"type": "content_block_start", "index": i, "content_block": block})
        events.append({"type": "content_block_stop", "index": i})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        }
    )
    events.append({"type": "message_stop"})
    return events


def reply_message(reply: Reply, model: str) -> dict[str, Any]:
    return {
        "id": "msg_" + uuid.uuid4().hex[:20],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": reply.blocks,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": reply_usage(reply, reply.output_tokens),
    }


def scripted_host(script: Script) -> Starlette:
    async def messages(request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw)
        role = request.headers.get("x-advisor-leg", "direct")
        script.requests.append(Recorded(role, dict(request.headers), body, raw, request.url.query))
        model = str(body.get("model"))
        queue = script.model_turns[model] if model in script.model_turns else script.turns[role]
        if not queue:
            return JSONResponse(
                {"type": "error", "error": {"type": "api_error", "message": f"no scripted {role} turn left"}},
                status_code=500,
            )
        turn = queue.popleft()
        if isinstance(turn, Fail):
            await anyio.sleep(turn.delay)
            if turn.raw is not None:
                return Response(turn.raw, status_code=turn.status, headers=turn.headers)
            return JSONResponse(
                {"type": "error", "error": {"type": turn.error_type, "message": turn.message}},
                status_code=turn.status,
                headers=turn.headers,
            )
        reply = turn.reply if isinstance(turn, ErrorEvent) else turn
        if script.cache is not None and role != "executor":  # a LiteLLM deployment's legs come unmarked
            script.billed.append(script.cache.usage(body))
            reply = billed(reply, script.billed[-1])
        if not body.get("stream") or reply.json_only:
            await anyio.sleep(reply.delay)
            script.finished.append(role)
            return JSONResponse(reply_message(reply, model))
        events = reply_events(reply, model)
        if isinstance(turn, ErrorEvent):
            events = [
                *events[: turn.after],
                {"type": "error", "error": {"type": turn.error_type, "message": turn.message}},
            ]

        async def stream() -> AsyncIterator[bytes]:
            script.streamed.append(role)
            try:
                await anyio.sleep(reply.delay)
                for n, event in enumerate(events):
                    if reply.drop_after is not None and n >= reply.drop_after:
                        break
                    if reply.hang_after is not None and n == reply.hang_after:
                        await anyio.sleep(reply.hang)
                    if reply.gap:
                        await anyio.sleep(reply.gap)
                    yield sse(event)
                script.finished.append(role)
            except BaseException:
                script.cancelled.append(role)
                raise

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


ADVISOR_TOOL = {"type": "advisor_20260301", "name": "advisor", "model": "adv-model"}


def host_with_http_middleware(script: Script) -> Starlette:
    """The scripted host behind a ``@app.middleware("http")`` function (Starlette's
    ``BaseHTTPMiddleware``, common in FastAPI gateways): the route runs in a task of its own and
    its body reaches the leg's ``send`` through a memory stream."""
    app = scripted_host(script)

    async def stamp(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["x-host"] = "stamped"
        return response

    app.add_middleware(BaseHTTPMiddleware, dispatch=stamp)
    return app


HOSTS: dict[str, Callable[[Script], Starlette]] = {
    "starlette": scripted_host,
    "http-middleware": host_with_http_middleware,
}
"""The host shapes the disconnect and push tests run against."""


class WithAnswerHeaders:
    """ASGI middleware that adds to every answer of ``app`` headers an Anthropic gateway sends
    (a request id and rate limits, numbered per request from 1) and some that describe the
    body or the connection, which must stay with a leg."""

    DESCRIBING = ("request-id", "anthropic-ratelimit-requests-remaining", "anthropic-organization-id")
    OTHERS = ("set-cookie", "x-internal-route", "content-language", "etag")

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.count += 1
        number = self.count

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                added = [
                    (b"request-id", f"req_{number}".encode()),
                    (b"anthropic-ratelimit-requests-remaining", str(100 - number).encode()),
                    (b"anthropic-organization-id", b"org-1"),
                    (b"set-cookie", b"session=leg"),
                    (b"x-internal-route", b"pool-a"),
                    (b"content-language", b"en"),
                    (b"etag", b'"leg"'),
                ]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
