"""``HTTPRouter``: run each leg as an HTTP request to a remote Anthropic-compatible gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import unquote_to_bytes

import httpx

from ..errors import UpstreamError
from .base import Batch, BatchRouter, Leg, OnBatch, end_to_end, forwarded_headers
from .events import AnswerReader, json_message_events, too_large

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
"""Ten seconds to connect; then up to ten minutes between two reads (a model thinking quietly)."""

# Set on a leg by the router itself: the caller's would describe the caller's body, and httpx
# writes host from the URL.
_LEG_OWN = frozenset({b"host", b"content-type", b"content-length"})


def shown_url(base: httpx.URL, path: bytes = b"") -> str:
    """``base`` plus ``path`` as error messages show it: without credentials."""
    return str(base.copy_with(username=None, password=None)).rstrip("/") + path.decode("latin-1")


class InvalidTarget(ValueError):
    """A path or query that cannot be put under a configured base URL."""


def parse_base_url(value: str) -> httpx.URL:
    """A configured base URL, checked: ``http`` or ``https``, a host, no query or fragment.
    Every URL the middleware connects to is this plus a path (:func:`upstream_url`)."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"base_url {value!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http:// or https:// URL, not {value!r}")
    if url.query or url.fragment:
        raise ValueError(f"base_url must have no query or fragment, not {value!r}")
    return url


def upstream_url(base: httpx.URL, path: bytes, query: bytes = b"") -> httpx.URL:
    """``base`` with ``path`` appended to its path, and ``query``. ``path`` must be in origin
    form (it starts with ``/``) with no ``.`` or ``..`` segment, however a server might read
    one (with escapes, between backslashes), so the URL stays on the base's scheme, host and
    port and under its path; anything else raises :class:`InvalidTarget`."""
    if not path.startswith(b"/"):
        raise InvalidTarget("the request-target must be a path that starts with '/'")
    if any(segment in (b".", b"..") for segment in unquote_to_bytes(path).replace(b"\\", b"/").split(b"/")):
        raise InvalidTarget("the request path must have no '.' or '..' segment")
    raw_path = base.raw_path.rstrip(b"/") + path + (b"?" + query if query else b"")
    try:
        url = base.copy_with(raw_path=raw_path)
    except (httpx.InvalidURL, UnicodeError):
        raise InvalidTarget("the request-target is not a valid URL path and query") from None
    if (url.scheme, url.host, url.port, url.userinfo) != (base.scheme, base.host, base.port, base.userinfo):
        raise InvalidTarget("the request-target would leave the configured base URL")  # defence in depth
    return url


class PooledClient:
    """A configured base URL (:func:`parse_base_url`) and one ``httpx.AsyncClient`` (one
    connection pool), created on first use.

    A client passed in is used as it is and never closed here; the one created here keeps no
    cookies (a ``Set-Cookie`` answering one caller must never ride along with another caller's
    request) and is closed by :meth:`aclose`.
    """

    def __init__(self, base_url: str, client: httpx.AsyncClient | None, timeout: httpx.Timeout | float | None) -> None:
        self._base = parse_base_url(base_url)
        self.base_url = str(self._base).rstrip("/")
        self._shown = shown_url(self._base)
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
    """Answers legs by POSTing them to ``base_url + path`` (default ``/v1/messages``) with the
    caller's query and cleaned headers, and reads the answer as it streams (docs/routers.md).

    The caller's headers (their credentials included) go to this one base URL and nowhere else:
    redirects are never followed and nothing in the request body chooses where a leg goes.
    ``timeout`` applies to every leg; past it the leg is ``504 timeout_error``, any other
    transport failure ``502 api_error``. ``client``: an ``httpx.AsyncClient`` to share (left
    open); without one, a pooled client is created on first use and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        path: str = "/v1/messages",
    ) -> None:
        super().__init__(base_url, client, timeout)
        self._path = b"/" + path.lstrip("/").encode()
        self.url = str(upstream_url(self._base, self._path))
        self._shown = shown_url(self._base, self._path)

    async def push(self, leg: Leg, on_batch: OnBatch) -> None:
        """Await ``on_batch`` with each network read's events, as they arrive (a loop in the
        caller's task: no async generator between the socket and the relay)."""
        async with self._exchange(leg) as response:
            if response.headers.get("content-type", "").lower().startswith("text/event-stream"):
                await _relay(response, leg, on_batch)
                return
            raw = await _read(response, leg.max_bytes)
        await on_batch([*json_message_events(raw)])

    @asynccontextmanager
    async def _exchange(self, leg: Leg) -> AsyncIterator[httpx.Response]:
        """POST the leg; the answer once it is known to be a 200. Transport failures, while
        the answer is read inside the block too, come out as UpstreamError."""
        try:
            url = upstream_url(self._base, self._path, bytes(leg.scope.get("query_string") or b""))
        except InvalidTarget as exc:
            raise UpstreamError(400, {"type": "invalid_request_error", "message": str(exc)}) from None
        headers = end_to_end(leg.headers, _LEG_OWN)
        # Identity: the SSE must reach us as it is produced, not held back by a compressor.
        headers += [(b"content-type", b"application/json"), (b"accept-encoding", b"identity")]
        try:
            async with self.client.stream(
                "POST", url, content=leg.encode(), headers=headers, timeout=self.timeout, follow_redirects=False
            ) as response:
                leg.response_headers[:] = response.headers.raw
                if response.status_code != 200:
                    kept = forwarded_headers(response.headers.raw)
                    raise UpstreamError(response.status_code, await _read(response, leg.max_bytes), kept)
                yield response
        except httpx.TimeoutException as exc:
            kind = type(exc).__name__
            message = f"upstream {kind} on {self._shown}"
            raise UpstreamError(504, {"type": "timeout_error", "message": message}, detail=message) from exc
        except httpx.RequestError as exc:
            # The transport's own words may quote what the upstream sent: kept out of the logs.
            detail = f"upstream {self._shown} failed: {type(exc).__name__}"
            message = f"{detail}: {exc}"
            raise UpstreamError(502, {"type": "api_error", "message": message}, detail=detail) from exc


async def _relay(response: httpx.Response, leg: Leg, on_batch: OnBatch) -> None:
    """Hand each network read of an SSE answer to ``on_batch`` as one group of events."""
    reader = AnswerReader(leg.max_bytes, leg.raw_deltas)
    # The bytes as read: asked for identity, most gateways send them so, and httpx's decoding
    # layer (a decoder and a chunker per read) is skipped. One that compresses anyway is decoded.
    identity = response.headers.get("content-encoding", "").strip().lower() in ("", "identity")
    async for chunk in response.aiter_raw() if identity else response.aiter_bytes():
        batch: Batch = []
        error = reader.read(chunk, batch)
        if batch:  # what came before an error is still the leg's output
            await on_batch(batch)
        if error is not None:
            raise error


async def _read(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
