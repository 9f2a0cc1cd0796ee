"""Anthropic stream events <-> one Message.

``MessageAccumulator`` builds the Message a stream describes (the JSON response mode, and each
leg's assistant content). It follows the SDK accumulators (docs/protocol.md §3): blocks are
copied at ``content_block_start``, ``input_json_delta`` is parsed at ``content_block_stop`` (an
empty buffer keeps the ``{}`` from the start), ``message_delta`` overwrites ``stop_reason`` and
the usage fields it carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pydantic_core

from .errors import UpstreamError
from .sse import RawDelta, raw_delta_event

USAGE_TOKENS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
"""The token counts of a ``usage`` object, in the order the middleware writes them (docs/protocol.md §4)."""


def token_count(value: Any) -> int:
    """A token count from a host's usage: an integer, else 0 (a host may omit or garble one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def token_counts(usage: Any) -> dict[str, int]:
    """The :data:`USAGE_TOKENS` of ``usage`` (any value), each as :func:`token_count` reads it."""
    usage = usage if isinstance(usage, dict) else {}
    return {key: token_count(usage.get(key)) for key in USAGE_TOKENS}


INPUT_BLOCKS = ("tool_use", "server_tool_use", "mcp_tool_use")
"""The block types whose ``input`` streams as ``input_json_delta``."""


class MessageAccumulator:
    """Feed it a stream's events in order; ``complete()`` (or ``content``) is the Message.

    Deltas given as :class:`~advisor_middleware.sse.RawDelta` (``feed_all``, or appended to
    ``pending``) are kept as they are and parsed only when the content is asked for: a leg that
    ends without a consult never needs its text again.
    """

    __slots__ = ("_json", "_text", "finished", "message", "pending")

    def __init__(self) -> None:
        self.message: dict[str, Any] = {}
        self.pending: list[RawDelta] = []
        """RawDelta deltas not applied yet, in order: the relay appends one for nearly every event."""
        self._json: dict[int, list[str]] = {}
        self._text: dict[tuple[int, str], list[str]] = {}
        """Text and thinking deltas by (index, field), joined at ``content_block_stop``: adding
        each delta to the block's string would copy it every time (quadratic in a long answer)."""
        self.finished = False
        """A ``message_delta`` arrived: the stream told us how it ended (``message_start``
        already carries ``stop_reason: null``, so the key alone proves nothing)."""

    @property
    def content(self) -> list[dict[str, Any]]:
        """The content blocks so far (an UpstreamError if a kept delta turns out malformed)."""
        self.complete()
        return self._content()

    def complete(self) -> dict[str, Any]:
        """The Message so far, every delta applied (an UpstreamError if one is malformed)."""
        if self.pending:
            self._apply_raw()
        self._join_text()
        self._content()
        return self.message

    def _apply_raw(self) -> None:
        # Emptied in place: the relay holds on to the list while it reads a group of events.
        raw = self.pending.copy()
        self.pending.clear()
        for delta in raw:
            try:
                self.feed(raw_delta_event(delta))  # pending is empty meanwhile
            except (TypeError, ValueError, AttributeError, IndexError, KeyError):
                raise UpstreamError(502, "the stream sent a malformed content_block_delta event") from None

    def _content(self) -> list[dict[str, Any]]:
        content = self.message.setdefault("content", [])
        assert isinstance(content, list)
        return content

    def _join_text(self, index: int | None = None) -> None:
        # One block's two keys looked up, not every open block's scanned: a stream may hold
        # thousands of blocks open, and each stop would walk them all.
        keys = list(self._text) if index is None else [(index, "text"), (index, "thinking")]
        for key in keys:
            parts = self._text.pop(key, None)
            if parts is not None:
                self._content()[key[0]][key[1]] = "".join(parts)

    def feed_all(self, events: Iterable[dict[str, Any] | RawDelta]) -> None:
        """Feed a group of events: dicts are fed, RawDelta deltas kept (``pending``)."""
        for event in events:
            if type(event) is RawDelta:
                self.pending.append(event)
            else:
                self.feed(event)

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        # Deltas first: nearly every event is one.
        if kind == "content_block_delta":
            self._delta(event)
        elif kind == "message_start":
            self._start_message(event)
        elif kind == "content_block_start":
            self._start_block(event)
        elif kind == "content_block_stop":
            self._stop_block(event.get("index", -1))
        elif kind == "message_delta":
            self._end_message(event)

    def _delta(self, event: dict[str, Any]) -> None:
        if self.pending:  # kept deltas go first, in order
            self._apply_raw()
        index = event.get("index", -1)
        # Not _content(): a delta before any message_start has no block to go to anyway.
        content = self.message.get("content") or ()
        if not 0 <= index < len(content):
            return
        block = content[index]
        delta = event.get("delta") or {}
        dtype = delta.get("type")
        if dtype == "text_delta" or dtype == "thinking_delta":
            field = "text" if dtype == "text_delta" else "thinking"
            parts = self._text.get((index, field))
            if parts is None:
                parts = self._text[(index, field)] = [block.get(field, "")]
            parts.append(delta.get(field, ""))
        elif dtype == "signature_delta":
            block["signature"] = delta.get("signature", "")
        elif dtype == "input_json_delta":
            self._json.setdefault(index, []).append(delta.get("partial_json", ""))
        elif dtype == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))

    def _start_message(self, event: dict[str, Any]) -> None:
        message = dict(event.get("message") or {})
        message["content"] = [dict(b) for b in message.get("content") or []]
        message["usage"] = dict(message.get("usage") or {})
        self.message = message
        # What a message started again leaves behind is not the new message's.
        self._text.clear()
        self._json.clear()
        self.pending.clear()

    def _start_block(self, event: dict[str, Any]) -> None:
        if self.pending:  # a block started again at an index drops the old block's text
            self._apply_raw()
        block = dict(event.get("content_block") or {})
        content = self._content()
        index = event.get("index", len(content))
        if type(index) is not int or not 0 <= index <= len(content):
            # Blocks open at 0, 1, 2, ... (docs/protocol.md §3): a block may start again where
            # one did, or at the next index, never further (nothing is padded to reach it).
            where = index if type(index) is int else f"of type {type(index).__name__}"
            raise UpstreamError(502, f"the stream started a block at index {where}, not the next one")
        self._text.pop((index, "text"), None)
        self._text.pop((index, "thinking"), None)
        if index == len(content):
            content.append(block)
        else:
            content[index] = block
        if block.get("type") in INPUT_BLOCKS:
            self._json[index] = []

    def _stop_block(self, index: int) -> None:
        self._join_text(index)
        raw = "".join(self._json.pop(index, ()))
        if not raw.strip():
            return  # an empty buffer keeps the input the block started with
        try:
            self._content()[index]["input"] = pydantic_core.from_json(raw)
        except ValueError:
            # Keep what the model sent; the host will judge it on the next request.
            self._content()[index]["input"] = {"_raw": raw}

    def _end_message(self, event: dict[str, Any]) -> None:
        self.finished = True
        self._join_text()
        delta = event.get("delta") or {}
        for key in ("stop_reason", "stop_sequence", "stop_details"):
            if key in delta:
                self.message[key] = delta[key]
        usage = event.get("usage") or {}
        target = self.message.setdefault("usage", {})
        for key, value in usage.items():
            if value is not None or key == "output_tokens":
                target[key] = value


_DELTA_TYPES = {
    "text": "text_delta",
    "thinking": "thinking_delta",
    "signature": "signature_delta",
    "partial_json": "input_json_delta",
}


def message_to_events(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The stream a host would have sent for ``message`` (used when a host answers a streaming
    leg with plain JSON)."""
    usage = dict(message.get("usage") or {})
    start = {k: v for k, v in message.items() if k not in ("content", "stop_reason", "stop_sequence")}
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = {**usage, "output_tokens": 0}
    start.setdefault("type", "message")
    start.setdefault("role", "assistant")
    yield {"type": "message_start", "message": start}
    for index, block in enumerate(message.get("content") or []):
        # The block as it starts, and the values its deltas fill in (field: value).
        btype = block.get("type")
        if btype == "text":
            opened, filled = {**block, "text": ""}, {"text": block.get("text")}
        elif btype == "thinking":
            opened = {"type": "thinking", "thinking": "", "signature": ""}
            filled = {"thinking": block.get("thinking"), "signature": block.get("signature")}
        elif btype in INPUT_BLOCKS:
            opened = {**block, "input": {}}
            filled = {"partial_json": pydantic_core.to_json(block["input"]).decode() if block.get("input") else ""}
        else:
            opened, filled = block, {}
        yield {"type": "content_block_start", "index": index, "content_block": opened}
        for field, value in filled.items():
            if value:
                delta = {"type": _DELTA_TYPES[field], field: value}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")},
        "usage": usage,
    }
    yield {"type": "message_stop"}
