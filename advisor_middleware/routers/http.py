"""``HTTPRouter``: run each leg as an HTTP request to a remote Anthropic-compatible gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from ..errors import UpstreamError
from ..sse import SSEDecoder
from .base import Batch, BatchRouter, Leg, OnBatch
from .events import decode_events, json_message_events, too_large

__all__ = ["DEFAULT_TIMEOUT", "HTTPRouter", "PooledClient"]

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
"""Ten seconds to connect; then up to ten minutes between two reads (a model thinking quietly)."""

_KEPT = ("retry-after", "x-should-retry")


class PooledClient:
    """One ``httpx.AsyncClient`` (one connection pool), created on first use.

    A client passed in is used as it is and never closed here; the one created here keeps no
    cookies (a ``Set-Cookie`` answering one caller must never ride along with another caller's
    request) and is closed by :meth:`aclose`.
    """

    def __init__(self, client: httpx.AsyncClient | None, timeout: httpx.Timeout | float | None) -> None:
        self._client = client
        self._owns_client = client is None
        self.timeout = timeout

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=False,
                cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
                # A gateway streams many long answers at once: no cap on connections.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool, if this object created it."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


class HTTPRouter(PooledClient, BatchRouter):
    """Answers legs by POSTing them to ``base_url + path`` (default ``/v1/messages``).

    The caller's headers (their credentials included, plus the ``x-advisor-leg`` marker) go to
    this one base URL and nowhere else: redirects are never followed and nothing in the request
    body chooses where a leg goes. The caller's query string (``?beta=true``) is kept. Answers are
    read as they stream; a gateway that answers one JSON Message is read too.

    Failures become :class:`~advisor_middleware.UpstreamError`: a non-200 answer keeps its status,
    body and ``retry-after``; an ``error`` event keeps its type; a timeout (``timeout`` applies to
    every leg: ``connect``, and ``read`` between two chunks) is ``504 timeout_error``, which an
    advisor leg reports as ``execution_time_exceeded``; any other transport failure is
    ``502 api_error``.

    ``client``: an ``httpx.AsyncClient`` to share (it is not closed by :meth:`aclose`). Without
    one, a pooled client is created on first use; close it with ``await router.aclose()``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        path: str = "/v1/messages",
    ) -> None:
        super().__init__(client, timeout)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/" + path.lstrip("/")

    async def push(self, leg: Leg, on_batch: OnBatch) -> None:
        """Await ``on_batch`` with each network read's events, as they arrive.

        Pushed, not pulled (``batches``, derived from this, is for the protocol's ``stream``):
        the middleware drives every leg with ``push``, and a loop here in its task costs two
        async generator levels fewer per read than iterating ``batches`` (docs/performance.md,
        step 23)."""
        async with self._exchange(leg) as response:
            if _is_sse(response):
                decoder = SSEDecoder()
                raw_deltas = leg.raw_deltas
                left = leg.max_bytes
                async for chunk in _body(response):
                    left -= len(chunk)
                    if left < 0:
                        raise too_large(leg.max_bytes)
                    batch: Batch = []
                    error = decode_events(decoder, chunk, batch, raw_deltas)
                    if batch:  # what came before an error is still the leg's output
                        await on_batch(batch)
                    if error is not None:
                        raise error
                return
            raw = await _read(response, leg.max_bytes)
        await on_batch([*json_message_events(raw)])

    @asynccontextmanager
    async def _exchange(self, leg: Leg) -> AsyncIterator[httpx.Response]:
        """POST the leg; the answer once it is known to be a 200. Transport failures, while
        the answer is read inside the block too, come out as UpstreamError."""
        url = self.url
        query = leg.scope.get("query_string")
        if query:
            url += "?" + bytes(query).decode("latin-1")
        headers = [(k, v) for k, v in leg.headers if k not in (b"host", b"content-type")]
        # Identity: the SSE must reach us as it is produced, not held back by a compressor.
        headers += [(b"content-type", b"application/json"), (b"accept-encoding", b"identity")]
        try:
            async with self.client.stream(
                "POST",
                url,
                content=leg.encode(),
                headers=headers,
                timeout=self.timeout,
                follow_redirects=False,
            ) as response:
                if response.status_code != 200:
                    kept = [(k.encode(), response.headers[k].encode()) for k in _KEPT if k in response.headers]
                    raise UpstreamError(response.status_code, await _read(response, leg.max_bytes), kept)
                yield response
        except httpx.TimeoutException as exc:
            kind = type(exc).__name__
            raise UpstreamError(504, {"type": "timeout_error", "message": f"upstream {kind} on {self.url}"}) from exc
        except httpx.RequestError as exc:
            message = f"upstream {self.url} failed: {type(exc).__name__}: {exc}"
            raise UpstreamError(502, {"type": "api_error", "message": message}) from exc


def _is_sse(response: httpx.Response) -> bool:
    kind: str = response.headers.get("content-type", "")
    return kind.lower().startswith("text/event-stream")


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    # The bytes as read: asked for identity, most gateways send them so, and httpx's decoding
    # layer (a decoder and a chunker per read) is skipped. One that compresses anyway is decoded.
    if response.headers.get("content-encoding", "").strip().lower() in ("", "identity"):
        return response.aiter_raw()
    return response.aiter_bytes()


async def _read(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
