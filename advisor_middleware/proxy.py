"""``UpstreamProxy``: an ASGI app that forwards every request to another HTTP gateway.

``advisor-middleware serve --upstream URL`` wraps it in ``AdvisorMiddleware`` with an
``HTTPRouter`` on the same connection pool: advisor requests are orchestrated here, everything
else (any path or method, and every leg) goes to the upstream gateway as it is.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import anyio
import httpx

from ._types import Receive, Scope, Send
from .errors import error_body
from .middleware import _LINGER
from .routers.http import DEFAULT_TIMEOUT, PooledClient

__all__ = ["UpstreamProxy"]

log = logging.getLogger("advisor_middleware.proxy")

# Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded; httpx sets ``host`` from the URL.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class _Disconnected(Exception):
    pass


class UpstreamProxy(PooledClient):
    """Forward every HTTP request to ``base_url``: method, path, query, headers and body as they
    came, and the answer (status, headers, body bytes, still compressed if it was) as it streams.

    A client that disconnects cancels the upstream request. An unreachable upstream is answered
    ``502`` (``504`` on a timeout) in Anthropic's error shape. Each proxy adds itself to the
    ``via`` header and answers ``508`` to a request that already passed through it, so an
    upstream URL that leads back to this proxy fails fast instead of looping. WebSockets are
    refused. Lifespan is answered here; shutdown closes the connection pool.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(client, timeout)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
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

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = []
        dropped = set(_HOP)
        for name, value in scope["headers"]:
            if name == b"connection":
                dropped.update(v.strip().lower().encode() for v in value.decode("latin-1").split(","))
        accept_encoding = False
        via: list[bytes] = []
        for name, value in scope["headers"]:
            if name in dropped or name == b"host":
                continue
            if name == b"via":
                if self.via in value:
                    await _answer(send, 508, error_body("api_error", "request loop: the upstream leads back here"))
                    return
                via.append(value)
                continue
            accept_encoding = accept_encoding or name == b"accept-encoding"
            headers.append((name, value))
        headers.append((b"via", b", ".join([*via, self.via])))
        if not accept_encoding:
            # Else httpx asks for gzip, and the compressed bytes would reach a client that never did.
            headers.append((b"accept-encoding", b"identity"))
        url = self.base_url + (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")

        body_read = anyio.Event()
        first = await receive()
        if first["type"] == "http.disconnect":
            return
        body: bytes = first.get("body", b"")
        content: bytes | AsyncIterator[bytes] = body
        if first.get("more_body", False):
            content = _rest_of_body(body, receive, body_read)
        else:
            body_read.set()

        started = False
        answered = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                # One reader of receive: after the body, its only news is a disconnect (uvicorn's
                # send stays silent once the client is gone). Event.wait() checkpoints even when
                # the event is set: not waited on for a body already read (one loop turn less).
                if not body_read.is_set():
                    await body_read.wait()
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not answered:
                    tg.cancel_scope.cancel()

            tg.start_soon(watch)
            try:
                async with self.client.stream(
                    scope["method"],
                    url,
                    content=content,
                    headers=headers,
                    timeout=self.timeout,
                    follow_redirects=False,
                ) as response:
                    out = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _HOP]
                    await send({"type": "http.response.start", "status": response.status_code, "headers": out})
                    started = True
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                answered = True
            except _Disconnected:
                pass
            except (httpx.RequestError, OSError) as exc:
                if started:
                    # The type only: the transport's words may quote what the upstream sent.
                    log.warning("upstream %s broke off mid-response: %s", self.base_url, type(exc).__name__)
                    raise  # the server aborts the connection: the client sees the body is cut short
                timeout = isinstance(exc, httpx.TimeoutException)
                status, kind = (504, "timeout_error") if timeout else (502, "api_error")
                message = f"upstream {self.base_url} failed: {type(exc).__name__}: {exc}"
                await _answer(send, status, error_body(kind, message))
            finally:
                if answered:
                    # As in the middleware (docs/performance.md, step 14): once the response is
                    # out, the server answers the watcher's receive with http.disconnect and the
                    # watcher ends by itself, cheaper than cancelling it. A silent server gets
                    # _LINGER seconds.
                    tg.cancel_scope.deadline = anyio.current_time() + _LINGER
                else:
                    tg.cancel_scope.cancel()


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


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
