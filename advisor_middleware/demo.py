"""The offline demo gateway: an Anthropic-compatible ``/v1/messages`` host with scripted models.

It is a host like any other: ``AdvisorMiddleware`` wraps it and runs every leg through it with
the default ``AppRouter``. Its scripted model reads the request the way a model would:

* offered a tool named ``advisor`` and not yet advised in the current turn, it says so and calls it;
* offered no tools and given an advisor's system prompt, it writes advice about the transcript;
* asked to ``run: <command>`` with a ``Bash`` tool available, it calls ``Bash`` once advised;
* otherwise it answers, quoting the advice it got.

Any model name is accepted (Claude Code sends its own aliases). Deltas are paced by ``delay`` so a
person watching sees text stream and the advisor think; tests use ``delay=0``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pydantic_core

from ._types import Receive, Scope, Send
from .accumulate import message_to_events
from .demo_cache import PromptCache
from .sse import encode_event, encode_json

__all__ = ["DemoGateway", "paced_events", "request_problem", "scripted_reply"]

_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
_RUN = re.compile(r"\brun:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


class DemoGateway:
    """A scripted Anthropic Messages host (pure ASGI). Its advisor's usage is billed by
    ``cache``, Anthropic's prompt-cache rule, so cache breakpoints show as cache reads."""

    def __init__(self, *, delay: float = 0.04, advisor_delay: float = 1.5) -> None:
        self.delay = delay
        self.advisor_delay = advisor_delay
        self.cache = PromptCache()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/")
        method = scope["method"]
        if method in ("GET", "HEAD") and path in ("", "/"):
            # Claude Code sends HEAD / as a preflight (docs/protocol.md §7).
            await _json(send, 200, {"name": "advisor-middleware demo gateway", "messages": "/v1/messages"})
            return
        if method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            await _json(send, 404, _error("not_found_error", f"{method} {scope['path']} is not served here"))
            return
        raw = await _read_body(receive)
        if raw is None:
            return  # the client left
        try:
            body = pydantic_core.from_json(raw)
        except ValueError:
            await _json(send, 400, _error("invalid_request_error", "body is not valid JSON"))
            return
        problem = request_problem(body)
        if problem is not None:
            await _json(send, 400, _error("invalid_request_error", problem))
        elif path.endswith("count_tokens"):
            await _json(send, 200, {"input_tokens": max(1, len(raw) // 4)})
        else:
            await self._reply(body, send)

    async def _reply(self, body: dict[str, Any], send: Send) -> None:
        """The scripted reply to ``body``: one JSON Message, or a paced event stream."""
        reply = scripted_reply(body)
        if _is_advisor(body):
            try:
                reply["usage"].update(self.cache.usage(body))
            except ValueError as exc:  # more breakpoints than Anthropic takes
                await _json(send, 400, _error("invalid_request_error", str(exc)))
                return
        if not body.get("stream"):
            await _json(send, 200, reply)
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        delay = self.advisor_delay / 8 if _is_advisor(body) else self.delay
        async for event in paced_events(reply, delay):
            await send({"type": "http.response.body", "body": encode_event(event), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    """The request's body; None if the client left first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def request_problem(body: Any) -> str | None:
    """Why ``body`` is not a Messages request the demo model can read, naming the field the way
    the middleware does (``messages.2.content: ...``); None if it is one. Its types only: the
    demo answers in Anthropic's error shape, never with a 500."""
    if not isinstance(body, dict):
        return "body: Input should be a valid object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required (a non-empty string)"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages.{index}: Input should be an object with a role"
        if not _blocks_or_text(message.get("content")):
            return f"messages.{index}.content: Input should be a string or a list of content blocks"
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        return "tools: Input should be a list of tools"
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return "stream: Input should be a boolean"
    if body.get("system") is not None and not _blocks_or_text(body["system"]):
        return "system: Input should be a string or a list of content blocks"
    if not all(isinstance(tool, dict) for tool in body.get("tools") or ()):
        return "tools: Input should be a list of objects"
    return None


def _blocks_or_text(content: Any) -> bool:
    return isinstance(content, str) or (isinstance(content, list) and all(isinstance(b, dict) for b in content))


def scripted_reply(body: dict[str, Any]) -> dict[str, Any]:
    """The demo model's answer to a Messages request ``body`` (any model name), as one Message."""
    blocks, stop_reason = _script(body)
    usage = {
        "input_tokens": max(1, len(encode_json(body)) // 4),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": sum(max(1, len(pydantic_core.to_json(b)) // 4) for b in blocks),
    }
    return {
        "id": "msg_demo_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


async def paced_events(message: dict[str, Any], delay: float = 0.0) -> AsyncIterator[dict[str, Any]]:
    """The stream events of ``message``, text in four-word pieces, ``delay`` seconds before each
    delta (so a person watching sees it stream)."""
    for event in message_to_events(message):
        delta = event.get("delta") or {}
        if delta.get("type") == "text_delta":
            for piece in _pieces(delta["text"]):
                await anyio.sleep(delay)
                yield {**event, "delta": {"type": "text_delta", "text": piece}}
            continue
        if event["type"] == "content_block_delta":
            await anyio.sleep(delay)
        yield event


def _is_advisor(body: dict[str, Any]) -> bool:
    """Offered no tools and given an advisor's system prompt: this is an advisor leg."""
    return not body.get("tools") and "advisor" in _text(body.get("system")).lower()


def _script(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    names = {str(t.get("name")) for t in tools}
    messages = body["messages"]
    request = _latest_request(messages)
    if _is_advisor(body):
        return [{"type": "text", "text": _advice(request)}], "end_turn"
    turn = _current_turn(messages)
    advice = next((r for r in turn if r[0] == "advisor"), None)
    if "advisor" in names and advice is None:
        return _calls("Let me consult the advisor before I answer.", "advisor", {})
    command = _RUN.search(request)
    ran = next((r for r in turn if r[0] == "Bash"), None)
    if command and "Bash" in names and ran is None:
        tool_input = {"command": command.group(1), "description": "Run the requested command"}
        return _calls(f"Running `{command.group(1)}`.", "Bash", tool_input)
    parts = [f"You asked: “{_first_line(request, 120)}”."]
    if advice is not None:
        parts.append(f"The advisor's advice was: “{_first_line(advice[1], 160)}”")
    if ran is not None:
        parts.append(f"The command printed: {_first_line(ran[1], 120)}")
    parts.append(
        "That is all this scripted demo model can do; point the middleware at a real gateway for real answers."
    )
    return [{"type": "text", "text": " ".join(parts)}], "end_turn"


def _calls(text: str, name: str, tool_input: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """A reply that says ``text`` and calls the tool ``name``."""
    call = {"type": "tool_use", "id": "toolu_demo_" + uuid.uuid4().hex[:20], "name": name, "input": tool_input}
    return [{"type": "text", "text": text}, call], "tool_use"


def _advice(request: str) -> str:
    topic = _first_line(request, 100) or "this task"
    return (
        f"1. Restate the goal in one line before acting: “{topic}”.\n"
        "2. Do the smallest step that proves progress, then check its output.\n"
        "3. Before finishing, re-read the request and confirm every part is answered."
    )


def _latest_request(messages: list[Any]) -> str:
    # The newest user text that is not a tool result or a system reminder. For the advisor,
    # that is the quoted "[User]" part of the transcript.
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        text = _text(message.get("content"))
        if "=== Transcript ===" in text:
            text = _REMINDER.sub("", text.split("=== Transcript ===", 1)[1])
            users = re.findall(r"\n\[User\]\n(.*?)(?=\n\[|\Z)", text, re.DOTALL)
            real = [u for u in users if u.strip() and not u.lstrip().startswith("(tool result")]
            return real[-1].strip() if real else ""
        text = _REMINDER.sub("", text)
        if text.strip():
            return text.strip()
    return ""


def _current_turn(messages: list[Any]) -> list[tuple[str, str]]:
    """(tool name, result text) of every tool result since the user's latest own words."""
    names: dict[str, str] = {}
    results: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            if isinstance(message, dict) and message.get("role") == "user":
                results = []
            continue
        blocks = [b for b in message["content"] if isinstance(b, dict)]
        if message.get("role") == "assistant":
            for b in blocks:
                if b.get("type") == "tool_use":
                    names[str(b.get("id"))] = str(b.get("name"))
        elif message.get("role") == "user":
            if any(
                b.get("type") == "text" and not str(b.get("text", "")).startswith("<system-reminder>") for b in blocks
            ):
                results = []
            for b in blocks:
                if b.get("type") == "tool_result":
                    results.append((names.get(str(b.get("tool_use_id")), "?"), _text(b.get("content"))))
    return results


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text")) for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        ).strip()
    return ""


def _first_line(text: str, limit: int) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("<")]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [" ".join(words[i : i + 4]) + (" " if i + 4 < len(words) else "") for i in range(0, len(words), 4)]


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


async def _json(send: Send, status: int, data: Any) -> None:
    payload = encode_json(data)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
