"""The executor's leg bodies as bytes, each leg encoding only the messages the last did not have.

Every executor leg re-sends the whole conversation, and within a request each leg's messages
are the previous leg's plus the executor's answer and the advice (design §4). Encoding the
conversation again costs ~0.8 ms per MB with ``orjson``; the messages already sent keep their
bytes instead (issue 7: "the executor's second leg is the first plus a few appended messages";
docs/performance.md, step 28). The price is one copy of the conversation's JSON held for the
request's duration.
"""

from __future__ import annotations

import operator
import os
from typing import Any

import orjson

from .sse import encode_json

__all__ = ["LegEncoder"]

# Stands for the messages while the rest of a body is encoded; random per process, so no
# caller-supplied string can be taken for it.
_SLOT = "advisor-middleware-messages-" + os.urandom(16).hex()
_SLOT_BYTES = orjson.dumps(_SLOT)

# Below this many messages a body is encoded whole: the splice's bookkeeping (~2.5 µs a leg
# here) costs more than encoding a few messages again (~1 µs for a Claude Code message of
# 1.6 KB), and a short consult would pay it on every leg.
_FEW = 8


class LegEncoder:
    """Encodes one request's executor legs, in order: ``encode(body)`` gives the bytes of
    ``encode_json(body)``. When the body's messages start with the previous body's (the same
    objects: the middleware never changes a message once it is in a leg), only the rest is
    encoded; any other body, and one of fewer than eight messages, is encoded whole."""

    __slots__ = ("_messages", "_runs")

    def __init__(self) -> None:
        self._messages: list[Any] = []
        self._runs: list[bytes] = []  # JSON arrays of consecutive messages, in order

    def encode(self, body: dict[str, Any]) -> bytes:
        messages = body.get("messages")
        if type(messages) is not list or len(messages) < _FEW:
            return encode_json(body)
        try:
            frame = orjson.dumps({**body, "messages": _SLOT})  # the key keeps its place
            runs = self._runs_for(messages)
        except TypeError:
            # What orjson refuses (an integer over 64 bits, a lone surrogate): encode_json's
            # fallback, for the whole body; the next leg starts afresh.
            self._messages, self._runs = [], []
            return encode_json(body)
        at = frame.find(_SLOT_BYTES)
        out: list[bytes | memoryview] = [memoryview(frame)[:at], b"["]
        for run in runs:  # each a non-empty array
            if len(out) > 2:
                out.append(b",")
            out.append(memoryview(run)[1:-1])  # a view: no copy of a conversation's bytes
        out += (b"]", memoryview(frame)[at + len(_SLOT_BYTES) :])
        return b"".join(out)

    def _runs_for(self, messages: list[Any]) -> list[bytes]:
        known = self._messages
        # `map(operator.is_, ...)` compares in C: ~15 ns a message, against ~1 µs to encode a
        # Claude Code message of 1.6 KB.
        if known and len(messages) >= len(known) and all(map(operator.is_, known, messages)):
            runs = self._runs
            if len(messages) > len(known):
                runs = [*runs, orjson.dumps(messages[len(known) :])]
        else:
            runs = [orjson.dumps(messages)]
        self._messages, self._runs = list(messages), runs  # a copy: the caller may reuse its list
        return runs
