"""``UpstreamProxy``: an ASGI app that forwards every request to another HTTP gateway
(``advisor-middleware serve --upstream URL`` wraps it in ``AdvisorMiddleware``)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from ._types import Receive, Scope, Send
from .errors import error_body, send_json
from .middleware import LINGER
from .routers.base import end_to_end
from .routers.http import DEFAULT_TIMEOUT, InvalidTarget, PooledClient, upstream_url

log = logging.getLogger("advisor_middleware.proxy")

_HOST = frozenset({b"host"})  # httpx writes it from the URL


class _Disconnected(Exception):
    pass


class UpstreamProxy(PooledClient):
    """Forward every HTTP request to ``base_url`` as it came, and stream the answer back as it is.

    A client that disconnects cancels the upstream request. An unreachable upstream is answered
    ``502`` (``504`` on a timeout); a request that already passed through this proxy (``via``)
    ``508``, so a loop fails fast. WebSockets are refused; lifespan shutdown closes the pool.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(base_url, client, timeout)
        self.via = b"1.1 advisor-middleware-" + uuid.uuid4().hex[:16].encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})

    def _forwarded_headers(self, received: Any) -> list[tuple[bytes, bytes]] | None:
        """The request's headers as forwarded, this proxy added to ``via``; None if the request
        has passed through this proxy already."""
        headers = []
        via = []
        for name, value in _framed(end_to_end(received, _HOST), received):
            if name == b"via":
                if self.via in value:
                    return None
                via.append(value)
            else:
                headers.append((name, value))
        headers.append((b"via", b", ".join([*via, self.via])))
        if not any(name == b"accept-encoding" for name, _ in headers):
            # Else httpx asks for gzip, and the compressed bytes would reach a client that never did.
            headers.append((b"accept-encoding", b"identity"))
        return headers

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path")  # the path as the client sent it
        path = bytes(raw_path) if raw_path is not None else quote(scope["path"]).encode()
        try:
            url = upstream_url(self._base, path, bytes(scope.get("query_string") or b""))
        except InvalidTarget as exc:
            await send_json(send, 400, error_body("invalid_request_error", str(exc)))
            return
        headers = self._forwarded_headers(scope["headers"])
        if headers is None:
            await send_json(send, 508, error_body("api_error", "request loop: the upstream leads back here"))
            return
        body_read = anyio.Event()
        content = await _request_content(receive, body_read)
        if content is None:
            return  # the client left before its body started
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch, receive, body_read, tg.cancel_scope)
            if await self._forward(scope["method"], url, headers, content, send):
                # As in the middleware: the server's http.disconnect ends the watcher, or LINGER.
                tg.cancel_scope.deadline = anyio.current_time() + LINGER
            else:
                tg.cancel_scope.cancel()

    async def _forward(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes],
        send: Send,
    ) -> bool:
        """Send the request upstream and relay the answer as it streams; whether it went out whole."""
        started = False
        try:
            async with self.client.stream(
                method, url, content=content, headers=headers, timeout=self.timeout, follow_redirects=False
            ) as response:
                out = _framed(end_to_end(response.headers.raw), response.headers.raw)
                await send({"type": "http.response.start", "status": response.status_code, "headers": out})
                started = True
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        except _Disconnected:
            return False
        except Exception as exc:
            # Whatever the transport raised, the upstream failed us: a 502 (504 on a timeout).
            if started:
                # The type only: the transport's words may quote what the upstream sent.
                log.warning("upstream %s broke off mid-response: %s", self._shown, type(exc).__name__)
                raise  # the server aborts the connection: the client sees the body is cut short
            status, kind = (504, "timeout_error") if isinstance(exc, httpx.TimeoutException) else (502, "api_error")
            message = f"upstream {self._shown} failed: {type(exc).__name__}: {exc}"
            await send_json(send, status, error_body(kind, message))
            return False


async def _request_content(receive: Receive, body_read: anyio.Event) -> bytes | AsyncIterator[bytes] | None:
    """The request's body for httpx: bytes if it came in one message, else an iterator that sets
    ``body_read`` once all is in. None if the client left first."""
    first = await receive()
    if first["type"] == "http.disconnect":
        return None
    body: bytes = first.get("body", b"")
    if first.get("more_body", False):
        return _rest_of_body(body, receive, body_read)
    body_read.set()
    return body


async def _watch(receive: Receive, body_read: anyio.Event, scope: anyio.CancelScope) -> None:
    """The one reader of ``receive`` once the body is read: a disconnect cancels the forwarding
    (a server's send may stay silent once the client is gone, docs/protocol.md §8)."""
    # Event.wait() checkpoints even when the event is set: not waited on for a body already read.
    if not body_read.is_set():
        await body_read.wait()
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _framed(headers: list[tuple[bytes, bytes]], received: Any) -> list[tuple[bytes, bytes]]:
    """``headers`` without ``content-length`` if ``received`` had a ``transfer-encoding``: the
    length means nothing then (RFC 9112 §6.1), and forwarded it would frame the body wrongly."""
    if any(bytes(name).lower() == b"transfer-encoding" for name, _ in received):
        return [(name, value) for name, value in headers if name != b"content-length"]
    return headers


async def _rest_of_body(first: bytes, receive: Receive, done: anyio.Event) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            done.set()
            return
