"""``AppRouter``: run each leg as a new in-process request to the wrapped ASGI app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

import anyio

from .._types import ASGIApp, Message
from ..errors import ClientGone, UpstreamError
from ..sse import SSEDecoder
from .base import Batch, BatchRouter, Leg, OnBatch, forwarded_headers
from .events import decode_events, json_message_events, too_large

__all__ = ["CLIENT", "AppRouter", "Departure"]

log = logging.getLogger("advisor_middleware")


class Departure:
    """The client of the request in flight, as the middleware's watcher sees it. When the client
    leaves, the ``AppRouter`` legs in flight are told the way a server tells an app: the host's
    ``receive`` reports ``http.disconnect`` and its ``send`` raises ``OSError``. A host then ends
    its leg itself, cleanly, instead of being cancelled: Django's ``ASGIHandler``, cancelled,
    leaves its two tasks running and asyncio logs their exceptions on every disconnect."""

    __slots__ = ("_listeners", "gone")

    def __init__(self) -> None:
        self.gone = False
        self._listeners: list[Callable[[], None]] = []

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (once) if the client leaves; until :meth:`forget`."""
        self._listeners.append(listener)

    def forget(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def leave(self) -> bool:
        """The client is gone: tell the legs in flight; whether there was one to tell."""
        self.gone = True
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener()
        return bool(listeners)


CLIENT: ContextVar[Departure | None] = ContextVar("advisor_middleware_client", default=None)
"""The request's :class:`Departure`, set by ``AdvisorMiddleware`` around the advisor loop."""


class AppRouter(BatchRouter):
    """Answers legs by calling ``app`` in-process, the way a server would.

    Each leg is a new ``POST`` on the caller's path with the caller's headers (and so the caller's
    credentials): the host's auth, per-key model permissions, budgets, spend logs and deployment
    routing apply to every leg exactly as to a direct request. The answer is read as it streams.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def push(self, leg: Leg, on_batch: OnBatch) -> None:
        """Call the app in this task and hand each ``http.response.body`` it sends to
        ``on_batch`` as one group, from inside the app's ``send``: the leg's events reach the
        client (and the app feels the client's back-pressure) with no task, channel or loop turn
        in between (docs/performance.md, round 3)."""
        body = leg.encode()
        headers = [(k, v) for k, v in leg.headers if k != b"content-type"]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = dict(leg.scope)
        scope.update(type="http", method="POST", headers=headers)
        scope.pop("extensions", None)
        if isinstance(scope.get("state"), dict):
            scope["state"] = dict(scope["state"])
        if "path" in scope:
            scope["raw_path"] = scope["path"].encode()

        response = _Response(leg.raw_deltas, leg.response_headers, leg.max_bytes)
        body_sent = False
        waiting: anyio.Event | None = None  # made only if the app asks for a second message
        # Why the leg stopped early: on_batch raised (the client left, or the loop found the
        # stream malformed), the stream itself failed, or the watcher saw the client leave
        # (client_left, below). It is raised from push once the app is done, whatever the app
        # made of the OSError or the disconnect it got instead.
        stopped: Exception | None = None
        # An app that carries on after that OSError is cancelled once it had WIND_DOWN seconds.
        leg_scope = anyio.CancelScope()
        # The leg is over for us, however it ended (cancelled included). Some apps leave tasks
        # running when cancelled (Django's ASGIHandler serves each request from two asyncio
        # tasks of its own): what those send must never reach the loop or the client, and what
        # they wait to receive is a disconnect.
        over = False

        async def receive() -> Message:
            nonlocal body_sent, waiting
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Block until the response is complete (or the leg is cancelled), like a real server:
            # an early disconnect would make Django cancel the view (asgi-ecosystem §2.2).
            if not response.complete and stopped is None and not over:
                waiting = waiting or anyio.Event()
                await waiting.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal stopped
            if stopped is not None or over:
                raise _LegClosed
            batch: Batch = []
            error: Exception | None = response.take(message, batch)
            if response.complete and waiting is not None:
                waiting.set()
            try:
                if batch:  # what came before an error is still the leg's output
                    await on_batch(batch)
            except Exception as exc:
                error = exc
            if stopped is None:  # else the client left while on_batch was writing: that stands
                stopped = error
            if stopped is not None:
                # Not cancelled at once: an app told the way a server tells it (send raises,
                # receive reports http.disconnect) ends by itself, cleanly. Django's
                # ASGIHandler, cancelled instead, leaves its two tasks running and their
                # exceptions unretrieved (logged by asyncio on every stopped leg).
                leg_scope.deadline = anyio.current_time() + WIND_DOWN
                if waiting is not None:
                    waiting.set()
                # To the app we are a client that has gone away (ASGI 2.4: send raises OSError).
                raise _LegClosed

        def client_left() -> None:
            nonlocal stopped
            if stopped is None:
                stopped = ClientGone("the client left during the leg")
            if waiting is not None:
                waiting.set()

        departure = CLIENT.get()
        if departure is not None:
            if departure.gone:
                raise ClientGone("the client left before the leg")
            departure.listen(client_left)
        try:
            with leg_scope:
                try:
                    await self.app(scope, receive, send)
                except Exception as exc:
                    if stopped is None:  # the host crashed: that is this leg's answer
                        # A server would log the traceback; the client only sees a 500 for the leg.
                        log.exception("the host app raised on a %s leg", leg.role)
                        raise UpstreamError(500, f"the host app raised {type(exc).__name__} on this leg") from None
        finally:
            over = True
            if waiting is not None:
                waiting.set()
            if departure is not None:
                departure.forget(client_left)
        if stopped is not None:
            raise stopped
        if response.status == 0:
            raise UpstreamError(502, "the host app returned without answering this leg")
        raw = b"".join(response.buffered)
        if response.status != 200:
            raise UpstreamError(response.status, raw, forwarded_headers(response.headers))
        if not response.readable:
            encoding = response.encoding.decode()
            raise UpstreamError(502, f"leg answered with content-encoding {encoding!r}, which cannot be read")
        if not response.is_sse:
            # The host ignored ``stream: true`` and answered one JSON Message: replay it as events.
            await on_batch([*json_message_events(raw)])


WIND_DOWN = 0.1
"""Seconds an app gets to end a leg we stopped (or whose client left) before it is cancelled."""


class _LegClosed(OSError):
    """Raised into the app's ``send`` once the leg is over for us, the way a server's ``send``
    raises once its client is gone (ASGI spec 2.4), so the app stops producing."""


class _Response:
    """What the app has answered on one leg so far."""

    __slots__ = (
        "buffered",
        "complete",
        "decoder",
        "encoding",
        "headers",
        "is_sse",
        "limit",
        "raw_deltas",
        "size",
        "status",
        "streaming",
    )

    def __init__(self, raw_deltas: bool, headers: list[tuple[bytes, bytes]], limit: int) -> None:
        self.raw_deltas = raw_deltas
        self.limit = limit  # the most bytes of body read, streamed or buffered
        self.status = 0
        self.is_sse = False
        self.encoding = b""
        self.headers = headers  # the leg's response_headers, filled at http.response.start
        headers.clear()
        self.buffered: list[bytes] = []  # a body that is not a readable stream
        self.size = 0  # bytes of body so far
        self.complete = False
        self.decoder = SSEDecoder()
        self.streaming = False  # a readable event stream with status 200: decoded as it comes

    @property
    def readable(self) -> bool:
        return self.encoding in (b"", b"identity")

    def take(self, message: Message, batch: Batch) -> UpstreamError | None:
        """Handle one message from the app: stream events go to ``batch``; returns the leg's
        failure, if this message is one."""
        kind = message["type"]
        if kind == "http.response.body":
            chunk = message.get("body", b"")
            if type(chunk) is not bytes:  # bytes() of bytes is a no-op that costs ~850 instructions
                chunk = bytes(chunk)
            self.complete = not message.get("more_body", False)
            self.size += len(chunk)
            if self.size > self.limit:
                return too_large(self.limit)
            if self.streaming:
                return decode_events(self.decoder, chunk, batch, self.raw_deltas)
            self.buffered.append(chunk)
        elif kind == "http.response.start":
            self.status = int(message["status"])
            for name, value in message.get("headers") or []:
                key = bytes(name).lower()
                if key == b"content-type":
                    self.is_sse = bytes(value).lower().startswith(b"text/event-stream")
                elif key == b"content-encoding":
                    self.encoding = bytes(value).lower().strip()
                self.headers.append((key, bytes(value)))
            self.streaming = self.status == 200 and self.is_sse and self.readable
        return None
