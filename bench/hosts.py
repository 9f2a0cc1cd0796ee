"""The hosts the bench measures against, and the request bodies it sends them.

Every host is a minimal pure-ASGI app with no think time (unless told otherwise), so what the
bench measures is the middleware. ``ModelHost`` is the scripted model of every consult row, its
answers encoded by the test suite's scripted model (``tests/support/upstream.py``), so the bench and the
tests speak one dialect of the protocol.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pydantic_core

from tests.support.openai_backend import chat_message
from tests.support.upstream import Reply, reply_events, reply_message, sse, text, tool_use

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXEC_MODEL = "exec-model"
# A name LiteLLM's provider inference maps to Anthropic, so its advisor leg comes to our backend.
ADVISOR_MODEL = "claude-opus-4-8"
ADVISOR_TOOL = {"type": "advisor_20260301", "name": "advisor", "model": ADVISOR_MODEL}
ADVISOR_CALL_ID = "toolu_01BenchAdvisorCallAbcdef"
FINAL_DELTAS_HEADER = b"x-bench-final-deltas"
"""Overrides ``ModelHost(final_deltas=...)`` for one request (the middleware copies it onto legs)."""
PACED_HEADER = b"x-bench-paced"
"""With any value: the host yields to the event loop after each event, as a host reading each
event off the network does."""

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_ADVICE = "Close the jobs channel once, then wait on the WaitGroup; add a deadline."
_FINAL = "Done: the pool drains on SIGTERM."


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise RuntimeError(f"unexpected {message['type']} while reading the body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


class _Turn:
    """One scripted answer, pre-encoded both ways: SSE chunks (one per event) and a JSON Message.
    With ``text_deltas`` > 1, each text block's text arrives in that many deltas."""

    def __init__(self, model: str, reply: Reply, text_deltas: int = 1) -> None:
        events: list[dict[str, Any]] = []
        for event in reply_events(reply, model):
            delta = event.get("delta", {})
            if delta.get("type") == "text_delta" and text_deltas > 1:
                words = delta["text"].split(" ")
                for k in range(text_deltas):
                    piece = {"type": "text_delta", "text": " ".join(words[k::text_deltas]) + " "}
                    events.append({**event, "delta": piece})
            else:
                events.append(event)
        self.sse = [sse(event) for event in events]
        self.json = _dumps(reply_message(reply, model)).encode()


def _chat(message: dict[str, Any], finish_reason: str) -> bytes:
    choice = {"index": 0, "message": message, "finish_reason": finish_reason}
    usage = {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90}
    data = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": EXEC_MODEL}
    return _dumps({**data, "choices": [choice], "usage": usage}).encode()


class ModelHost:
    """A scripted model host. Stateless: the body alone picks the answer.

    ``/v1/messages``: the advisor model gets advice (after ``advisor_delay`` seconds); an executor
    request whose last message answers our advisor call gets the final text (in ``final_deltas``
    deltas, or as many as the ``x-bench-final-deltas`` header says); any other executor request
    gets text + ``tool_use`` of ``advisor``.
    ``/v1/chat/completions`` plays the same executor in OpenAI's format, for LiteLLM's executor
    legs. The host parses each body, as any host does, and sends pre-encoded answers.
    """

    def __init__(self, *, advisor_delay: float = 0.0, final_deltas: int = 1) -> None:
        self.advisor_delay = advisor_delay
        self.calls = 0
        self.final_deltas = final_deltas
        self._finals: dict[int, _Turn] = {}
        call = tool_use("advisor", {}, id=ADVISOR_CALL_ID)
        self.call_advisor = _Turn(EXEC_MODEL, Reply([text("Let me check the plan first."), call], "tool_use"))
        self.advice = _Turn(ADVISOR_MODEL, Reply([text(_ADVICE)]))
        question = tool_use("advisor", {"question": "Close the channel or cancel the context first?"})
        self.chat_call = _chat(chat_message(Reply([question])), "tool_calls")
        self.chat_final = _chat(chat_message(Reply([text(_FINAL)])), "stop")

    def final(self, deltas: int) -> _Turn:
        if deltas not in self._finals:
            words = _FINAL if deltas <= 1 else " ".join(f"w{i}" for i in range(deltas))
            self._finals[deltas] = _Turn(EXEC_MODEL, Reply([text(words)]), deltas)
        return self._finals[deltas]

    def _turn(self, request: dict[str, Any], headers: dict[bytes, bytes]) -> _Turn:
        if request.get("model") == ADVISOR_MODEL:
            return self.advice
        if _answers_advisor_call(request["messages"]):
            deltas = headers.get(FINAL_DELTAS_HEADER)
            return self.final(int(deltas) if deltas else self.final_deltas)
        return self.call_advisor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = json.loads(await read_body(receive))
        self.calls += 1
        if scope["path"].endswith("/chat/completions"):
            answered = any(m["role"] == "tool" for m in request["messages"])
            await send_json(send, self.chat_final if answered else self.chat_call)
            return
        if self.advisor_delay and request.get("model") == ADVISOR_MODEL:
            await anyio.sleep(self.advisor_delay)
        headers = dict(scope["headers"])
        turn = self._turn(request, headers)
        if not request.get("stream"):
            await send_json(send, turn.json)
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        paced = PACED_HEADER in headers
        for chunk in turn.sse:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if paced:
                await anyio.lowlevel.checkpoint()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def send_json(send: Send, body: bytes, status: int = 200) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _answers_advisor_call(messages: list[dict[str, Any]]) -> bool:
    content = messages[-1]["content"]
    return isinstance(content, list) and any(b.get("tool_use_id") == ADVISOR_CALL_ID for b in content)


class EchoHost:
    """Parses the body (``pydantic_core.from_json``) and answers a small fixed JSON Message: the
    pass-through rows' host."""

    def __init__(self) -> None:
        self.last_body = b""
        self.answer = _dumps(reply_message(Reply([text("ok")]), EXEC_MODEL)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.last_body = await read_body(receive)
        pydantic_core.from_json(self.last_body)
        await send_json(send, self.answer)


class ForwardingHost:
    """A gateway in front of an HTTP backend: each request forwarded with ``httpx``, the answer
    relayed as it arrives (like-for-like with LiteLLM, which also talks HTTP to the backend)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"host", b"content-length", b"accept-encoding")]
        request = self.client.build_request("POST", scope["path"], content=body, headers=headers)
        response = await self.client.send(request, stream=True)
        try:
            out = [(k.lower(), v) for k, v in response.headers.raw if k.lower() != b"content-length"]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


_WORDS = (
    "the worker pool drains jobs from a buffered channel and each goroutine returns its result to the "
    "collector while the context carries the deadline so shutdown waits for running work then closes "
    "files handlers retry with backoff and the logger records metrics for every request in the queue"
).split()


def _prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_WORDS, k=words)).capitalize() + "."


def claude_code_body(size: int, *, advisor: bool, stream: bool) -> bytes:
    """A Claude-Code-shaped request of about ``size`` bytes: a system prompt, ten tool definitions
    and a long agentic conversation (assistant text and a tool_use, then a tool_result with a
    file's contents), ending in a tool_result, which is when an executor typically consults."""
    rng = random.Random(20260301)
    names = ["Bash", "Read", "Edit", "Write", "Glob", "Grep", "Task", "TodoWrite", "WebFetch", "NotebookEdit"]
    schema = {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}
    tools = [{"name": name, "description": _prose(rng, 300), "input_schema": schema} for name in names]
    system = [text("You are Claude Code."), text("\n".join(_prose(rng, 30) for _ in range(40)))]
    data = {"model": EXEC_MODEL, "max_tokens": 32000, "stream": stream, "system": system}
    data["tools"] = tools + ([ADVISOR_TOOL] if advisor else [])
    messages: list[dict[str, Any]] = [{"role": "user", "content": [text(_prose(rng, 60))]}]
    total = len(_dumps(data)) + len(_dumps(messages))
    while total < size:
        call = tool_use(
            rng.choice(names), {"file_path": f"/repo/pool/file{len(messages)}.go"}, f"toolu_{len(messages)}"
        )
        code = "\n".join(f"{n:>5}\t{_prose(rng, 5)}" for n in range(rng.randint(20, 120)))
        result = {"type": "tool_result", "tool_use_id": call["id"], "content": code}
        turn = [{"role": "assistant", "content": [text(_prose(rng, 30)), call]}, {"role": "user", "content": [result]}]
        messages += turn
        total += len(_dumps(turn))
    return _dumps({**data, "messages": messages}).encode()


def small_consult_body(stream: bool) -> bytes:
    """One short user message, the advisor as the only tool."""
    message = {"role": "user", "content": "Write a Go worker pool with graceful shutdown."}
    data = {"model": EXEC_MODEL, "max_tokens": 1024, "stream": stream, "messages": [message]}
    return _dumps(data | {"tools": [ADVISOR_TOOL]}).encode()


def small_plain_body() -> bytes:
    """About 1 KB, no advisor anywhere."""
    message = {"role": "user", "content": _prose(random.Random(7), 150)}
    return _dumps({"model": EXEC_MODEL, "max_tokens": 1024, "messages": [message]}).encode()
