"""``UpstreamProxy`` (what ``serve --upstream`` forwards with): any request, as it came, to the
upstream gateway on 127.0.0.1, and its answer back as it streams."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from advisor_middleware.cli import build_app
from advisor_middleware.proxy import UpstreamProxy
from advisor_middleware.routers.http import HTTPRouter

from .support.helpers import http_for, wait_until
from .support.servers import free_port, threaded, uvicorn_server
from .support.upstream import Reply, Script, scripted_host, text

pytestmark = pytest.mark.anyio


class Mirror:
    """An upstream that records each request and answers with what it saw (status from the
    request's ``x-status`` header)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.aborted = 0
        """Requests whose body never arrived whole."""
        self.received = 0
        """Body bytes received so far, over all requests."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.aborted += 1
                return
            body += message.get("body", b"")
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen = {
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "headers": headers,
            "body": body,
        }
        self.seen.append(seen)
        payload = json.dumps({**seen, "body": body.decode("latin-1")}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": int(headers.get("x-status", "200")),
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"X-Mirror", b"yes"),
                    (b"connection", b"keep-alive"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else payload})


@asynccontextmanager
async def proxied(upstream: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of an ``UpstreamProxy`` to ``upstream``; the proxy's pool is closed after."""
    proxy = UpstreamProxy(upstream, **options)
    try:
        async with http_for(proxy) as http:
            yield http
    finally:
        await proxy.aclose()


@pytest.fixture
async def mirror() -> AsyncIterator[tuple[str, Mirror]]:
    app = Mirror()
    async with uvicorn_server(app) as url:
        yield url, app


@pytest.mark.parametrize(
    ("method", "target", "raw_path", "query", "status"),
    [
        ("GET", "/v1/models?limit=2", "/v1/models", "limit=2", 200),
        ("POST", "/v1/messages/count_tokens", "/v1/messages/count_tokens", "", 200),
        ("PUT", "/some/%20odd%2Fpath?a=1&a=2", "/some/%20odd%2Fpath", "a=1&a=2", 201),
        ("DELETE", "/v1/files/f_1", "/v1/files/f_1", "", 418),
        ("POST", "/v1/messages?beta=true", "/v1/messages", "beta=true", 429),
    ],
)
async def test_any_request_is_forwarded_as_it_came(
    mirror: tuple[str, Mirror], method: str, target: str, raw_path: str, query: str, status: int
) -> None:
    url, upstream = mirror
    body = b'{"model":"m","messages":[]}' if method in ("POST", "PUT") else b""
    headers = {"x-api-key": "sk-caller", "x-status": str(status), "connection": "keep-alive, x-drop", "x-drop": "1"}
    app = build_app(None, upstream=url)
    async with http_for(app) as http:
        response = await http.request(method, target, content=body, headers=headers)
    await app.app.aclose()

    assert response.status_code == status
    assert response.headers["x-mirror"] == "yes"
    assert "connection" not in response.headers  # hop-by-hop, not forwarded
    (seen,) = upstream.seen
    assert (seen["method"], seen["raw_path"], seen["query"], seen["body"]) == (method, raw_path, query, body)
    assert seen["headers"]["x-api-key"] == "sk-caller"
    assert seen["headers"]["host"] == url.removeprefix("http://")
    assert seen["headers"]["via"].startswith("1.1 advisor-middleware-")
    assert seen["headers"]["accept-encoding"] == "gzip, deflate"  # the caller's (httpx's default)
    assert "x-drop" not in seen["headers"]  # named in the caller's connection header
    assert "x-advisor-leg" not in seen["headers"]
    assert response.json()["raw_path"] == raw_path


async def test_head_is_answered_without_a_body(mirror: tuple[str, Mirror]) -> None:
    url, upstream = mirror
    async with proxied(url) as http:
        response = await http.head("/")
    assert response.status_code == 200
    assert response.content == b""
    assert upstream.seen[0]["method"] == "HEAD"


async def test_a_chunked_request_body_streams_to_the_upstream(mirror: tuple[str, Mirror]) -> None:
    url, upstream = mirror
    parts = [b'{"a":', b'"' + b"x" * 100_000 + b'"', b"}"]

    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await anyio.sleep(0.01)

    async with uvicorn_server(UpstreamProxy(url)) as proxy, httpx.AsyncClient(base_url=proxy) as http:
        response = await http.post("/upload", content=chunks())
    assert response.status_code == 200
    (seen,) = upstream.seen
    assert seen["body"] == b"".join(parts)
    assert seen["headers"]["transfer-encoding"] == "chunked"


async def test_a_client_that_leaves_mid_body_aborts_the_upstream_request(
    mirror: tuple[str, Mirror], caplog: pytest.LogCaptureFixture
) -> None:
    url, upstream = mirror
    async with uvicorn_server(UpstreamProxy(url)) as proxy:
        host, port = proxy.removeprefix("http://").split(":")
        client = await anyio.connect_tcp(host, int(port))
        await client.send(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        await wait_until(lambda: upstream.received == 10, 30.0, "the proxy forwarding the body's first bytes")
        await client.aclose()
        await wait_until(lambda: upstream.aborted == 1, 30.0, "upstream request aborted")
    assert upstream.seen == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


async def test_the_answer_streams_as_the_upstream_sends_it(script: Script) -> None:
    # The upstream pauses after its third event; a proxy that buffered would hand the client
    # nothing before the upstream's stream is over.
    script.direct(Reply([text("first"), text("second")], hang_after=3, hang=2.0))
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with (
        uvicorn_server(scripted_host(script)) as upstream,
        uvicorn_server(build_app(None, upstream=upstream)) as proxy,
        httpx.AsyncClient(base_url=proxy) as http,
    ):
        upstream_done_at: list[bool] = []
        async with http.stream("POST", "/v1/messages", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    upstream_done_at.append(script.finished == ["direct"])
    assert len(upstream_done_at) == 9
    assert upstream_done_at[:3] == [False, False, False], "the first events waited for the whole answer"
    assert script.finished == ["direct"]


async def test_a_client_disconnect_cancels_the_upstream_request(script: Script) -> None:
    script.direct(Reply([text("words")], hang_after=2, hang=5.0))
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with (
        uvicorn_server(scripted_host(script)) as upstream,
        uvicorn_server(build_app(None, upstream=upstream)) as proxy,
    ):
        async with httpx.AsyncClient(base_url=proxy) as http, http.stream("POST", "/v1/messages", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    break
        await wait_until(lambda: script.cancelled == ["direct"], 30.0, "upstream request cancelled")
    assert script.finished == []


async def test_a_server_silent_after_the_response_does_not_hold_the_request() -> None:
    # The proxy's watcher ends on the http.disconnect a server sends once the response is out;
    # one that never sends it (this receive blocks for good after the body) must not keep the
    # request open: the call returns, with the whole answer sent, shortly after the response.
    # Through what serve --upstream runs: the middleware (a pass-through here), then the proxy.
    mirror = Mirror()
    async with uvicorn_server(mirror) as upstream:
        gateway = build_app(None, upstream=upstream)
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": b"{}", "more_body": False}
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/messages",
            "raw_path": b"/v1/messages",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
        }
        # The receive above never returns: only the linger's end lets the call return in time.
        with anyio.fail_after(30):
            await gateway(scope, receive, send)
        await gateway.app.aclose()
    assert sent[0]["status"] == 200
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["body"] == "{}"


async def test_compressed_answers_pass_through_compressed() -> None:
    payload = {"data": ["same words again and again"] * 200}

    async def big(request: Request) -> Response:
        return JSONResponse(payload)

    upstream_app = Starlette(routes=[Route("/v1/models", big)])
    upstream_app.add_middleware(GZipMiddleware, minimum_size=100)
    async with (
        uvicorn_server(upstream_app) as upstream,
        uvicorn_server(UpstreamProxy(upstream)) as proxy,
        httpx.AsyncClient(base_url=proxy) as http,
    ):
        async with http.stream("GET", "/v1/models", headers={"accept-encoding": "gzip"}) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        assert response.headers["content-encoding"] == "gzip"
        assert int(response.headers["content-length"]) == len(raw)
        assert json.loads(gzip.decompress(raw)) == payload
        # A client that asked for no compression gets none.
        async with http.stream("GET", "/v1/models", headers={"accept-encoding": "identity"}) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        assert "content-encoding" not in response.headers
        assert json.loads(raw) == payload


async def test_an_unreachable_upstream_is_a_502_in_anthropic_shape() -> None:
    async with proxied(f"http://127.0.0.1:{free_port()}") as http:
        response = await http.post("/v1/messages", json={})
    assert response.status_code == 502
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "ConnectError" in error["error"]["message"]


async def test_a_silent_upstream_is_a_504_timeout_error() -> None:
    release = anyio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response("late")

    async with uvicorn_server(Starlette(routes=[Route("/", slow)])) as upstream:
        async with proxied(upstream, timeout=httpx.Timeout(5.0, read=0.2)) as http:
            response = await http.get("/")
        release.set()
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"


async def test_a_request_that_already_passed_through_this_proxy_is_a_508(mirror: tuple[str, Mirror]) -> None:
    url, upstream = mirror
    proxy = UpstreamProxy(url)
    async with http_for(proxy) as http:
        looped = await http.get("/", headers={"via": "1.1 elsewhere, " + proxy.via.decode()})
        other = await http.get("/", headers={"via": "1.1 advisor-middleware-0123456789abcdef"})
    await proxy.aclose()
    assert looped.status_code == 508
    assert "loop" in looped.json()["error"]["message"]
    assert other.status_code == 200  # another proxy in the chain is fine
    assert len(upstream.seen) == 1
    assert upstream.seen[0]["headers"]["via"] == "1.1 advisor-middleware-0123456789abcdef, " + proxy.via.decode()


async def test_lifespan_is_answered_and_shutdown_closes_the_pool(mirror: tuple[str, Mirror]) -> None:
    url, _ = mirror
    app = build_app(None, upstream=url)
    client = app.app.client
    async with LifespanManager(app) as manager, http_for(manager.app) as http:
        assert (await http.get("/v1/models")).status_code == 200
        assert not client.is_closed
    assert client.is_closed
    # The router shares the proxy's pool: one client for forwarded requests and legs.
    assert app.router.client is client


def test_websockets_are_refused() -> None:
    with TestClient(UpstreamProxy("http://127.0.0.1:9")) as client, pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ws"):
            pass


# --- request-targets: only the configured upstream, only under its path -----------------------


class Trap:
    """A port that listens and never accepts: a connection made to it waits in the backlog,
    where :meth:`connections` finds it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    listening = Trap()
    yield listening
    listening.close()


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` over a
    socket as they are; the status and body of the answer (the connection is closed after)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + b"\r\nconnection: close\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in headers.lower():
        payload = dechunk(payload)
    return int(status_line.split()[1]), payload


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


@pytest.mark.parametrize(
    "target",
    [
        "@127.0.0.1:{trap}/admin",  # the base's host would become userinfo
        "1/x",  # a digit more on the base's port
        ":{trap}/x",
        "http://127.0.0.1:{trap}/y",  # absolute form
        "*",  # asterisk form
        "127.0.0.1:{trap}",  # authority form
        "/../admin",  # out of the base path, resolved by the URL parser
        "/v1/%2e%2E/admin",
        "/v1/a%2F..%2F..%2Fadmin",  # a server that decodes %2F first
        "/v1/..\\admin",  # a server that reads a backslash as a slash
        "/./v1/messages",
        "/x?a#@127.0.0.1:{trap}/",
    ],
)
async def test_a_request_target_not_in_origin_form_is_a_400_and_reaches_nobody(
    mirror: tuple[str, Mirror], trap: Trap, target: str
) -> None:
    url, upstream = mirror
    app = build_app(None, upstream=url + "/gw")
    async with uvicorn_server(app) as proxy_url:
        raw = target.format(trap=trap.port).encode()
        status, payload = await anyio.to_thread.run_sync(
            raw_request, proxy_url, b"GET " + raw + b" HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: sk-caller"
        )
    assert status == 400
    error = json.loads(payload)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert trap.connections() == 0
    assert upstream.seen == []


async def test_an_origin_form_target_goes_under_the_base_path(mirror: tuple[str, Mirror], trap: Trap) -> None:
    url, upstream = mirror
    app = build_app(None, upstream=url + "/gw/")
    async with uvicorn_server(app) as proxy_url:
        target = f"//127.0.0.1:{trap.port}/x?q=@127.0.0.1:{trap.port}".encode()
        status, _ = await anyio.to_thread.run_sync(raw_request, proxy_url, b"GET " + target + b" HTTP/1.1\r\nhost: a")
    assert status == 200
    (seen,) = upstream.seen
    assert (seen["raw_path"], seen["query"]) == (f"/gw//127.0.0.1:{trap.port}/x", f"q=@127.0.0.1:{trap.port}")
    assert trap.connections() == 0


def test_base_urls_with_a_query_or_fragment_are_refused() -> None:
    for base in ("http://gw:4000/?key=1", "http://gw:4000/#x", "ftp://gw", "http://"):
        with pytest.raises(ValueError):
            UpstreamProxy(base)
        with pytest.raises(ValueError):
            HTTPRouter(base)


# What a target is made of: a start, something that looks like a host, then path pieces. Every
# request a server lets through must reach the configured upstream, under its base path, or be
# answered by the proxy itself; none may reach the trap (TRAP stands for its port).
TARGET_STARTS = ["", "/", "//", "@", "http://", "https://", "\\\\", "*", "1", ":", "..", "%2e%2e/", "/v1/messages"]
TARGET_HOSTS = ["", "127.0.0.1:TRAP", "@127.0.0.1:TRAP", "localhost:TRAP", "TRAP", "[::1]:TRAP", "u:p@127.0.0.1:TRAP"]
TARGET_PIECES = ["/", "@", ":", "TRAP", "?", "#", ".", "..", "%2e", "%2F", "\\", "v1", "messages", ";", "%40", "a=b"]
HEADER_CHOICES = [
    (b"host", b"127.0.0.1:TRAP"),
    (b"x-forwarded-host", b"127.0.0.1:TRAP"),
    (b"forwarded", b"host=127.0.0.1:TRAP;proto=http"),
    (b"x-forwarded-proto", b"https"),
    (b"connection", b"x-api-key, host"),
    (b"proxy-connection", b"keep-alive"),
    (b"proxy-authorization", b"Basic eDp5"),
    (b"via", b"1.1 127.0.0.1:TRAP"),
    (b"referer", b"http://127.0.0.1:TRAP/"),
    (b"x-api-key", b"sk-caller"),
    (b"anthropic-beta", b"advisor-tool-2026-03-01"),
    (b"expect", b"100-continue"),
]
ADVISOR_BODY = json.dumps(
    {
        "model": "m",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "a"}],
    }
).encode()


@st.composite
def proxied_requests(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    start = draw(st.sampled_from(TARGET_STARTS))
    host = draw(st.sampled_from(TARGET_HOSTS))
    pieces = draw(st.lists(st.sampled_from(TARGET_PIECES), max_size=6))
    method = draw(st.sampled_from([b"POST", b"GET", b"PUT", b"OPTIONS", b"CONNECT"]))
    headers = draw(st.lists(st.sampled_from(HEADER_CHOICES), max_size=4, unique=True))
    body = ADVISOR_BODY if method == b"POST" and draw(st.booleans()) else b""
    return method, (start + host + "".join(pieces)).encode(), headers, body


@dataclass
class UnderAttack:
    proxy_url: str
    upstream_url: str
    upstream: Mirror
    trap: Trap
    sent: list[httpx.URL]
    """Every URL the proxy's connection pool (forwarded requests and legs alike) sent to."""


@settings(deadline=None, max_examples=150)
@given(request=proxied_requests())
def test_only_the_configured_upstream_is_ever_contacted(
    request: tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes], under_attack: UnderAttack
) -> None:
    method, target, headers, body = request
    port = str(under_attack.trap.port).encode()
    lines = [method + b" " + target.replace(b"TRAP", port) + b" HTTP/1.1"]
    if not any(name == b"host" for name, _ in headers):
        lines.append(b"host: 127.0.0.1")
    lines += [name + b": " + value.replace(b"TRAP", port) for name, value in headers]
    lines.append(b"content-length: " + str(len(body)).encode())
    under_attack.upstream.seen.clear()
    under_attack.sent.clear()
    status, _ = raw_request(under_attack.proxy_url, b"\r\n".join(lines), body)
    assert status != 500
    assert under_attack.trap.connections() == 0
    configured = httpx.URL(under_attack.upstream_url)
    for url in under_attack.sent:
        assert (url.scheme, url.host, url.port, url.userinfo) == (
            configured.scheme,
            configured.host,
            configured.port,
            b"",
        )
        assert url.raw_path.startswith(b"/gw/")
    for seen in under_attack.upstream.seen:  # the forwarded request, or the legs of an advisor request
        assert seen["raw_path"].startswith("/gw/")
        assert "/../" not in seen["raw_path"] + "/" and "/./" not in seen["raw_path"] + "/"


@pytest.fixture(scope="module")
def under_attack() -> Iterator[UnderAttack]:
    """``serve --upstream UPSTREAM/gw`` (the CLI's app on uvicorn), its upstream, a trap, and
    the URLs the app's connection pool sent to."""
    upstream = Mirror()
    trap = Trap()
    sent: list[httpx.URL] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request.url)

    with threaded(uvicorn_server, upstream) as upstream_url:
        app = build_app(None, upstream=upstream_url + "/gw")
        app.app.client.event_hooks = {"request": [record]}  # the pool the proxy and the router share
        with threaded(uvicorn_server, app) as proxy_url:
            yield UnderAttack(proxy_url, upstream_url, upstream, trap, sent)
    trap.close()


# --- framing: content-length alongside transfer-encoding ----------------------------------------


@asynccontextmanager
async def raw_upstream(answer: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An upstream that writes ``answer`` as it is (status line, headers, body) to each request,
    after reading the request's head; yields its URL and the heads it read."""
    heads: list[bytes] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            heads.append(received)
            await stream.send(answer)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"http://127.0.0.1:{port}", heads
        tg.cancel_scope.cancel()


async def test_an_answer_with_both_content_length_and_chunks_is_relayed_whole() -> None:
    body = b"longer than the declared five bytes"
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n"
    answer += f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    async with raw_upstream(answer) as (url, _), uvicorn_server(build_app(None, upstream=url)) as proxy_url:
        status, payload = await anyio.to_thread.run_sync(raw_request, proxy_url, b"GET /x HTTP/1.1\r\nhost: a")
    assert (status, payload) == (200, body)


async def test_a_request_with_both_content_length_and_chunks_is_forwarded_whole(mirror: tuple[str, Mirror]) -> None:
    url, upstream = mirror
    body = b"hello, a chunked body"
    head = b"POST /v1/files HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked"
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    async with uvicorn_server(build_app(None, upstream=url)) as proxy_url:
        status, _ = await anyio.to_thread.run_sync(raw_request, proxy_url, head, chunked)
    assert status == 200
    (seen,) = upstream.seen
    assert seen["body"] == body


async def test_an_upstream_that_answers_garbage_is_a_502() -> None:
    async with raw_upstream(b"\x00\x01 not http at all\r\n\r\n") as (url, _):
        async with uvicorn_server(build_app(None, upstream=url)) as proxy_url:
            status, payload = await anyio.to_thread.run_sync(raw_request, proxy_url, b"GET /x HTTP/1.1\r\nhost: a")
    assert status == 502
    assert json.loads(payload)["error"]["type"] == "api_error"
