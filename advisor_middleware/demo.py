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
from typing import Any

import anyio
import pydantic_core

from ._types import Receive, Scope, Send
from .sse import encode_event, encode_json

__all__ = ["DemoGateway", "demo_app"]

_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
_RUN = re.compile(r"\brun:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


class DemoGateway:
    """A scripted Anthropic Messages host (pure ASGI)."""

    def __init__(self, *, delay: float = 0.04, advisor_delay: float = 1.5) -> None:
        self.delay = delay
        self.advisor_delay = advisor_delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/")
        method = scope["method"]
        if method in ("GET", "HEAD") and path in ("", "/"):
            # Claude Code 2.1.197 sends HEAD / as a preflight.
            await _json(send, 200, {"name": "advisor-middleware demo gateway", "messages": "/v1/messages"})
            return
        if method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            await _json(send, 404, _error("not_found_error", f"{method} {scope['path']} is not served here"))
            return
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = pydantic_core.from_json(raw)
        except ValueError:
            await _json(send, 400, _error("invalid_request_error", "body is not valid JSON"))
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            await _json(send, 400, _error("invalid_request_error", "model and messages are required"))
            return
        input_tokens = max(1, len(raw) // 4)
        if path.endswith("count_tokens"):
            await _json(send, 200, {"input_tokens": input_tokens})
            return
        blocks, stop_reason, is_advisor = _script(body)
        message_id = "msg_demo_" + uuid.uuid4().hex[:24]
        output_tokens = sum(max(1, len(pydantic_core.to_json(b)) // 4) for b in blocks)
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        }
        if not body.get("stream"):
            await _json(
                send,
                200,
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": blocks,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                },
            )
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        delay = self.advisor_delay / 8 if is_advisor else self.delay

        async def emit(event: dict[str, Any], pause: float = 0.0) -> None:
            if pause:
                await anyio.sleep(pause)
            await send({"type": "http.response.body", "body": encode_event(event), "more_body": True})

        start_usage = {**usage, "output_tokens": 1}
        await emit(
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            }
        )
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                await emit(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    }
                )
                for piece in _pieces(block["text"]):
                    await emit(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                        delay,
                    )
            else:
                await emit({"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}})
                await emit(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {
                            "type": "input_json_delta",
                            "partial_json": pydantic_core.to_json(block["input"]).decode(),
                        },
                    },
                    delay,
                )
            await emit({"type": "content_block_stop", "index": index})
        await emit(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            }
        )
        await emit({"type": "message_stop"})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def demo_app(*, delay: float = 0.04, advisor_delay: float = 1.5) -> Any:
    """The demo gateway wrapped in ``AdvisorMiddleware`` with its default router."""
    from .middleware import AdvisorMiddleware

    return AdvisorMiddleware(DemoGateway(delay=delay, advisor_delay=advisor_delay), ping_interval=2.0)


def _script(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, bool]:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    names = {str(t.get("name")) for t in tools}
    messages = body["messages"]
    request = _latest_request(messages)
    if not tools and "advisor" in _text(body.get("system")).lower():
        return [{"type": "text", "text": _advice(request)}], "end_turn", True
    turn = _current_turn(messages)
    advice = next((r for r in turn if r[0] == "advisor"), None)
    if "advisor" in names and advice is None:
        return (
            [
                {"type": "text", "text": "Let me consult the advisor before I answer."},
                {
                    "type": "tool_use",
                    "id": "toolu_demo_" + uuid.uuid4().hex[:20],
                    "name": "advisor",
                    "input": {},
                },
            ],
            "tool_use",
            False,
        )
    command = _RUN.search(request)
    ran = next((r for r in turn if r[0] == "Bash"), None)
    if command and "Bash" in names and ran is None:
        return (
            [
                {"type": "text", "text": f"Running `{command.group(1)}`."},
                {
                    "type": "tool_use",
                    "id": "toolu_demo_" + uuid.uuid4().hex[:20],
                    "name": "Bash",
                    "input": {"command": command.group(1), "description": "Run the requested command"},
                },
            ],
            "tool_use",
            False,
        )
    parts = [f"You asked: “{_first_line(request, 120)}”."]
    if advice is not None:
        parts.append(f"The advisor's advice was: “{_first_line(advice[1], 160)}”")
    if ran is not None:
        parts.append(f"The command printed: {_first_line(ran[1], 120)}")
    parts.append(
        "That is all this scripted demo model can do; point the middleware at a real gateway for real answers."
    )
    return [{"type": "text", "text": " ".join(parts)}], "end_turn", False


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
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})
