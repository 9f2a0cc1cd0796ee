"""``HTTPRouter``: legs sent over real HTTP to the scripted gateway served by uvicorn on 127.0.0.1.

The gateway under test is what ``serve --upstream`` builds: ``AdvisorMiddleware`` around an
``UpstreamProxy``, with an ``HTTPRouter`` to the same upstream.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from advisor_middleware import AdvisorMiddleware, HTTPRouter, Leg, UpstreamError
from advisor_middleware.cli import build_app
from advisor_middleware.routers import leg_headers

from .support.helpers import ONE_CONSULT, block_types, call, consult, post, sdk_for, wait_until
from .support.servers import free_port, uvicorn_server
from .support.upstream import (
    ADVISOR_TOOL,
    ErrorEvent,
    Fail,
    Reply,
    Script,
    WithAnswerHeaders,
    reply_events,
    scripted_host,
    sse,
    text,
    tool_use,
)

pytestmark = pytest.mark.anyio

PARAMS: dict[str, Any] = {
    "model": "exec",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Plan the migration."}],
    "tools": [ADVISOR_TOOL],
}
LEG_BODY: dict[str, Any] = {
    "model": "exec",
    "max_tokens": 1024,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture
async def upstream(script: Script) -> AsyncIterator[str]:
    """The scripted gateway on uvicorn; its base URL."""
    async with uvicorn_server(scripted_host(script)) as url:
        yield url


def leg(role: str = "executor", api_key: str = "sk-caller", query: bytes = b"") -> Leg:
    headers = leg_headers([(b"x-api-key", api_key.encode()), (b"host", b"caller.example")], role)
    return Leg(role, dict(LEG_BODY), headers, {"type": "http", "query_string": query})  # type: ignore[arg-type]


async def events_of(router: HTTPRouter, the_leg: Leg | None = None) -> list[dict[str, Any]]:
    return [event async for event in router.stream(the_leg or leg())]


async def upstream_error(router: HTTPRouter, the_leg: Leg | None = None) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await events_of(router, the_leg)
    return info.value


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_consult_round_trip_through_a_remote_gateway(upstream: str, script: Script, streaming: bool) -> None:
    consult(script)
    gateway = build_app(None, upstream=upstream)
    async with sdk_for(gateway) as sdk:
        message = await call(sdk, streaming, **PARAMS, extra_query={"beta": "true"})
    await gateway.app.aclose()

    assert block_types(message.content) == ONE_CONSULT
    result = message.content[2]
    assert result.type == "advisor_tool_result" and result.content.type == "advisor_result"
    assert result.content.text == "Advice."
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    host = upstream.removeprefix("http://")
    for recorded in script.requests:
        # The caller's credentials and query reach the upstream; its Host is the upstream's own.
        assert recorded.headers["authorization"] == "Bearer sk-test"
        assert recorded.headers["x-advisor-leg"] == recorded.role
        assert recorded.query == "beta=true"  # as Claude Code sends it
        assert recorded.headers["host"] == host
        assert recorded.headers["content-type"] == "application/json"
        assert recorded.headers["accept-encoding"] == "identity"
        assert recorded.body["stream"] is True
        assert "advisor-tool-2026-03-01" not in recorded.headers.get("anthropic-beta", "")


async def test_events_arrive_as_the_upstream_streams_them(upstream: str, script: Script) -> None:
    script.executor(Reply([text("first"), text("second")], hang_after=3, hang=2.0))
    router = HTTPRouter(upstream)
    arrivals: list[tuple[str, bool]] = []  # each event's type, and whether the upstream was done then
    async for event in router.stream(leg()):
        arrivals.append((event["type"], script.finished == ["executor"]))
    await router.aclose()
    # message_start, the first block's start and delta come during the upstream's pause, before
    # its stream is over; buffered, they would wait for the end.
    assert arrivals[:3] == [("message_start", False), ("content_block_start", False), ("content_block_delta", False)]
    assert arrivals[-1] == ("message_stop", True)


async def test_closing_the_stream_early_closes_the_upstream_response(upstream: str, script: Script) -> None:
    script.executor(Reply([text("words")], hang_after=2, hang=5.0))
    router = HTTPRouter(upstream)
    stream = router.stream(leg())
    assert (await anext(stream))["type"] == "message_start"
    await stream.aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: script.cancelled == ["executor"], 30.0, "upstream request cancelled")
    assert script.finished == []
    # The router stays usable: a new leg gets a fresh connection.
    script.executor(Reply([text("again")]))
    assert (await events_of(router))[-1]["type"] == "message_stop"
    await router.aclose()


async def test_cancelling_the_consumer_cancels_the_upstream_request(upstream: str, script: Script) -> None:
    script.executor(Reply([text("words")], hang_after=2, hang=5.0))
    router = HTTPRouter(upstream)
    seen: list[str] = []
    with anyio.CancelScope() as scope:
        async for event in router.stream(leg()):
            seen.append(event["type"])
            if len(seen) == 2:  # the upstream now hangs: the consumer is cancelled while it waits
                scope.cancel()
    assert seen == ["message_start", "content_block_start"]
    await wait_until(lambda: script.cancelled == ["executor"], 30.0, "upstream request cancelled")
    await router.aclose()


async def test_a_read_timeout_is_a_504_timeout_error(upstream: str, script: Script) -> None:
    script.executor(Reply([text("late")], delay=2.0))
    router = HTTPRouter(upstream, timeout=httpx.Timeout(5.0, read=0.2))
    error = await upstream_error(router)
    await router.aclose()
    assert error.status == 504
    assert error.error["type"] == "timeout_error"
    assert "ReadTimeout" in error.error["message"]


async def test_a_slow_advisor_leg_ends_as_execution_time_exceeded(upstream: str, script: Script) -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text("Carrying on without it.")]),
    ).advisor(Reply([text("Too late.")], delay=2.0))
    router = HTTPRouter(upstream, timeout=httpx.Timeout(5.0, read=0.3))
    app = AdvisorMiddleware(scripted_host(script), router=router)
    async with sdk_for(app) as sdk:
        message = await call(sdk, True, **PARAMS)
    await router.aclose()
    assert block_types(message.content) == ONE_CONSULT
    result = message.content[2]
    assert result.type == "advisor_tool_result"
    assert result.content.type == "advisor_tool_result_error"
    assert result.content.error_code == "execution_time_exceeded"
    assert message.content[3].type == "text" and message.content[3].text == "Carrying on without it."


async def test_an_unreachable_upstream_is_a_502_api_error() -> None:
    router = HTTPRouter(f"http://127.0.0.1:{free_port()}")
    error = await upstream_error(router)
    assert error.status == 502
    assert error.error["type"] == "api_error"
    assert "ConnectError" in error.error["message"]
    # Through the middleware, before anything was streamed: the client gets that status.
    response = await post(AdvisorMiddleware(scripted_host(Script()), router=router), json=PARAMS)
    await router.aclose()
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "api_error"


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_a_non_200_answer_keeps_status_body_and_retry_after(
    upstream: str, script: Script, streaming: bool
) -> None:
    script.executor(Fail(429, "rate_limit_error", "slow down", headers={"retry-after": "7", "x-other": "no"}))
    gateway = build_app(None, upstream=upstream)
    async with sdk_for(gateway) as sdk:
        with pytest.raises(anthropic.RateLimitError) as info:
            await call(sdk, streaming, **PARAMS)
    await gateway.app.aclose()
    response = info.value.response
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert "x-other" not in response.headers
    assert response.json() == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


async def test_an_error_event_is_an_upstream_error_with_its_type(upstream: str, script: Script) -> None:
    script.executor(ErrorEvent(Reply([text("partial")]), after=2, error_type="overloaded_error"))
    router = HTTPRouter(upstream)
    seen: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for event in router.stream(leg()):
            seen.append(event["type"])
    await router.aclose()
    assert seen == ["message_start", "content_block_start"]
    assert info.value.status == 529
    assert info.value.error == {"type": "overloaded_error", "message": "Overloaded"}


async def test_a_json_answer_to_a_streaming_leg_is_read_as_events(upstream: str, script: Script) -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use", json_only=True),
        Reply([text("Done.")], json_only=True),
    ).advisor(Reply([text("Advice.")], json_only=True))
    router = HTTPRouter(upstream)
    async with sdk_for(AdvisorMiddleware(scripted_host(script), router=router)) as sdk:
        message = await call(sdk, True, **PARAMS)
    await router.aclose()
    assert block_types(message.content) == ONE_CONSULT
    assert message.content[2].content.text == "Advice."  # type: ignore[union-attr]


async def test_a_200_that_is_neither_sse_nor_a_message_is_a_502() -> None:
    async def html(request: Request) -> Response:
        return Response("<html>login</html>", media_type="text/html")

    async with uvicorn_server(Starlette(routes=[Route("/v1/messages", html, methods=["POST"])])) as url:
        router = HTTPRouter(url)
        error = await upstream_error(router)
        await router.aclose()
    assert error.status == 502
    assert "neither SSE nor JSON" in error.error["message"]


class Compressing:
    """Wraps an upstream and compresses each whole answer, whatever the request asked for, then
    sends it in 17-byte pieces: a gateway that ignores ``accept-encoding: identity``."""

    def __init__(self, app: Any, encoding: str) -> None:
        self.app = app
        self.encoding = encoding

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def collect(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            raw = b"".join(body)
            packed = gzip.compress(raw) if self.encoding == "gzip" else zlib.compress(raw)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-encoding", self.encoding.encode()))
            await send({**start, "headers": headers})
            for i in range(0, len(packed), 17):
                await send({"type": "http.response.body", "body": packed[i : i + 17], "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        await self.app(scope, receive, collect)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_a_consult_through_a_gateway_that_compresses_anyway(
    script: Script, encoding: str, streaming: bool
) -> None:
    # Every leg's SSE comes back compressed: serve --upstream decodes each before reading it.
    consult(script)
    async with uvicorn_server(Compressing(scripted_host(script), encoding)) as upstream:
        gateway = build_app(None, upstream=upstream)
        async with sdk_for(gateway) as sdk:
            message = await call(sdk, streaming, **PARAMS)
        await gateway.app.aclose()
    assert block_types(message.content) == ONE_CONSULT
    assert message.content[2].content.text == "Advice."  # type: ignore[union-attr]
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]


class Decoy:
    """A server that must never be called: it records whatever reaches it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"stolen"})


async def test_credentials_go_to_the_base_url_only(upstream: str, script: Script) -> None:
    decoy = Decoy()
    async with uvicorn_server(decoy) as decoy_url:
        # The advisor's answer is a redirect to the decoy; URLs in the body's tool entry are noise.
        script.executor(
            Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
            Reply([text("Done.")]),
        ).advisor(Fail(307, raw=b"", headers={"location": decoy_url + "/v1/messages"}))
        tool = {**ADVISOR_TOOL, "base_url": decoy_url, "url": decoy_url + "/v1/messages"}
        gateway = build_app(None, upstream=upstream)
        async with sdk_for(gateway) as sdk:
            message = await call(sdk, False, **{**PARAMS, "tools": [tool]})
        await gateway.app.aclose()
    assert decoy.calls == []
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    assert all(r.headers["authorization"] == "Bearer sk-test" for r in script.requests)
    result = message.content[2]
    assert result.type == "advisor_tool_result" and result.content.type == "advisor_tool_result_error"
    assert result.content.error_code == "unavailable"


async def test_cookies_set_by_the_upstream_never_reach_another_caller() -> None:
    cookies: list[str | None] = []

    async def messages(request: Request) -> Response:
        cookies.append(request.headers.get("cookie"))

        async def stream() -> AsyncIterator[bytes]:
            for event in reply_events(Reply([text("hi")]), "exec"):
                yield sse(event)

        response = StreamingResponse(stream(), media_type="text/event-stream")
        response.set_cookie("session", request.headers["x-api-key"])
        return response

    async with uvicorn_server(Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])) as url:
        router = HTTPRouter(url)
        await events_of(router, leg(api_key="sk-alice"))
        await events_of(router, leg(api_key="sk-bob"))
        await router.aclose()
    assert cookies == [None, None]


async def test_a_shared_client_is_used_and_left_open(upstream: str, script: Script) -> None:
    script.executor(Reply([text("one")]), Reply([text("two")]))
    async with httpx.AsyncClient(headers={"x-gateway": "mine"}) as shared:
        router = HTTPRouter(upstream, client=shared)
        await events_of(router)
        await router.aclose()
        assert not shared.is_closed
        await events_of(router)
    assert [r.headers["x-gateway"] for r in script.requests] == ["mine", "mine"]


async def test_aclose_closes_the_routers_own_client_and_a_later_leg_opens_a_new_one(
    upstream: str, script: Script
) -> None:
    script.executor(Reply([text("one")]), Reply([text("two")]))
    router = HTTPRouter(upstream)
    await events_of(router)
    first = router.client
    await router.aclose()
    assert first.is_closed
    await events_of(router)
    assert router.client is not first
    await router.aclose()
    assert [r.role for r in script.requests] == ["executor", "executor"]


@pytest.mark.parametrize(
    ("base_url", "path", "expected"),
    [
        ("http://gw:4000", "/v1/messages", "http://gw:4000/v1/messages"),
        ("http://gw:4000/anthropic/", "/v1/messages", "http://gw:4000/anthropic/v1/messages"),
        ("https://gw", "v1/messages", "https://gw/v1/messages"),
    ],
)
def test_url(base_url: str, path: str, expected: str) -> None:
    assert HTTPRouter(base_url, path=path).url == expected


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        HTTPRouter("127.0.0.1:4000")


async def test_a_leg_through_a_second_middleware_is_not_orchestrated_again(script: Script) -> None:
    # A gateway whose HTTPRouter points at another AdvisorMiddleware (or at itself): the marker
    # makes the inner one pass every leg through, so the host sees each leg exactly once.
    consult(script)
    async with uvicorn_server(AdvisorMiddleware(scripted_host(script))) as inner:
        router = HTTPRouter(inner)
        async with sdk_for(AdvisorMiddleware(scripted_host(Script()), router=router)) as sdk:
            message = await call(sdk, True, **PARAMS)
        await router.aclose()
    assert block_types(message.content) == ONE_CONSULT
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    # The executor got the function tool, not the raw advisor tool a second middleware would take.
    assert [t.get("type") for t in script.of("executor")[0].body["tools"]] == [None]
    assert json.loads(script.of("advisor")[0].raw).get("tools") is None


async def test_a_client_disconnect_during_the_advisor_leg_cancels_it_upstream(upstream: str, script: Script) -> None:
    script.executor(Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"))
    script.advisor(Reply([text("Too late.")], delay=600.0))  # far past the deadlines below
    async with (
        uvicorn_server(build_app(None, upstream=upstream)) as gateway,
        httpx.AsyncClient(base_url=gateway) as http,
    ):
        async with http.stream("POST", "/v1/messages", json={**PARAMS, "stream": True}) as response:
            async for line in response.aiter_lines():
                if '"server_tool_use"' in line:
                    break
            await wait_until(lambda: bool(script.of("advisor")), 30.0, "advisor leg requested")
        # The client has gone: the gateway cancels the leg, and closing its response tells the upstream.
        await wait_until(lambda: script.cancelled == ["advisor"], 30.0, "advisor leg cancelled upstream")
    assert [r.role for r in script.requests] == ["executor", "advisor"]


async def test_legs_and_forwarded_requests_drop_the_same_hop_by_hop_headers(upstream: str, script: Script) -> None:
    consult(script)
    script.direct(Reply([text("direct")]))
    hop = {
        "connection": "keep-alive, x-hop-named",
        "keep-alive": "timeout=5",
        "proxy-authorization": "Basic c2VjcmV0OnByb3h5",
        "proxy-connection": "keep-alive",
        "x-hop-named": "only for the next hop",
    }
    headers = {"x-api-key": "sk-caller", "x-end-to-end": "kept", **hop}
    gateway = build_app(None, upstream=upstream)
    async with uvicorn_server(gateway) as url, httpx.AsyncClient(base_url=url) as http:
        orchestrated = await http.post("/v1/messages", json=PARAMS, headers=headers)
        forwarded = await http.post("/v1/messages", json={**PARAMS, "tools": []}, headers=headers)
    assert orchestrated.status_code == forwarded.status_code == 200
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor", "direct"]
    for recorded in script.requests:
        assert recorded.headers["x-api-key"] == "sk-caller"
        assert recorded.headers["x-end-to-end"] == "kept"
        # httpx writes its own connection header on each request; the caller's is not copied.
        assert recorded.headers["connection"] == "keep-alive", recorded.role
        assert not (set(hop) - {"connection"}) & set(recorded.headers), recorded.role


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("router", ["http", "app"])
async def test_the_first_executor_legs_request_headers_reach_the_client(
    script: Script, streaming: bool, router: str
) -> None:
    consult(script)
    host = WithAnswerHeaders(scripted_host(script))
    async with uvicorn_server(host) as upstream_url:
        # serve --upstream (HTTPRouter legs), or the middleware around the host (AppRouter legs).
        app = build_app(None, upstream=upstream_url) if router == "http" else AdvisorMiddleware(host)
        async with uvicorn_server(app) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.post("/v1/messages", json={**PARAMS, "stream": streaming})
    assert response.status_code == 200
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    # The first leg's, not a later one's: request 1 of the host.
    assert response.headers["request-id"] == "req_1"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "99"
    assert response.headers["anthropic-organization-id"] == "org-1"
    assert not set(WithAnswerHeaders.OTHERS) & set(response.headers)
    expected_type = "text/event-stream; charset=utf-8" if streaming else "application/json"
    assert response.headers["content-type"] == expected_type


async def test_a_failed_first_leg_answers_with_its_request_headers(script: Script) -> None:
    script.executor(Fail(429, "rate_limit_error", headers={"retry-after": "7"}))
    host = WithAnswerHeaders(scripted_host(script))
    async with uvicorn_server(host) as upstream_url:
        async with (
            uvicorn_server(build_app(None, upstream=upstream_url)) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            response = await http.post("/v1/messages", json=PARAMS)
    assert response.status_code == 429
    assert (response.headers["retry-after"], response.headers["request-id"]) == ("7", "req_1")
    assert not set(WithAnswerHeaders.OTHERS) & set(response.headers)
