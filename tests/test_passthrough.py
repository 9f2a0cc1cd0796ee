"""Everything that is not an advisor request reaches the wrapped app untouched."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from advisor_middleware import AdvisorMiddleware
from advisor_middleware._types import Scope

from .support.helpers import (
    ONE_CONSULT,
    assert_host_stream,
    block_types,
    consult,
    http_for,
    plain_usage,
    post,
    read_body,
)
from .support.upstream import ADVISOR_TOOL, Reply, Script, reply_events, scripted_host, sse, text, tool_use

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Starlette]


@dataclass
class Call:
    scope: Scope
    body: bytes

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.scope["headers"]}


class Echo:
    """A bare ASGI app that records each request (scope and exact body) and answers 200."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive)
        self.calls.append(Call(dict(scope), body))
        payload = json.dumps({"echo": scope["path"], "method": scope["method"]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"x-echo", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class PathLog:
    """ASGI middleware noting the path, root_path and query of every http request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str, bytes, str]] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            leg = dict(scope["headers"]).get(b"x-advisor-leg", b"direct").decode()
            self.seen.append((scope["path"], scope.get("root_path", ""), scope.get("query_string", b""), leg))
        await self.app(scope, receive, send)


def advisor_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "exec",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [ADVISOR_TOOL],
    }
    body.update(overrides)
    return body


ODD_BYTES = (
    b'{ "stream" :false,\n\t"messages":[ {"content":"hi  there","role":"user"} ],'
    b'"model":"exec" ,  "max_tokens":5,"metadata":{"user_id":"\\u00e9t\\u00e9"}}  \n'
)


# --- byte-for-byte pass-through ---------------------------------------------------------------


async def test_plain_request_reaches_the_host_byte_for_byte(make_app: MakeApp, script: Script) -> None:
    script.direct(Reply([text("hello")], input_tokens=3, output_tokens=2))
    headers = {
        "content-type": "application/json",
        "x-api-key": "sk-x",
        "anthropic-beta": "advisor-tool-2026-03-01,foo-beta",
    }
    response = await post(make_app(), ODD_BYTES, headers)
    assert response.status_code == 200
    (recorded,) = script.requests
    assert recorded.role == "direct"
    assert recorded.raw == ODD_BYTES
    # Headers are the caller's own: the advisor beta is not filtered on a pass-through.
    assert recorded.headers["anthropic-beta"] == "advisor-tool-2026-03-01,foo-beta"
    assert recorded.headers["x-api-key"] == "sk-x"
    assert recorded.headers["content-length"] == str(len(ODD_BYTES))
    message = response.json()
    assert message["content"] == [{"type": "text", "text": "hello"}]
    assert message["usage"] == plain_usage(3, 2)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(ODD_BYTES, id="no-advisor-word"),
        pytest.param(
            b'{"model":"exec","max_tokens":5,  "messages":[{"role":"user","content":"ask my advisor"}]}',
            id="advisor-word-in-text",
        ),
        pytest.param(
            b'{"model":"exec","max_tokens":5,"messages":[{"role":"user","content":"x"}],'
            b'"tools":[{"name":"advisor","input_schema":{"type":"object"}}]}',
            id="client-tool-named-advisor",
        ),
        pytest.param(
            b'{"model":"exec","max_tokens":5,"messages":[{"role":"user","content":"x"}],'
            b'"tools":{"type":"advisor_20260301"}}',
            id="tools-not-a-list",
        ),
        pytest.param(b'{"model": "exec", "messages": [', id="invalid-json"),
        pytest.param(b'["advisor_20260301"]', id="json-array"),
        pytest.param(b"advisor", id="not-json"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_bodies_replayed_untouched(raw: bytes) -> None:
    echo = Echo()
    response = await post(AdvisorMiddleware(echo), raw, {"content-type": "application/json"})
    assert response.status_code == 200
    assert response.headers["x-echo"] == "1"
    (call,) = echo.calls
    assert call.body == raw
    assert call.scope["path"] == "/v1/messages"
    assert "x-advisor-leg" not in call.headers


async def test_streaming_pass_through_is_the_hosts_own_stream(make_app: MakeApp, script: Script) -> None:
    reply = Reply([text("streamed")])
    script.direct(reply)
    body = {"model": "exec", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    response = await post(make_app(), json=body)
    assert_host_stream(response.content, reply)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_untouched(method: str) -> None:
    echo = Echo()
    raw = json.dumps(advisor_body()).encode()
    async with http_for(AdvisorMiddleware(echo)) as http:
        response = await http.request(method, "/v1/messages", content=raw)
    assert response.json() == {"echo": "/v1/messages", "method": method}
    (call,) = echo.calls
    assert call.body == raw


@pytest.mark.parametrize(
    "path",
    [
        "/v1/messages/count_tokensx",
        "/v1/messages/batches/msgbatch_1/cancel",
        "/v1/messagesx",
        "/v2/messages",
        "/api/v1/messages",
        "/",
        "/v1/complete",
    ],
)
async def test_other_paths_untouched(path: str) -> None:
    echo = Echo()
    raw = json.dumps(advisor_body()).encode()
    response = await post(AdvisorMiddleware(echo), raw, {"content-type": "application/json"}, path=path)
    assert response.json() == {"echo": path, "method": "POST"}
    (call,) = echo.calls
    assert call.body == raw
    assert "x-advisor-leg" not in call.headers


async def test_a_leg_request_passes_through_untouched() -> None:
    echo = Echo()
    raw = json.dumps(advisor_body()).encode()
    await post(AdvisorMiddleware(echo), raw, {"x-advisor-leg": "executor"})
    (call,) = echo.calls
    assert call.body == raw
    assert call.headers["x-advisor-leg"] == "executor"


@pytest.mark.parametrize("model", ["claude-opus-4-8", "claude-sonnet-5"])
async def test_native_executor_passes_through(make_app: MakeApp, script: Script, model: str) -> None:
    script.direct(Reply([text("native")]))
    raw = json.dumps(advisor_body(model=model)).encode()
    app = make_app(native_executor=lambda m: m.startswith("claude-"))
    response = await post(app, raw, {"anthropic-beta": "advisor-tool-2026-03-01"})
    assert response.status_code == 200
    (recorded,) = script.requests
    assert recorded.role == "direct"
    assert recorded.raw == raw
    assert recorded.headers["anthropic-beta"] == "advisor-tool-2026-03-01"
    assert response.json()["content"] == [{"type": "text", "text": "native"}]


async def test_non_native_executor_is_orchestrated(make_app: MakeApp, script: Script) -> None:
    consult(script)
    app = make_app(native_executor=lambda m: m.startswith("claude-"))
    response = await post(app, json=advisor_body(model="gpt-5"))
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    assert block_types(response.json()["content"]) == ONE_CONSULT


# --- paths: trailing slash, query, root_path, mounts ------------------------------------------


def host_with_slash_route(script: Script) -> Starlette:
    app = scripted_host(script)
    endpoint = app.routes[0].endpoint  # type: ignore[attr-defined]
    app.router.routes.append(Route("/v1/messages/", endpoint, methods=["POST"]))
    return app


@pytest.mark.parametrize(
    ("url", "path", "query"),
    [
        ("/v1/messages/", "/v1/messages/", b""),
        ("/v1/messages?beta=true", "/v1/messages", b"beta=true"),
        ("/v1/messages/?beta=true", "/v1/messages/", b"beta=true"),
    ],
)
async def test_trailing_slash_and_query(script: Script, url: str, path: str, query: bytes) -> None:
    consult(script)
    host = host_with_slash_route(script)
    logged = PathLog(AdvisorMiddleware(PathLog(host)))
    inner = logged.app.app
    response = await post(logged, json=advisor_body(), path=url)
    assert response.status_code == 200
    assert block_types(response.json()["content"]) == ONE_CONSULT
    assert logged.seen == [(path, "", query, "direct")]
    # Every leg re-enters the app on the configured path, with the caller's query.
    route = "/v1/messages"
    assert inner.seen == [(route, "", query, "executor"), (route, "", query, "advisor"), (route, "", query, "executor")]


def mounted_with_inner_middleware(script: Script) -> Starlette:
    inner = scripted_host(script)
    inner.add_middleware(AdvisorMiddleware)
    return Starlette(routes=[Mount("/api", app=inner)])


def mounted_with_outer_middleware(script: Script) -> Starlette:
    outer = Starlette(routes=[Mount("/api", app=scripted_host(script))])
    outer.add_middleware(AdvisorMiddleware, paths={"/api/v1/messages"})
    return outer


def fastapi_mounted_with_inner_middleware(script: Script) -> FastAPI:
    inner = FastAPI(routes=scripted_host(script).routes)
    inner.add_middleware(AdvisorMiddleware)
    outer = FastAPI()
    outer.mount("/api", inner)
    return outer


def fastapi_mounted_with_outer_middleware(script: Script) -> FastAPI:
    outer = FastAPI()
    outer.mount("/api", FastAPI(routes=scripted_host(script).routes))
    outer.add_middleware(AdvisorMiddleware, paths={"/api/v1/messages"})
    return outer


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(mounted_with_inner_middleware, id="app-mounted-under-a-prefix"),
        pytest.param(mounted_with_outer_middleware, id="middleware-on-the-outer-app-with-paths"),
        pytest.param(fastapi_mounted_with_inner_middleware, id="fastapi-app-mounted-under-a-prefix"),
        pytest.param(fastapi_mounted_with_outer_middleware, id="fastapi-middleware-on-the-outer-app-with-paths"),
    ],
)
async def test_mounted_app(script: Script, build: Callable[[Script], Starlette | FastAPI]) -> None:
    consult(script)
    response = await post(build(script), json=advisor_body(), path="/api/v1/messages")
    assert response.status_code == 200
    assert block_types(response.json()["content"]) == ONE_CONSULT
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]


async def test_root_path_from_the_server(script: Script) -> None:
    consult(script)
    host = scripted_host(script)
    app = AdvisorMiddleware(host)

    async def with_root(scope: Scope, receive: Any, send: Any) -> None:
        # What uvicorn --root-path /api does: the full path, with root_path set.
        if scope["type"] == "http":
            scope = {**scope, "root_path": "/api", "path": "/api" + scope["path"]}
        await app(scope, receive, send)

    response = await post(with_root, json=advisor_body())
    assert response.status_code == 200
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]


async def test_root_path_only_strips_at_a_slash_boundary() -> None:
    echo = Echo()
    app = AdvisorMiddleware(echo)

    async def with_root(scope: Scope, receive: Any, send: Any) -> None:
        await app({**scope, "root_path": "/ap", "path": "/api/v1/messages"}, receive, send)

    raw = json.dumps(advisor_body()).encode()
    await post(with_root, raw)
    (call,) = echo.calls
    assert call.body == raw


async def test_outer_app_with_default_paths_passes_through(script: Script) -> None:
    script.direct(Reply([text("direct")]))
    outer = Starlette(routes=[Mount("/api", app=scripted_host(script))])
    outer.add_middleware(AdvisorMiddleware)
    raw = json.dumps(advisor_body()).encode()
    response = await post(outer, raw, path="/api/v1/messages")
    assert response.json()["content"] == [{"type": "text", "text": "direct"}]
    (recorded,) = script.requests
    assert recorded.role == "direct"
    assert recorded.raw == raw


# --- lifespan and websockets ------------------------------------------------------------------


async def test_lifespan_reaches_the_app_and_its_state_reaches_the_legs() -> None:
    events: list[str] = []
    leg_states: list[tuple[str, str]] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    async def ready(request: Request) -> Response:
        return PlainTextResponse(request.state.db)

    async def messages(request: Request) -> Response:
        body = await request.json()
        leg = request.headers.get("x-advisor-leg", "direct")
        leg_states.append((leg, request.state.db))
        if leg == "advisor":
            reply = Reply([text("Advice.")])
        elif len(body["messages"]) == 1:
            reply = Reply([tool_use("advisor", id="toolu_1")], stop_reason="tool_use")
        else:
            reply = Reply([text("Done.")])

        async def stream() -> AsyncIterator[bytes]:
            for event in reply_events(reply, str(body["model"])):
                yield sse(event)

        return StreamingResponse(stream(), media_type="text/event-stream")

    app = Starlette(
        routes=[Route("/ready", ready), Route("/v1/messages", messages, methods=["POST"])], lifespan=lifespan
    )
    app.add_middleware(AdvisorMiddleware)
    async with LifespanManager(app) as manager:
        assert events == ["startup"]
        async with http_for(manager.app) as http:
            assert (await http.get("/ready")).text == "connected"
            response = await http.post("/v1/messages", json=advisor_body())
    assert events == ["startup", "shutdown"]
    assert [b["type"] for b in response.json()["content"]] == ["server_tool_use", "advisor_tool_result", "text"]
    assert leg_states == [("executor", "connected"), ("advisor", "connected"), ("executor", "connected")]


async def test_lifespan_scope_reaches_a_bare_app() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope)
        assert scope["type"] == "lifespan"
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})

    async with LifespanManager(AdvisorMiddleware(app)):
        pass
    assert [s["type"] for s in seen] == ["lifespan"]


def test_websocket_untouched() -> None:
    async def echo_ws(websocket: WebSocket) -> None:
        await websocket.accept()
        message = await websocket.receive_text()
        await websocket.send_text(f"{websocket.url.path}:{message}")
        await websocket.close()

    async def never(request: Request) -> Response:
        return JSONResponse({"never": True})

    app = Starlette(
        routes=[
            WebSocketRoute("/ws", echo_ws),
            WebSocketRoute("/v1/messages", echo_ws),
            Route("/v1/never", never),
        ]
    )
    app.add_middleware(AdvisorMiddleware)
    with TestClient(app) as client:
        for path in ("/ws", "/v1/messages"):
            with client.websocket_connect(path) as ws:
                ws.send_text(json.dumps(advisor_body()))
                assert ws.receive_text() == f"{path}:{json.dumps(advisor_body())}"


class ChunkEcho:
    """Records the ``http.request`` chunks exactly as the app receives them."""

    def __init__(self) -> None:
        self.chunks: list[tuple[bytes, bool]] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.chunks.append((message["body"], message.get("more_body", False)))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def send_chunks(app: Any, chunks: list[bytes]) -> list[dict[str, Any]]:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()  # a client that stays for the answer
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/messages",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
    }
    await app(scope, receive, send)
    return sent


async def test_a_plain_body_reaches_the_app_in_the_chunks_it_came_in() -> None:
    raw = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 300}]})
    chunks = [raw[i : i + 64].encode() for i in range(0, len(raw), 64)]
    echo = ChunkEcho()
    await send_chunks(AdvisorMiddleware(echo), chunks)
    assert echo.chunks == [(c, i < len(chunks) - 1) for i, c in enumerate(chunks)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
@pytest.mark.parametrize("offset", [0, 1, 3, 6])
async def test_the_word_advisor_split_across_chunks_is_found(size: int, offset: int) -> None:
    # The tool entry is cut into chunks of `size` bytes, shifted by `offset`, so "advisor" is
    # split between chunks at every position: the request must still be orchestrated.
    raw = json.dumps({**advisor_body(), "stream": False}).encode()
    cuts = [0, *range(offset or size, len(raw), size), len(raw)]
    chunks = [raw[a:b] for a, b in itertools.pairwise(cuts) if b > a]
    assert b"".join(chunks) == raw
    echo = ChunkEcho()
    sent = await send_chunks(AdvisorMiddleware(echo), chunks)
    # Orchestrated: the echo got leg requests (one chunk each, with the function tool), not the
    # client's chunks, and could not answer them as a model would (a 502 for the leg).
    assert echo.chunks, "the host saw no leg"
    assert all(not more for _, more in echo.chunks)
    assert b"advisor_20260301" not in b"".join(c for c, _ in echo.chunks)
    assert sent[0]["type"] == "http.response.start"


def chunked(raw: bytes, size: int) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


@pytest.mark.parametrize(
    "text",
    [
        "Ask my advisor, then the Advisor's deputy; advisors_notes.md too.",
        'She said "use the advisor_20260301 tool", word for word.',  # a quote in the text: escaped
    ],
)
async def test_advisor_in_prose_is_not_parsed(text: str) -> None:
    # Every name the middleware acts on is a JSON string starting "advisor"; prose that mentions
    # one is none of them. The body goes on in the chunks it came in, as with no mention at all
    # (after a parse it would go as one joined chunk: the next test).
    raw = json.dumps({"model": "exec", "max_tokens": 5, "messages": [{"role": "user", "content": text * 20}]})
    assert "advisor" in raw
    chunks = chunked(raw.encode(), 50)
    echo = ChunkEcho()
    await send_chunks(AdvisorMiddleware(echo), chunks)
    assert echo.chunks == [(c, i < len(chunks) - 1) for i, c in enumerate(chunks)]


@pytest.mark.parametrize(
    "entry",
    [
        # A client's own tool named advisor, and one whose name only starts so: read, then passed.
        {"name": "advisor", "input_schema": {"type": "object"}},
        {"name": "advisor_notes", "input_schema": {"type": "object"}},
    ],
)
async def test_a_string_starting_advisor_is_parsed_then_passed(entry: dict[str, Any]) -> None:
    raw = json.dumps(
        {"model": "exec", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 200}], "tools": [entry]}
    ).encode()
    echo = ChunkEcho()
    await send_chunks(AdvisorMiddleware(echo), chunked(raw, 50))
    assert echo.chunks == [(raw, False)]  # parsed (so joined), found to be no advisor request


def visor_prose(mentions: int) -> str:
    # Each mention holds "visor" without '"ad' right before it: a hit the scan rejects.
    return " ".join(["the supervisor asked my advisor"] * (mentions // 2) + ["a visor"] * (mentions % 2))


@pytest.mark.parametrize("mentions", [0, 1, 15, 16, 17, 60])
async def test_the_tool_after_many_near_misses_is_found(mentions: int) -> None:
    # The scan rejects hits of "visor" one by one, then hands the rest of the body to one
    # bytes.find: the tool after any number of them, in one chunk, is still found.
    body = advisor_body()
    body["messages"][0]["content"] = visor_prose(mentions)
    raw = json.dumps({**body, "stream": False}).encode()
    assert raw.count(b"visor") - raw.count(b'"advisor') == mentions  # the near misses
    assert raw.index(b'"advisor') > raw.index(b'"tools"') > raw.index(b'"messages"')  # all before the tool
    echo = ChunkEcho()
    sent = await send_chunks(AdvisorMiddleware(echo), [raw])
    assert echo.chunks, "the host saw no leg"
    assert b"advisor_20260301" not in b"".join(c for c, _ in echo.chunks)  # legs, not the client's body
    assert sent[0]["type"] == "http.response.start"


@pytest.mark.parametrize("mentions", [1, 16, 60])
async def test_near_misses_alone_are_not_parsed(mentions: int) -> None:
    message = {"role": "user", "content": visor_prose(mentions)}
    raw = json.dumps({"model": "exec", "max_tokens": 5, "messages": [message]})
    assert raw.count("visor") == mentions
    chunks = [raw[: len(raw) - 10].encode(), raw[len(raw) - 10 :].encode()]
    echo = ChunkEcho()
    await send_chunks(AdvisorMiddleware(echo), chunks)
    assert echo.chunks == [(chunks[0], True), (chunks[1], False)]  # as they came: not joined for a parse


_ADVISOR_TOOL = {"type": "advisor_20260301", "name": "advisor", "model": "adv"}
_ADVISOR_BLOCKS = [
    {"type": "server_tool_use", "id": "srvtoolu_x", "name": "advisor", "input": {}},
    {"type": "advisor_tool_result", "tool_use_id": "srvtoolu_x", "content": {"type": "advisor_result", "text": "t"}},
    {"type": "tool_addition", "tool": {"type": "advisor_20260301", "name": "advisor"}},
    {"type": "tool_removal", "tool": {"name": "advisor"}},
]


@pytest.mark.parametrize(
    "data",
    [{"tools": [_ADVISOR_TOOL], "messages": []}]
    + [{"messages": [{"role": "assistant", "content": [block]}]} for block in _ADVISOR_BLOCKS],
)
def test_every_request_that_involves_the_advisor_holds_the_byte_scans_needle(data: dict[str, Any]) -> None:
    # The middleware parses only bodies holding the needle; that is safe because every request
    # the predicate accepts holds it, however it is encoded.
    from advisor_middleware.classify import involves_advisor

    assert involves_advisor(data)
    assert b'"advisor' in json.dumps(data).encode()
    assert b'"advisor' in json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "data",
    [
        {"tools": [{"name": "advisor", "input_schema": {"type": "object"}}], "messages": []},
        {"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "name": "web_search"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "tool_addition", "tool": {"name": "Bash"}}]}]},
        {"messages": "advisor_tool_result", "tools": "advisor_20260301"},
    ],
)
def test_requests_without_advisor_parts_do_not_involve_it(data: dict[str, Any]) -> None:
    from advisor_middleware.classify import involves_advisor

    assert not involves_advisor(data)
