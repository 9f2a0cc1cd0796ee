"""The hosts the bench measures against, and the bodies it sends them. ``ModelHost`` answers what the
tests' scripted model (``tests/support/upstream.py``) encodes, once, up front: one dialect for both."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pydantic_core

from tests.support.openai_backend import chat_message
from tests.support.upstream import Reply, reply_events, reply_message, sse, text, tool_use

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
ROOT = Path(__file__).resolve().parent.parent
EXEC_MODEL = "exec-model"
ADVISOR_MODEL = "claude-opus-4-8"  # LiteLLM maps this name to Anthropic: its advisor leg comes here
ADVISOR_TOOL = {"type": "advisor_20260301", "name": "advisor", "model": ADVISOR_MODEL}
ADVISOR_CALL_ID = "toolu_01BenchAdvisorCallAbcdef"
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_FINAL = "Done: the pool drains on SIGTERM."


async def read_body(receive: Callable[[], Awaitable[Any]]) -> bytes:
    """The whole body, joined once (a 1 MB body comes in 16 chunks)."""
    chunks = [message := await receive()]
    while message.get("more_body", False):
        chunks.append(message := await receive())
    return b"".join(m.get("body", b"") for m in chunks)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _encode(model: str, reply: Reply, deltas: int = 1) -> tuple[list[bytes], bytes]:
    """``reply`` as SSE chunks, one per event (each text delta split into ``deltas``), and as JSON."""
    events: list[dict[str, Any]] = []
    for event in reply_events(reply, model):
        if deltas == 1 or event.get("delta", {}).get("type") != "text_delta":
            events.append(event)
            continue
        words = event["delta"]["text"].split(" ")
        pieces = [{"type": "text_delta", "text": " ".join(words[k::deltas]) + " "} for k in range(deltas)]
        events += [{**event, "delta": piece} for piece in pieces]
    return [sse(event) for event in events], _dumps(reply_message(reply, model))


def _chat(reply: Reply, finish_reason: str) -> bytes:
    choice = {"index": 0, "message": chat_message(reply), "finish_reason": finish_reason}
    usage = {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90}
    data = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": EXEC_MODEL}
    return _dumps({**data, "choices": [choice], "usage": usage})


class ModelHost:
    """The scripted model; the body picks the answer. The advisor model gets advice (after
    ``advisor_delay`` s), an executor answering our advisor call the final text (in ``final_deltas``
    deltas), any other executor a call of the advisor; ``/v1/chat/completions`` plays the executor
    for LiteLLM. ``paced``: yield after each event, as a host reading events off the network does."""

    def __init__(self, *, advisor_delay: float = 0.0, final_deltas: int = 1, paced: bool = False) -> None:
        self.advisor_delay, self.paced, self.calls = advisor_delay, paced, 0
        call = tool_use("advisor", {}, id=ADVISOR_CALL_ID)
        self.call_advisor = _encode(EXEC_MODEL, Reply([text("Let me check the plan first."), call], "tool_use"))
        self.advice = _encode(ADVISOR_MODEL, Reply([text("Close the jobs channel once, then wait; add a deadline.")]))
        final = _FINAL if final_deltas == 1 else " ".join(f"w{i}" for i in range(final_deltas))
        self.final = _encode(EXEC_MODEL, Reply([text(final)]), final_deltas)
        question = tool_use("advisor", {"question": "Close the channel or cancel the context first?"})
        self.chat_call, self.chat_final = _chat(Reply([question]), "tool_calls"), _chat(Reply([text(_FINAL)]), "stop")

    def _turn(self, request: dict[str, Any]) -> tuple[list[bytes], bytes]:
        if request.get("model") == ADVISOR_MODEL:
            return self.advice
        content = request["messages"][-1]["content"]
        answered = isinstance(content, list) and any(b.get("tool_use_id") == ADVISOR_CALL_ID for b in content)
        return self.final if answered else self.call_advisor

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = json.loads(await read_body(receive))
        self.calls += 1
        if scope["path"].endswith("/chat/completions"):
            answered = any(m["role"] == "tool" for m in request["messages"])
            return await send_json(send, self.chat_final if answered else self.chat_call)
        if self.advisor_delay and request.get("model") == ADVISOR_MODEL:
            await anyio.sleep(self.advisor_delay)
        events, message = self._turn(request)
        if not request.get("stream"):
            return await send_json(send, message)
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        for chunk in events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if self.paced:
                await anyio.lowlevel.checkpoint()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def send_json(send: Any, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class EchoHost:
    """The pass-through rows' host: parses the body and answers a small fixed JSON Message."""

    def __init__(self) -> None:
        self.last_body = b""
        self.answer = _dumps(reply_message(Reply([text("ok")]), EXEC_MODEL))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.last_body = await read_body(receive)
        pydantic_core.from_json(self.last_body)
        await send_json(send, self.answer)


class ForwardingHost:
    """A gateway in front of an HTTP backend: each request forwarded with ``httpx``, the answer
    relayed as it arrives (like-for-like with LiteLLM, which also talks HTTP to the backend)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = await read_body(receive)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"host", b"content-length", b"accept-encoding")]
        async with self.client.stream("POST", scope["path"], content=body, headers=headers) as response:
            out = [(k.lower(), v) for k, v in response.headers.raw if k.lower() != b"content-length"]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


_WORDS = (
    "the worker pool drains jobs from a buffered channel and each goroutine returns its result to the "
    "collector while the context carries the deadline so shutdown waits for running work then closes "
    "files handlers retry with backoff and the logger records metrics for every request in the queue"
).split()


def _prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_WORDS, k=words)).capitalize() + "."


def claude_code_body(size: int, *, advisor: bool, stream: bool) -> bytes:
    """A Claude-Code-shaped request of about ``size`` bytes: a system prompt, ten tools, then turns
    of text and a tool_use answered by a file's contents, ending in a tool_result."""
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
        n = len(messages)
        call = tool_use(rng.choice(names), {"file_path": f"/repo/pool/file{n}.go"}, f"toolu_{n}")
        code = "\n".join(f"{line:>5}\t{_prose(rng, 5)}" for line in range(rng.randint(20, 120)))
        result = {"type": "tool_result", "tool_use_id": call["id"], "content": code}
        turn = [{"role": "assistant", "content": [text(_prose(rng, 30)), call]}, {"role": "user", "content": [result]}]
        messages += turn
        total += len(_dumps(turn))
    return _dumps({**data, "messages": messages})


def small_consult_body(stream: bool) -> bytes:
    """One short user message, the advisor as the only tool."""
    message = {"role": "user", "content": "Write a Go worker pool with graceful shutdown."}
    data = {"model": EXEC_MODEL, "max_tokens": 1024, "stream": stream, "messages": [message]}
    return _dumps(data | {"tools": [ADVISOR_TOOL]})


def small_plain_body() -> bytes:
    """About 1 KB, no advisor anywhere."""
    message = {"role": "user", "content": _prose(random.Random(7), 150)}
    return _dumps({"model": EXEC_MODEL, "max_tokens": 1024, "messages": [message]})
