"""A scripted OpenAI-compatible model server (``POST /v1/chat/completions``) for LiteLLM tests.

LiteLLM's ``hosted_vllm/<name>`` deployments translate an Anthropic Messages request into a Chat
Completions request and send it here; the answer is translated back. Each model name the server
sees (LiteLLM strips the ``hosted_vllm/`` prefix) has its own queue of scripted turns, written
with the same :class:`~tests.support.upstream.Reply` blocks as the Anthropic-format host (``text`` and
``tool_use``), or a :class:`~tests.support.upstream.Fail`. A model may instead have a ``responder``: a
function of the request body, for clients (Claude Code) whose requests are not known in advance.
Every request is recorded with its raw bytes, so tests can check exactly what LiteLLM sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .upstream import Fail, Recorded, Reply

Turn = Reply | Fail
Responder = Callable[[dict[str, Any]], Reply]


@dataclass
class ChatScript:
    turns: dict[str, deque[Turn]] = field(default_factory=lambda: defaultdict(deque))
    responders: dict[str, Responder] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    """Every request, its ``role`` being the model name the server saw."""

    def model(self, name: str, *turns: Turn) -> ChatScript:
        self.turns[name].extend(turns)
        return self

    def of(self, model: str) -> list[Recorded]:
        return [r for r in self.requests if r.role == model]


def chat_message(reply: Reply) -> dict[str, Any]:
    """``reply``'s blocks as one assistant message: its text, then its tool calls."""
    content = "".join(str(b["text"]) for b in reply.blocks if b["type"] == "text")
    calls = [
        {
            "id": b["id"],
            "type": "function",
            "function": {"name": b["name"], "arguments": json.dumps(b["input"])},
        }
        for b in reply.blocks
        if b["type"] == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _finish_reason(reply: Reply) -> str:
    return {"tool_use": "tool_calls", "max_tokens": "length"}.get(reply.stop_reason, "stop")


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }


def chunks(reply: Reply, model: str) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of ``reply``, streamed the way vLLM does: the role,
    text in two pieces, each tool call's id and name then its arguments in two pieces, the
    finish reason, and a last chunk with the usage (``stream_options.include_usage``)."""
    base = {"id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion.chunk", "created": 0, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    message = chat_message(reply)
    out = [chunk({"role": "assistant", "content": ""})]
    text = message["content"] or ""
    for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
        if piece:
            out.append(chunk({"content": piece}))
    for index, call in enumerate(message.get("tool_calls", [])):
        head = {"index": index, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"]}}
        out.append(chunk({"tool_calls": [{**head, "function": {**head["function"], "arguments": ""}}]}))
        arguments = call["function"]["arguments"]
        for piece in (arguments[:2], arguments[2:]):
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    out.append(chunk({}, _finish_reason(reply)))
    out.append({**base, "choices": [], "usage": _usage(reply)})
    return out


def openai_host(script: ChatScript) -> Starlette:
    async def completions(request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw)
        model = str(body.get("model"))
        script.requests.append(Recorded(model, dict(request.headers), body, raw))
        queue = script.turns[model]
        if queue:
            turn = queue.popleft()
        elif model in script.responders:
            turn = script.responders[model](body)
        else:
            return JSONResponse({"error": {"message": f"no scripted turn left for {model}"}}, status_code=500)
        if isinstance(turn, Fail):
            payload = {"error": {"message": turn.message, "type": turn.error_type, "code": turn.status}}
            return JSONResponse(payload, status_code=turn.status, headers=turn.headers)
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-" + uuid.uuid4().hex[:12],
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": chat_message(turn), "finish_reason": _finish_reason(turn)}],
                    "usage": _usage(turn),
                }
            )

        async def stream() -> AsyncIterator[bytes]:
            for item in chunks(turn, model):
                yield b"data: " + json.dumps(item).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
