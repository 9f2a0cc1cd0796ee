"""Server-sent events: an incremental decoder, the encoder, and :class:`RawDelta`.

The decoder splits lines on *bytes* (``str.splitlines`` also breaks on U+2028 inside JSON) and
keeps a partial event across chunks, so a character split between two chunks is safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, final

import orjson
import pydantic_core

from .errors import UpstreamError


def encode_json(data: Any) -> bytes:
    """Compact JSON on one line: ``orjson`` (the faster), or ``pydantic_core`` for what orjson
    refuses (integers over 64 bits)."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return pydantic_core.to_json(data)


def encode_event(data: dict[str, Any]) -> bytes:
    """``event: <type>`` plus one ``data:`` line, the shape Anthropic streams use."""
    return b"event: %b\ndata: %b\n\n" % (str(data["type"]).encode(), encode_json(data))


class SSEDecoder:
    """Feed bytes, get ``(event_name, data)`` pairs for each complete event, ``data`` as bytes
    (``pydantic_core.from_json`` takes them as they are), by the WHATWG field rules.
    """

    __slots__ = ("_partial", "_pending_cr", "idle")

    def __init__(self) -> None:
        # The start of an unfinished event, in its pieces: joined once, when its end arrives.
        self._partial: list[bytes] = []
        self._pending_cr = False
        # Nothing of an earlier chunk is waiting (an attribute, not a property: read per chunk).
        self.idle = True

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        # `10 in chunk` (10 is "\n", 13 "\r") is one memchr; `b"\r" in chunk` costs more.
        if self._pending_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the "\n" of a CRLF whose "\r" ended the previous chunk
            self._pending_cr = False
        if not chunk:
            self.idle = not self._partial and not self._pending_cr
            return []
        # A "\r" at the very end may be the first half of a CRLF split between two chunks.
        self._pending_cr = chunk[-1] == 13
        if 13 in chunk:
            # Rare (Anthropic and most servers use "\n"): make every line end one "\n".
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        partial = self._partial
        if partial:
            # An event ends at a blank line: "\n\n" in this chunk, or across the boundary.
            partial.append(chunk)
            if chunk.find(b"\n\n") < 0 and not (chunk[0] == 10 and partial[-2][-1] == 10):
                return []  # idle was already False
            chunk = b"".join(partial)
            partial.clear()
        events = chunk.split(b"\n\n")
        rest = events.pop()  # after the last blank line: the start of the next event, if any
        if rest:
            partial.append(rest)
        out: list[tuple[str, bytes]] = []
        for event in events:
            # Anthropic's shape: one event line, one data line (docs/protocol.md §3).
            if event[:7] == b"event: ":
                head, sep, data = event.partition(b"\ndata: ")
                if sep and 10 not in head and 10 not in data:
                    out.append((head[7:].decode("utf-8", "replace") or "message", data))
                    continue
            _fields(event, out)
        self.idle = not partial and not self._pending_cr
        return out


def _fields(event: bytes, out: list[tuple[str, bytes]]) -> None:
    """The general field rules over the lines of one event (no blank line but at its ends)."""
    name = ""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if not line or line[0] == 0x3A:  # ":" comment
            continue
        field, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if data:
        out.append((name or "message", b"\n".join(data)))


def parse_event(name: str, data: str | bytes) -> dict[str, Any] | UpstreamError:
    """One decoded SSE event (``name``, ``data``) as a stream event dict, or why it is unusable."""
    try:
        event = pydantic_core.from_json(data)
    except ValueError:
        # Bytes that are not UTF-8 inside a string: read as a client's SSE parser reads them (U+FFFD).
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        try:
            event = pydantic_core.from_json(text)
        except ValueError as reason:
            if name == "error":
                return {"type": "error", "error": {"type": "api_error", "message": text[:2000]}}
            # The reason is a position; the data may be model output, and this is logged: its size only.
            return UpstreamError(502, f"leg sent an SSE event whose data ({len(data)} bytes) is not JSON: {reason}")
    if not isinstance(event, dict):
        return UpstreamError(502, "leg sent an SSE event whose data is not a JSON object")
    if "type" not in event:
        event["type"] = name
    return event


@final
@dataclass(slots=True, eq=False)
class RawDelta:
    """A ``content_block_delta`` kept as the SSE event it arrived in (``sse``), its ``index`` read.

    Most deltas are relayed unchanged, never parsed (only for a leg with ``Leg.raw_deltas``; tell
    them from dicts with ``type(event) is RawDelta``). One that is not JSON fails the leg (502)
    only if it is read again.
    """

    index: int
    sse: bytes


# How Anthropic (and any JSON encoder that keeps key order and writes no spaces) starts a delta's
# data: the index follows, then a comma (docs/protocol.md §3).
DELTA_SSE = b"event: content_block_delta\ndata: "
DELTA_DATA = b'{"type":"content_block_delta","index":'
DELTA_HEAD = DELTA_SSE + DELTA_DATA
_DATA_AT = len(DELTA_SSE)
_DIGITS_AT = len(DELTA_HEAD)
_INDEX = re.compile(rb"(0|[1-9][0-9]*),")  # a JSON integer (no leading zero), then the comma


def index_at(buf: bytes, at: int) -> int:
    """The JSON integer at ``buf[at:]`` that a comma ends, or -1."""
    if len(buf) > at + 1 and buf[at + 1] == 44 and 48 <= buf[at] <= 57:  # one digit: nearly every index
        return buf[at] - 48
    match = _INDEX.match(buf, at)
    return int(match[1]) if match else -1


# The head of a delta at each of the first indexes, made once: after a consult every delta is
# re-indexed, and formatting the index each time shows on the per-event cost.
_HEADS = [DELTA_HEAD + str(index).encode() for index in range(64)]


def raw_delta_at(delta: RawDelta, index: int) -> RawDelta:
    """The same delta, read at ``index`` (the client's, when a consult came first)."""
    old = delta.index
    end = _DIGITS_AT + (1 if old < 10 else len(str(old)))  # the digits were read canonical
    head = _HEADS[index] if index < 64 else DELTA_HEAD + str(index).encode()
    return RawDelta(index, head + delta.sse[end:])


def raw_delta_event(delta: RawDelta) -> dict[str, Any]:
    """The delta as a stream event dict; an UpstreamError if its data is not a JSON object."""
    event = parse_event("content_block_delta", delta.sse[_DATA_AT:-2])
    if isinstance(event, UpstreamError):
        raise event
    return event
