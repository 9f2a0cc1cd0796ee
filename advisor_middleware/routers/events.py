"""Helpers shared by routers: reading a leg's answer (SSE events or one JSON Message)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import pydantic_core

from ..accumulate import message_to_events
from ..errors import UpstreamError
from ..sse import SSEDecoder

# Anthropic error types -> the HTTP status they come with (https://docs.anthropic.com/en/api/errors).
_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

MAX_BUFFERED = 32 * 1024 * 1024
"""The most bytes of a leg's non-streamed answer (JSON or an error body) a router buffers."""


def event_error(event: dict[str, Any]) -> UpstreamError:
    """An ``error`` stream event as an :class:`UpstreamError` with the status its type implies."""
    inner = event.get("error")
    if not isinstance(inner, dict):
        inner = {"type": "api_error", "message": str(inner)}
    status = _TYPE_STATUS.get(str(inner.get("type")), 500)
    return UpstreamError(status, {"type": "error", "error": inner})


def parse_event(name: str, data: str | bytes) -> dict[str, Any] | UpstreamError:
    """One decoded SSE event (``name``, ``data``) as a stream event dict, or why it is unusable."""
    try:
        event = pydantic_core.from_json(data)
    except ValueError:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        try:
            # Bytes that are not UTF-8 inside a string: read the way a text decoder reads
            # them (U+FFFD), which is what a client's SSE parser does too.
            event = pydantic_core.from_json(text) if text is not data else None
        except ValueError:
            event = None
        if event is None:
            if name == "error":
                return {"type": "error", "error": {"type": "api_error", "message": text[:2000]}}
            return UpstreamError(502, f"leg sent an SSE event whose data is not JSON: {text[:200]!r}")
    if not isinstance(event, dict):
        return UpstreamError(502, "leg sent an SSE event whose data is not a JSON object")
    if "type" not in event:
        event["type"] = name
    return event


def decode_events(decoder: SSEDecoder, chunk: bytes, into: list[dict[str, Any]]) -> UpstreamError | None:
    """Decode one chunk of a leg's SSE answer, appending its events to ``into``. Returns the
    leg's failure, if the chunk holds one (an event that is not JSON, or an ``error`` event):
    the events before it are in ``into`` and still the leg's output; nothing after it is read."""
    for name, data in decoder.feed(chunk):
        # parse_event inline for a JSON object (parsed once): this runs for every event of
        # every leg (docs/performance.md, step 19).
        try:
            event = pydantic_core.from_json(data)
        except ValueError:
            event = None
        if type(event) is not dict:  # not JSON, not UTF-8, or not an object: parse_event says which
            parsed = parse_event(name, data)
            if isinstance(parsed, UpstreamError):
                return parsed
            event = parsed
        elif "type" not in event:
            event["type"] = name
        if event["type"] == "error":
            return event_error(event)
        into.append(event)
    return None


async def sse_batches(chunks: AsyncIterable[bytes]) -> AsyncIterator[list[dict[str, Any]]]:
    """A leg's SSE answer read chunk by chunk, as groups of events (one per chunk that holds
    any). The leg's failure is raised after the events before it were handed out."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        batch: list[dict[str, Any]] = []
        error = decode_events(decoder, chunk, batch)
        if batch:
            yield batch
        if error is not None:
            raise error


def json_message_events(raw: bytes) -> Iterator[dict[str, Any]]:
    """The host ignored ``stream: true`` and answered one JSON Message: its events, replayed."""
    try:
        message = pydantic_core.from_json(raw)
    except ValueError:
        raise UpstreamError(502, "leg answered 200 with a body that is neither SSE nor JSON") from None
    if not isinstance(message, dict) or message.get("type") != "message":
        raise UpstreamError(502, "leg answered 200 with JSON that is not a Message")
    return message_to_events(message)
