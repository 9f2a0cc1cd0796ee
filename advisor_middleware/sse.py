"""Server-sent events: an incremental bytes-level decoder, the encoder we answer with, and
:class:`RawDelta`, a delta relayed as the bytes it came in.

The decoder splits on the three SSE line endings on *bytes* (never ``str.splitlines``, which
also breaks on U+2028/U+0085 inside JSON) and keeps a partial line across
chunks, so a multibyte character split between two ``http.response.body`` messages is safe.
"""

from __future__ import annotations

from typing import Any, final

import orjson
import pydantic_core

from .errors import UpstreamError

__all__ = [
    "DELTA_DATA",
    "DELTA_HEAD",
    "DELTA_SSE",
    "RawDelta",
    "SSEDecoder",
    "encode_event",
    "encode_json",
    "index_at",
    "parse_event",
    "raw_delta_at",
    "raw_delta_event",
]


def encode_json(data: Any) -> bytes:
    """Compact JSON (no spaces, newlines escaped, so it fits on one ``data:`` line). ``orjson``
    is the faster encoder of a long conversation; ``pydantic_core.to_json`` takes what orjson
    refuses (integers over 64 bits)."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return pydantic_core.to_json(data)


# The line before the data of each event type we send, encoded once.
_EVENT_LINES = {
    kind: b"event: " + kind.encode() + b"\ndata: "
    for kind in (
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "error",
    )
}


# The event line of each type Anthropic streams, to its name: a lookup, not a decode.
_NAMES = {b"event: " + kind.encode(): kind for kind in (*_EVENT_LINES, "ping")}


def encode_event(data: dict[str, Any]) -> bytes:
    """``event: <type>`` plus one ``data:`` line, the shape Anthropic streams use."""
    kind = data["type"]
    try:
        head = _EVENT_LINES[kind]
    except (KeyError, TypeError):  # a type of its own (TypeError: not even a string)
        head = b"event: " + str(kind).encode() + b"\ndata: "
    return head + encode_json(data) + b"\n\n"


class SSEDecoder:
    """Feed bytes, get ``(event_name, data)`` pairs for each complete event, ``data`` as bytes
    (``pydantic_core.from_json`` takes them as they are; decoding first costs a copy).

    Follows the WHATWG field rules: ``data:`` lines are joined with ``\\n``, one leading space
    after the colon is dropped, comment lines (``:``) and unknown fields are ignored, and an
    event with no data is not dispatched.
    """

    __slots__ = ("_partial", "_pending_cr", "idle")

    def __init__(self) -> None:
        # The start of an event that has not ended yet, in the pieces it came in: joined only
        # once its end arrives, so a long event split over many chunks is copied once.
        self._partial: list[bytes] = []
        self._pending_cr = False
        # Nothing of an earlier chunk is waiting: a chunk that ends with a blank line is whole
        # events. Kept by ``feed`` rather than computed by a property: a router reads it for
        # every chunk of every leg, and the property's call shows on the per-event cost.
        self.idle = True

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        # Byte tests are written `10 in chunk` (10 is "\n", 13 "\r"): with an int, `in` is one
        # memchr, while `b"\r" in chunk` first tries the bytes as an int and formats the
        # TypeError it gets. This runs for every chunk of every leg.
        if not chunk:
            return []  # changes nothing, and must not forget a "\r" that ended the last chunk
        if self._pending_cr:
            self._pending_cr = False
            if chunk[0] == 10:  # the previous chunk ended in "\r", this one starts with "\n": one CRLF
                chunk = chunk[1:]
                if not chunk:
                    self.idle = not self._partial
                    return []
        if 13 in chunk:
            # Rare (Anthropic and most servers use "\n"): make every line end one "\n". A "\r"
            # at the very end may be the first half of a CRLF split between two chunks.
            self._pending_cr = chunk[-1] == 13
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        partial = self._partial
        if partial:
            # An event ends at a blank line: "\n\n" in this chunk, or across the boundary.
            if chunk.find(b"\n\n") < 0 and not (chunk[0] == 10 and partial[-1][-1] == 10):
                partial.append(chunk)
                return []  # idle was already False
            partial.append(chunk)
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
                    name = _NAMES.get(head) or head[7:].decode("utf-8", "replace") or "message"
                    out.append((name, data))
                    continue
            _fields(event, out)
        self.idle = not partial and not self._pending_cr
        return out


def _fields(event: bytes, out: list[tuple[str, bytes]]) -> None:
    """The general field rules over the lines of one event (blank lines inside it included)."""
    name = ""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if not line:
            if data:
                out.append((name or "message", b"\n".join(data)))
                data = []
            name = ""
            continue
        if line[0] == 0x3A:  # ":" comment
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
    except ValueError as exc:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        reason: ValueError = exc
        try:
            # Bytes that are not UTF-8 inside a string: read the way a text decoder reads
            # them (U+FFFD), which is what a client's SSE parser does too.
            event = pydantic_core.from_json(text) if text is not data else None
        except ValueError as again:
            event, reason = None, again
        if event is None:
            if name == "error":
                return {"type": "error", "error": {"type": "api_error", "message": text[:2000]}}
            # The parser's reason is a position ("... at line 1 column 57"); the data itself may
            # be advice or model output, and this message is logged: its size only.
            return UpstreamError(502, f"leg sent an SSE event whose data ({len(data)} bytes) is not JSON: {reason}")
    if not isinstance(event, dict):
        return UpstreamError(502, "leg sent an SSE event whose data is not a JSON object")
    if "type" not in event:
        event["type"] = name
    return event


@final
class RawDelta:
    """A ``content_block_delta`` kept as the SSE event it arrived in (``sse``: ``b"event:
    content_block_delta\ndata: {...}\n\n"``), its ``index`` already read.

    Nearly every event of a stream is one, and most are relayed unchanged and never needed again
    (a leg that ends without a consult): relaying the bytes skips a parse, an accumulator step
    and an encode per event. Only a leg whose ``Leg.raw_deltas`` is set gets them, in place of
    the ``content_block_delta`` dicts of Anthropic's own layout; every other event is a dict.
    Code that takes both tells them apart with ``type(event) is RawDelta``.

    The bytes are not validated: a delta that is not JSON (or repeats its ``index`` key) reaches
    the client as the host wrote it, as it would from the host alone; the relay reads the index
    the layout puts first. One whose text is read again (the leg consulted, or a JSON answer)
    fails the leg there as a 502, as any event that is not JSON does.
    """

    __slots__ = ("index", "sse")

    def __init__(self, index: int, sse: bytes) -> None:
        self.index = index
        self.sse = sse

    def __repr__(self) -> str:
        return f"RawDelta({self.index}, {self.sse!r})"


# How Anthropic (and any JSON encoder that keeps key order and writes no spaces) starts a delta's
# data: the index follows, then a comma (docs/protocol.md §3).
DELTA_SSE = b"event: content_block_delta\ndata: "
DELTA_DATA = b'{"type":"content_block_delta","index":'
DELTA_HEAD = DELTA_SSE + DELTA_DATA
_DATA_AT = len(DELTA_SSE)
_DIGITS_AT = len(DELTA_HEAD)


def index_at(buf: bytes, at: int) -> int:
    """The JSON integer at ``buf[at:]`` that a comma ends, or -1."""
    size = len(buf)
    if size > at + 1 and buf[at + 1] == 44 and 48 <= buf[at] <= 57:  # one digit: nearly every index
        return buf[at] - 48
    end = at
    while end < size and 48 <= buf[end] <= 57:
        end += 1
    # No leading zero (JSON's integers); the comma: the digits are the whole value.
    if end == at or end == size or buf[end] != 44 or buf[at] == 48:
        return -1
    return int(buf[at:end])


# The head of a delta at each of the first indexes, made once: after a consult every delta of
# the executor's text is re-indexed, and formatting the index each time shows on the
# per-event cost.
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
