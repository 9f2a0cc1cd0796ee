"""Helpers shared by routers: reading a leg's answer (SSE events or one JSON Message)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pydantic_core

from ..accumulate import INPUT_BLOCKS, message_to_events
from ..errors import UpstreamError, status_for_error_type
from ..sse import DELTA_DATA, DELTA_HEAD, DELTA_SSE, RawDelta, SSEDecoder, index_at, parse_event
from .base import Batch


def too_large(limit: int) -> UpstreamError:
    """The failure of a leg whose answer passed ``limit`` bytes (:attr:`Leg.max_bytes`)."""
    return UpstreamError(502, f"the leg's answer is longer than max_leg_bytes ({limit} bytes)")


def event_error(event: dict[str, Any]) -> UpstreamError:
    """An ``error`` stream event as an :class:`UpstreamError` with the status its type implies."""
    inner = event.get("error")
    if not isinstance(inner, dict):
        inner = {"type": "api_error", "message": str(inner)}
    status = status_for_error_type(str(inner.get("type")))
    return UpstreamError(status, {"type": "error", "error": inner})


_HEAD_SIZE = len(DELTA_HEAD)
_DATA_SIZE = len(DELTA_DATA)


def decode_events(
    decoder: SSEDecoder, chunk: bytes, into: list[dict[str, Any] | RawDelta], raw_deltas: bool = False
) -> UpstreamError | None:
    """Decode one chunk of a leg's SSE answer, appending its events to ``into``. Returns the
    leg's failure, if the chunk holds one (an event that is not JSON, or an ``error`` event):
    the events before it are in ``into`` and still the leg's output; nothing after it is read.
    ``raw_deltas``: deltas in Anthropic's own layout (one ``data:`` line) go to ``into`` as
    :data:`RawDelta`."""
    if (
        raw_deltas
        and chunk[:_HEAD_SIZE] == DELTA_HEAD
        # The chunk is that one event, whole (what a host sends per send): one event line, one
        # data line, the blank line, and nothing of an earlier chunk waiting in the decoder.
        and chunk[-2:] == b"\n\n"
        and 10 not in chunk[_HEAD_SIZE:-2]
        and 13 not in chunk
        and decoder.idle
    ):
        index = index_at(chunk, _HEAD_SIZE)
        if index >= 0:
            into.append(RawDelta(index, chunk))
            return None
    for name, data in decoder.feed(chunk):
        # Raw only on one data line: the relay writes it after one "data: ", so a second line
        # would reach the client as a field of its own (the decoder joined them with "\n").
        if raw_deltas and name == "content_block_delta" and data[:_DATA_SIZE] == DELTA_DATA and 10 not in data:
            index = index_at(data, _DATA_SIZE)
            if index >= 0:
                into.append(RawDelta(index, b"%b%b\n\n" % (DELTA_SSE, data)))
                continue
        event = parse_event(name, data)
        if isinstance(event, UpstreamError):
            return event
        if event["type"] == "error":
            return event_error(event)
        into.append(event)
    return None


class AnswerReader:
    """Reads one leg's answer as it arrives: counts every byte against ``limit``
    (:attr:`Leg.max_bytes`) and decodes SSE chunks with :func:`decode_events`."""

    __slots__ = ("decoder", "left", "limit", "raw_deltas")

    def __init__(self, limit: int, raw_deltas: bool = False) -> None:
        self.decoder = SSEDecoder()
        self.limit = limit
        self.left = limit
        self.raw_deltas = raw_deltas

    def count(self, size: int) -> UpstreamError | None:
        """Count ``size`` more bytes read; the leg's failure once they pass ``limit``."""
        self.left -= size
        return too_large(self.limit) if self.left < 0 else None

    def read(self, chunk: bytes, into: Batch) -> UpstreamError | None:
        """Count one chunk of an SSE answer and decode its events into ``into``."""
        return self.count(len(chunk)) or decode_events(self.decoder, chunk, into, self.raw_deltas)


def json_message_events(raw: bytes) -> Iterator[dict[str, Any]]:
    """The host ignored ``stream: true`` and answered one JSON Message: its events, replayed."""
    try:
        message = pydantic_core.from_json(raw)
    except ValueError:
        raise UpstreamError(502, "leg answered 200 with a body that is neither SSE nor JSON") from None
    return message_events(message)


def message_events(message: Any) -> Iterator[dict[str, Any]]:
    """A leg's answer as one Message (``dict``), replayed as the events a stream would carry;
    a 502 if it is not shaped like a Message. Every router reads a whole Message here."""
    problem = _message_problem(message)
    if problem is not None:
        raise UpstreamError(502, f"leg answered 200 with {problem}")
    return message_to_events(message)


# The fields of a block that the replay writes as a delta's text: each must be a string.
_TEXT_FIELDS = {"text": ("text",), "thinking": ("thinking", "signature")}


def _message_problem(message: Any) -> str | None:
    """What makes ``message`` unusable as a Message (types and positions, never its content)."""
    if not isinstance(message, dict) or message.get("type") != "message":
        return "JSON that is not a Message"
    content = message.get("content")
    if content is not None and not isinstance(content, list):
        return f"a Message whose content is a {type(content).__name__}, not a list"
    usage = message.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return f"a Message whose usage is a {type(usage).__name__}, not an object"
    for index, block in enumerate(content or ()):
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str):
            return f"a Message whose content block {index} is not an object with a type"
        for field in _TEXT_FIELDS.get(kind, ()):
            if not isinstance(block.get(field, ""), str):
                return f"a Message whose {kind} block {index} has a {field} that is not a string"
        if kind in INPUT_BLOCKS and not isinstance(block.get("input", {}), dict):
            return f"a Message whose {kind} block {index} has an input that is not an object"
    return None
