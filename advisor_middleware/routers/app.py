"""``AppRouter``: run each leg as a new in-process request to the wrapped ASGI app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._types import ASGIApp, Message
from ..errors import UpstreamError
from ..sse import SSEDecoder, encode_json
from .base import BatchRouter, Leg
from .events import MAX_BUFFERED, decode_events, json_message_events

__all__ = ["AppRouter"]

log = logging.getLogger("advisor_middleware")


class AppRouter(BatchRouter):
    """Answers legs by calling ``app`` in-process, the way a server would.

    Each leg is a new ``POST`` on the caller's path with the caller's headers (and so the caller's
    credentials): the host's auth, per-key model permissions, budgets, spend logs and deployment
    routing apply to every leg exactly as to a direct request. The answer is read as it streams.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def batches(self, leg: Leg) -> AsyncIterator[list[dict[str, Any]]]:
        """The leg's events in the groups the app produced them: everything it sent before it
        had to wait comes out as one list, which the middleware writes in one ``send``."""
        body = encode_json(leg.body)
        headers = [(k, v) for k, v in leg.headers if k != b"content-type"]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = dict(leg.scope)
        scope.update(type="http", method="POST", headers=headers)
        scope.pop("extensions", None)
        if isinstance(scope.get("state"), dict):
            scope["state"] = dict(scope["state"])
        if "path" in scope:
            scope["raw_path"] = scope["path"].encode()

        to_reader, from_app = anyio.create_memory_object_stream[Message](16)
        complete = anyio.Event()
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Block until the response is complete (or the leg is cancelled), like a real server:
            # an early disconnect would make Django cancel the view (asgi-ecosystem §2.2).
            await complete.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                try:
                    # No checkpoint per message when there is room (anyio's send() always
                    # yields to the loop): the reader takes what is buffered in one go.
                    to_reader.send_nowait(message)
                except anyio.WouldBlock:
                    await to_reader.send(message)

        async def run() -> None:
            async with to_reader:
                try:
                    await self.app(scope, receive, send)
                except Exception as exc:  # the host crashed: that is this leg's answer
                    # A server would log the traceback; the client only sees a 500 for the leg.
                    log.exception("the host app raised on a %s leg", leg.role)
                    await send({"type": "advisor.app_error", "error": exc})

        response = _Response()
        error: UpstreamError | None = None
        closed = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                async with from_app:
                    message = await _receive(from_app)
                    while message is not None:
                        # Everything the app has sent already is one batch; the wait comes after.
                        batch: list[dict[str, Any]] = []
                        while message is not None and message is not _WAIT:
                            error = response.take(message, batch)
                            if response.complete:
                                complete.set()
                            if error is not None:
                                break
                            message = _buffered(from_app)
                        if batch:  # what came before an error is still the leg's output
                            try:
                                yield batch
                            except GeneratorExit:
                                # Closed early by the consumer. Leave the task group normally:
                                # a GeneratorExit crossing it would come out wrapped in an
                                # ExceptionGroup.
                                closed = True
                        if error is not None or closed:
                            break
                        if message is _WAIT:
                            message = await _receive(from_app)
            finally:
                if error is not None or closed or not complete.is_set():
                    tg.cancel_scope.cancel()
                complete.set()
        if closed:
            return
        if error is not None:
            raise error
        if response.status == 0:
            raise UpstreamError(502, "the host app returned without answering this leg")
        raw = b"".join(response.buffered)
        if response.status != 200:
            raise UpstreamError(response.status, raw, response.headers)
        if not response.readable:
            encoding = response.encoding.decode()
            raise UpstreamError(502, f"leg answered with content-encoding {encoding!r}, which cannot be read")
        if response.is_sse:
            return
        # The host ignored ``stream: true`` and answered one JSON Message: replay it as events.
        yield list(json_message_events(raw))


class _Response:
    """What the app has answered on one leg so far."""

    __slots__ = ("buffered", "complete", "decoder", "encoding", "headers", "is_sse", "size", "status")

    def __init__(self) -> None:
        self.status = 0
        self.is_sse = False
        self.encoding = b""
        self.headers: list[tuple[bytes, bytes]] = []  # kept for an UpstreamError
        self.buffered: list[bytes] = []  # a body that is not a readable stream
        self.size = 0
        self.complete = False
        self.decoder = SSEDecoder()

    @property
    def readable(self) -> bool:
        return self.encoding in (b"", b"identity")

    def take(self, message: Message, batch: list[dict[str, Any]]) -> UpstreamError | None:
        """Handle one message from the app: stream events go to ``batch``; returns the leg's
        failure, if this message is one."""
        kind = message["type"]
        if kind == "http.response.body":
            chunk = bytes(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.status == 200 and self.is_sse and self.readable:
                return decode_events(self.decoder, chunk, batch)
            self.size += len(chunk)
            if self.size > MAX_BUFFERED:
                return UpstreamError(502, "leg response too large to buffer")
            self.buffered.append(chunk)
        elif kind == "http.response.start":
            self.status = int(message["status"])
            for name, value in message.get("headers") or []:
                key = bytes(name).lower()
                if key == b"content-type":
                    self.is_sse = bytes(value).lower().startswith(b"text/event-stream")
                elif key == b"content-encoding":
                    self.encoding = bytes(value).lower().strip()
                elif key in (b"retry-after", b"x-should-retry"):
                    self.headers.append((key, bytes(value)))
        elif kind == "advisor.app_error":
            return UpstreamError(500, f"the host app raised {type(message['error']).__name__} on this leg")
        return None


_WAIT: Message = {"type": "advisor.wait"}
"""Returned by :func:`_buffered` when nothing is buffered yet (the app is still working)."""


def _buffered(stream: MemoryObjectReceiveStream[Message]) -> Message | None:
    """The next message if one is already buffered, ``_WAIT`` if not, None at the end. Without
    a trip through the event loop (anyio's receive() always yields first: two loop turns per
    message)."""
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        return _WAIT
    except anyio.EndOfStream:
        return None


async def _receive(stream: MemoryObjectReceiveStream[Message]) -> Message | None:
    """The next message, waiting for it if none is buffered; None at the end."""
    message = _buffered(stream)
    if message is not _WAIT:
        return message
    try:
        return await stream.receive()
    except anyio.EndOfStream:
        return None
