"""The hosts the bench measures against, and the request bodies it sends them.

Every host is a minimal pure-ASGI app with zero think time (unless told otherwise), so what the
bench measures is the middleware, not the host. ``ModelHost`` is the scripted model backend of
every consult row: in-process behind the middleware, and over HTTP (``python -m bench.backend``)
for the like-for-like rows, where it also speaks OpenAI chat completions for LiteLLM's executor.
"""

from __future__ import annotations

import json
import random
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pydantic_core

__all__ = [
    "ADVISOR_MODEL",
    "ADVISOR_TOOL",
    "EXEC_MODEL",
    "FINAL_DELTAS_HEADER",
    "PACED_HEADER",
    "BusyHost",
    "EchoHost",
    "ForwardingHost",
    "ModelHost",
    "claude_code_body",
    "read_body",
    "small_consult_body",
    "small_plain_body",
]

from advisor_middleware._types import ASGIApp, Receive, Scope, Send

EXEC_MODEL = "exec-model"
# A name LiteLLM's provider inference maps to Anthropic, so its advisor leg comes to our backend.
ADVISOR_MODEL = "claude-opus-4-8"
ADVISOR_TOOL = {"type": "advisor_20260301", "name": "advisor", "model": ADVISOR_MODEL}
ADVISOR_CALL_ID = "toolu_01BenchAdvisorCallAbcdef"
FINAL_DELTAS_HEADER = b"x-bench-final-deltas"
"""Overrides ``ModelHost(final_deltas=...)`` for one request (the middleware copies it onto legs)."""
PACED_HEADER = b"x-bench-paced"
"""With any value: the host yields to the event loop after each event it sends, as a host does
that reads each event off the network (then no two events are ready at once)."""

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise RuntimeError(f"unexpected {message['type']} while reading the body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def _message(model: str, blocks: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    return {
        "id": "msg_01BenchReply",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 50,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 40,
        },
    }


def _stream(model: str, blocks: list[dict[str, Any]], stop_reason: str, text_deltas: int = 1) -> list[bytes]:
    """The SSE chunks (one per event, as real servers send them) of one model turn; a text block's
    text arrives in ``text_deltas`` deltas."""
    start = {**_message(model, [], stop_reason), "stop_reason": None}
    start["usage"] = {**start["usage"], "output_tokens": 1}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            events.append({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
            words = block["text"].split(" ")
            pieces = (
                [" ".join(words[k::text_deltas]) for k in range(text_deltas)] if text_deltas > 1 else [block["text"]]
            )
            for piece in pieces:
                delta = {"type": "text_delta", "text": piece + " "}
                events.append({"type": "content_block_delta", "index": i, "delta": delta})
        else:
            raw = _dumps(block["input"])
            events.append({"type": "content_block_start", "index": i, "content_block": {**block, "input": {}}})
            for part in (raw[:3], raw[3:]):
                delta = {"type": "input_json_delta", "partial_json": part}
                events.append({"type": "content_block_delta", "index": i, "delta": delta})
        events.append({"type": "content_block_stop", "index": i})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 40},
        }
    )
    events.append({"type": "message_stop"})
    return [f"event: {e['type']}\ndata: {_dumps(e)}\n\n".encode() for e in events]


class _Turn:
    """One scripted answer, pre-encoded both ways (SSE chunks and a JSON Message)."""

    def __init__(self, model: str, blocks: list[dict[str, Any]], stop_reason: str, text_deltas: int = 1) -> None:
        self.sse = _stream(model, blocks, stop_reason, text_deltas)
        self.json = _dumps(_message(model, blocks, stop_reason)).encode()


_ADVICE = "Close the jobs channel once, then wait on the WaitGroup; add a deadline."
_QUESTION = "Should I close the jobs channel or cancel the context first?"
_FINAL = "Done: the pool drains on SIGTERM."


def _chat(message: dict[str, Any], finish_reason: str) -> bytes:
    return _dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_764_000_000,
            "model": EXEC_MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90},
        }
    ).encode()


class ModelHost:
    """A scripted Anthropic-compatible model host. Stateless: the body alone picks the answer.

    ``/v1/messages``: the advisor model gets advice text (after ``advisor_delay`` seconds); an
    executor request whose last message answers our advisor call gets the final text (in
    ``final_deltas`` text deltas, or as many as the ``x-bench-final-deltas`` header says: the relay
    rows stream many); any other executor request gets
    text + ``tool_use`` of ``advisor``. SSE for ``stream: true``, one JSON Message otherwise.
    ``/v1/chat/completions`` plays the same executor in OpenAI's format (LiteLLM's executor legs):
    a call of ``advisor`` until a ``tool`` message is present, then the final text. The host
    parses the body (as any real host does) and sends pre-encoded answers.
    """

    def __init__(self, *, advisor_delay: float = 0.0, final_deltas: int = 1, consults: bool = True) -> None:
        self.advisor_delay = advisor_delay
        self.consults = consults  # False: the executor answers at once (the advisor offered, not called)
        self.calls = 0
        self.call_advisor = _Turn(
            EXEC_MODEL,
            [
                {"type": "text", "text": "Let me check the plan with the advisor first."},
                {"type": "tool_use", "id": ADVISOR_CALL_ID, "name": "advisor", "input": {}},
            ],
            "tool_use",
        )
        self.final_deltas = final_deltas
        self._finals: dict[int, _Turn] = {}
        self.advice = _Turn(ADVISOR_MODEL, [{"type": "text", "text": _ADVICE}], "end_turn")
        arguments = _dumps({"question": _QUESTION})
        call = {"id": "call_bench", "type": "function", "function": {"name": "advisor", "arguments": arguments}}
        self.chat_call = _chat({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")
        self.chat_final = _chat({"role": "assistant", "content": _FINAL}, "stop")

    def final(self, deltas: int) -> _Turn:
        if deltas not in self._finals:
            text = _FINAL if deltas <= 1 else " ".join(f"w{i}" for i in range(deltas))
            self._finals[deltas] = _Turn(EXEC_MODEL, [{"type": "text", "text": text}], "end_turn", deltas)
        return self._finals[deltas]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = json.loads(await read_body(receive))
        self.calls += 1
        if scope["path"].endswith("/chat/completions"):
            messages = request.get("messages") or []
            answered = any(m.get("role") == "tool" for m in messages if isinstance(m, dict))
            await _send_json(send, self.chat_final if answered else self.chat_call)
            return
        if request.get("model") == ADVISOR_MODEL:
            if self.advisor_delay:
                await anyio.sleep(self.advisor_delay)
            turn = self.advice
        elif not self.consults or _answers_advisor_call(request.get("messages")):
            deltas = dict(scope["headers"]).get(FINAL_DELTAS_HEADER)
            turn = self.final(int(deltas) if deltas else self.final_deltas)
        else:
            turn = self.call_advisor
        if not request.get("stream"):
            await _send_json(send, turn.json)
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        paced = PACED_HEADER in dict(scope["headers"])
        for chunk in turn.sse:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if paced:
                await anyio.lowlevel.checkpoint()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_json(send: Send, body: bytes, status: int = 200) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _answers_advisor_call(messages: Any) -> bool:
    if not isinstance(messages, list) or not messages:
        return False
    content = messages[-1].get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" and b.get("tool_use_id") == ADVISOR_CALL_ID
        for b in content
    )


class EchoHost:
    """A host that does nothing but parse the body (``pydantic_core.from_json``, the fastest
    parser here) and answer one small fixed JSON Message: the pass-through rows' host."""

    def __init__(self) -> None:
        self.calls = 0
        self.last_body = b""
        self.answer = _dumps(_message(EXEC_MODEL, [{"type": "text", "text": "ok"}], "end_turn")).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.last_body = await read_body(receive)
        pydantic_core.from_json(self.last_body)
        self.calls += 1
        await _send_json(send, self.answer)


class BusyHost:
    """``ModelHost`` (or any app) behind a gateway that does other work before each request:
    a ``json.loads`` of a fixed 75 KB document, standing in for the auth, routing and logging
    code a real gateway runs. Between two legs of a consult, the middleware's code and data then
    leave the CPU's caches, as they do in front of an HTTP backend, where httpx and the socket I/O
    run in between; with no network in the row to add noise (docs/performance.md, round 8)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        rng = random.Random(7)
        items = [{f"k{i}": "v" * rng.randrange(50), "n": list(range(i % 20))} for i in range(1000)]
        self.document = json.dumps(items)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            json.loads(self.document)
        await self.app(scope, receive, send)


class ForwardingHost:
    """A gateway in front of a real HTTP backend: each request is forwarded with ``httpx`` and the
    answer relayed as it arrives. It makes the in-process rows like-for-like with LiteLLM, which
    also talks HTTP to the backend."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"host", b"content-length", b"accept-encoding")]
        request = self.client.build_request("POST", scope["path"], content=body, headers=headers)
        response = await self.client.send(request, stream=True)
        try:
            out = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in (b"content-length",)]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


# --------------------------------------------------------------------------------------------
# Request bodies.

_WORDS = (
    "the worker pool drains jobs from a buffered channel and each goroutine returns its result to the "
    "collector while the context carries the deadline so shutdown waits for running work then closes "
    "files handlers retry with backoff and the logger records metrics for every request in the queue"
).split()


def _prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _code(rng: random.Random, lines: int) -> str:
    out = []
    for n in range(1, lines + 1):
        indent = "\t" * rng.randint(0, 3)
        out.append(f"{n:>5}\t{indent}{rng.choice(_WORDS)} := {rng.choice(_WORDS)}({rng.choice(_WORDS)}, {n})")
    return "\n".join(out)


def _tools(rng: random.Random) -> list[dict[str, Any]]:
    names = ["Bash", "Read", "Edit", "Write", "Glob", "Grep", "Task", "TodoWrite", "WebFetch", "NotebookEdit"]
    return [
        {
            "name": name,
            "description": "\n".join(_prose(rng, 25) for _ in range(12)),
            "input_schema": {
                "type": "object",
                "properties": {
                    "file_path": {"type": "string", "description": _prose(rng, 12)},
                    "command": {"type": "string", "description": _prose(rng, 12)},
                    "timeout": {"type": "number", "description": _prose(rng, 8)},
                },
                "required": ["file_path"],
                "additionalProperties": False,
            },
        }
        for name in names
    ]


def claude_code_body(size: int, *, advisor: bool, stream: bool, mention_advisor: bool = False) -> bytes:
    """A Claude-Code-shaped request of about ``size`` bytes: system prompt, tool definitions and a
    long agentic conversation (assistant text + tool_use, user tool_result with file contents),
    ending in a tool_result, which is when an executor typically consults."""
    rng = random.Random(20260301)
    system = [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
        {"type": "text", "text": "\n".join(_prose(rng, 30) for _ in range(40)), "cache_control": {"type": "ephemeral"}},
    ]
    tools = _tools(rng)
    if advisor:
        tools.append(dict(ADVISOR_TOOL))
    first = "Refactor the worker pool so shutdown drains in-flight jobs."
    if mention_advisor:
        # Quoted, so the body holds the bytes `"advisor` (an escaped quote, then the word): the
        # scan's needle, which prose alone does not match. A key named so in a file, say.
        first += ' Do not use the advisor for this one, and keep the "advisor" key in config.json.'
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": _prose(rng, 60)}, {"type": "text", "text": first}]}
    ]
    data: dict[str, Any] = {
        "model": EXEC_MODEL,
        "max_tokens": 32000,
        "stream": stream,
        "system": system,
        "tools": tools,
        "messages": messages,
        "metadata": {"user_id": "user_bench_session_0001"},
    }
    total = len(_dumps(data))
    n = 0
    while total < size:
        n += 1
        call_id = f"toolu_01Bench{n:08d}"
        name = rng.choice(["Read", "Bash", "Grep", "Edit"])
        assistant = {
            "role": "assistant",
            "content": [
                {"type": "text", "text": _prose(rng, rng.randint(10, 60))},
                {
                    "type": "tool_use",
                    "id": call_id,
                    "name": name,
                    "input": {"file_path": f"/repo/internal/pool/file{n}.go", "command": _prose(rng, 6)},
                },
            ],
        }
        result = {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call_id, "content": _code(rng, rng.randint(20, 120))}],
        }
        messages += [assistant, result]
        total += len(_dumps(assistant)) + len(_dumps(result)) + 2
    return _dumps(data).encode()


def small_consult_body(stream: bool) -> bytes:
    """The shape LiteLLM's benchmark used: one short user message, the advisor as the only tool."""
    data = {
        "model": EXEC_MODEL,
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": "Write a Go worker pool with graceful shutdown."}],
        "tools": [ADVISOR_TOOL],
    }
    return _dumps(data).encode()


def small_plain_body() -> bytes:
    """About 1 KB, no advisor anywhere."""
    rng = random.Random(7)
    data = {"model": EXEC_MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": _prose(rng, 150)}]}
    return _dumps(data).encode()
