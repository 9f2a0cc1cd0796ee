"""``AppRouter``: run each leg as a new in-process request to the wrapped ASGI app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

import anyio

from .._types import ASGIApp, Message, Scope
from ..errors import ClientGone, UpstreamError
from .base import Batch, BatchRouter, Leg, OnBatch, forwarded_headers
from .events import AnswerReader, json_message_events

__all__ = ["CLIENT", "WIND_DOWN", "AppRouter", "Departure"]

log = logging.getLogger("advisor_middleware")


class Departure:
    """The client of the request in flight, as the middleware's watcher sees it. When the client
    leaves, the ``AppRouter`` legs in flight are told the way a server tells an app
    (:class:`_HostCall`)."""

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
        in between."""
        call = _HostCall(leg, on_batch)
        departure = CLIENT.get()
        if departure is not None:
            if departure.gone:
                raise ClientGone("the client left before the leg")
            departure.listen(call.client_left)
        try:
            await call.run(self.app, _leg_scope(leg, call.body))
        finally:
            if departure is not None:
                departure.forget(call.client_left)
        raw = call.answer()
        if raw is not None:
            # The host ignored ``stream: true`` and answered one JSON Message: replay it as events.
            await on_batch([*json_message_events(raw)])


def _leg_scope(leg: Leg, body: bytes) -> Scope:
    """The scope of a leg's request: a ``POST`` of ``body`` on the caller's scope."""
    headers = [(k, v) for k, v in leg.headers if k != b"content-type"]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = dict(leg.scope)
    scope.update(type="http", method="POST", headers=headers)
    scope.pop("extensions", None)
    if isinstance(scope.get("state"), dict):
        scope["state"] = dict(scope["state"])
    if "path" in scope:
        scope["raw_path"] = scope["path"].encode()
    return scope


class _HostCall:
    """One leg as a request to the host: the ``receive`` and ``send`` the host is called with,
    and what it has answered so far.

    A leg stopped early (``on_batch`` raised, the stream failed, the client left) is told to the
    host the way a server tells an app whose client has gone: ``send`` raises ``OSError`` and
    ``receive`` reports ``http.disconnect``, so the host ends the leg itself, cleanly (Django's
    ``ASGIHandler``, cancelled instead, leaves its tasks running and asyncio logs their
    exceptions). A host that carries on is cancelled after :data:`WIND_DOWN` seconds.
    """

    __slots__ = ("body", "body_sent", "cancel_scope", "on_batch", "over", "response", "role", "stopped", "waiting")

    def __init__(self, leg: Leg, on_batch: OnBatch) -> None:
        self.role = leg.role
        self.on_batch = on_batch
        self.body = leg.encode()
        self.body_sent = False
        self.response = _Response(leg)
        self.stopped: Exception | None = None
        """Why the leg stopped early; raised once the host is done, whatever the host made of
        the ``OSError`` or the disconnect it got instead."""
        self.over = False
        """The leg is over for us, however it ended (cancelled included). Some hosts leave tasks
        running when cancelled (Django's ``ASGIHandler``): what those send must never reach the
        loop or the client, and what they wait to receive is a disconnect."""
        self.waiting: anyio.Event | None = None  # made only if the host asks for a second message
        self.cancel_scope = anyio.CancelScope()

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            with self.cancel_scope:
                await app(scope, self.receive, self.send)
        except Exception as exc:
            if self.stopped is None:  # the host crashed: that is this leg's answer
                # A server would log the traceback; the client only sees a 500 for the leg.
                log.exception("the host app raised on a %s leg", self.role)
                raise UpstreamError(500, f"the host app raised {type(exc).__name__} on this leg") from None
        finally:
            self.over = True
            self._wake()

    async def receive(self) -> Message:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        # Block until the response is complete (or the leg is over), like a real server: an
        # early disconnect would make Django cancel the view (docs/protocol.md §8).
        if not self.response.complete and self.stopped is None and not self.over:
            self.waiting = self.waiting or anyio.Event()
            await self.waiting.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.stopped is not None or self.over:
            raise _LegClosed
        batch: Batch = []
        error: Exception | None = self.response.take(message, batch)
        if self.response.complete:
            self._wake()
        try:
            if batch:  # what came before an error is still the leg's output
                await self.on_batch(batch)
        except Exception as exc:
            error = exc
        if self.stopped is None:  # else the client left while on_batch was writing: that stands
            self.stopped = error
        if self.stopped is not None:
            self.cancel_scope.deadline = anyio.current_time() + WIND_DOWN
            self._wake()
            raise _LegClosed

    def client_left(self) -> None:
        """The watcher saw the client leave (a :class:`Departure` listener)."""
        if self.stopped is None:
            self.stopped = ClientGone("the client left during the leg")
        self._wake()

    def _wake(self) -> None:
        if self.waiting is not None:
            self.waiting.set()

    def answer(self) -> bytes | None:
        """Once the host is done: raises the leg's failure; else the JSON Message the host
        answered instead of a stream, or None if it streamed."""
        response = self.response
        if self.stopped is not None:
            raise self.stopped
        if response.status == 0:
            raise UpstreamError(502, "the host app returned without answering this leg")
        raw = b"".join(response.buffered)
        if response.status != 200:
            raise UpstreamError(response.status, raw, forwarded_headers(response.headers))
        if not response.readable:
            encoding = response.encoding.decode()
            raise UpstreamError(502, f"leg answered with content-encoding {encoding!r}, which cannot be read")
        return None if response.is_sse else raw


WIND_DOWN = 0.1
"""Seconds an app gets to end a leg we stopped (or whose client left) before it is cancelled."""


class _LegClosed(OSError):
    """Raised into the app's ``send`` once the leg is over for us, the way a server's ``send``
    raises once its client is gone (docs/protocol.md §8), so the app stops producing."""


class _Response:
    """What the app has answered on one leg so far."""

    __slots__ = ("buffered", "complete", "encoding", "headers", "is_sse", "reader", "status", "streaming")

    def __init__(self, leg: Leg) -> None:
        self.reader = AnswerReader(leg.max_bytes, leg.raw_deltas)  # counts every byte of body
        self.status = 0
        self.is_sse = False
        self.encoding = b""
        self.headers = leg.response_headers  # filled at http.response.start
        self.headers.clear()
        self.buffered: list[bytes] = []  # a body that is not a readable stream
        self.complete = False
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
            if type(chunk) is not bytes:  # a bytearray or memoryview is allowed by ASGI
                chunk = bytes(chunk)
            self.complete = not message.get("more_body", False)
            if self.streaming:
                return self.reader.read(chunk, batch)
            self.buffered.append(chunk)
            return self.reader.count(len(chunk))
        if kind == "http.response.start":
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
