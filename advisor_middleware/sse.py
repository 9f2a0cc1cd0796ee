"""Server-sent events: an incremental bytes-level decoder and the encoder we answer with.

The decoder splits on the three SSE line endings on *bytes* (never ``str.splitlines``, which
also breaks on U+2028/U+0085 inside JSON; asgi-ecosystem §4) and keeps a partial line across
chunks, so a multibyte character split between two ``http.response.body`` messages is safe.
"""

from __future__ import annotations

from typing import Any

import pydantic_core

__all__ = ["SSEDecoder", "encode_event", "encode_json"]


def encode_json(data: Any) -> bytes:
    """Compact JSON (no spaces); ``to_json`` escapes newlines, so it fits on one ``data:`` line."""
    return pydantic_core.to_json(data)


def encode_event(data: dict[str, Any]) -> bytes:
    """``event: <type>`` plus one ``data:`` line, the shape Anthropic streams use."""
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + encode_json(data) + b"\n\n"


class SSEDecoder:
    """Feed bytes, get ``(event_name, data)`` pairs for each complete event.

    Follows the WHATWG field rules: ``data:`` lines are joined with ``\\n``, one leading space
    after the colon is dropped, comment lines (``:``) and unknown fields are ignored, and an
    event with no data is not dispatched.
    """

    __slots__ = ("_buf", "_data", "_event", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[bytes] = []
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self._pending_cr and chunk.startswith(b"\n"):
            # The previous chunk ended in "\r" and this one starts with "\n": one CRLF.
            chunk = chunk[1:]
        self._pending_cr = False
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        n = len(buf)
        while start < n:
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, nxt = lf, lf + 1
            else:
                end = cr
                if cr + 1 < n:
                    nxt = cr + 2 if buf[cr + 1] == 0x0A else cr + 1
                else:
                    nxt = cr + 1
                    self._pending_cr = True
            self._line(buf[start:end], out)
            start = nxt
        self._buf = buf[start:]
        return out

    def _line(self, line: bytes, out: list[tuple[str, str]]) -> None:
        if not line:
            if self._data:
                out.append((self._event or "message", b"\n".join(self._data).decode("utf-8", "replace")))
            self._event = ""
            self._data = []
            return
        if line[0] == 0x3A:  # ":" comment
            return
        field, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
