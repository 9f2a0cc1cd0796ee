"""``count_tokens`` and ``batches`` under each configured path, through ``AdvisorMiddleware``
around a real Starlette and a real FastAPI host that record what they receive, and through
``serve --upstream``. The oracle for a rewritten body is what the same request sent to
``/v1/messages`` makes the middleware send: its first executor leg, or its rewrite."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from advisor_middleware import AdvisorMiddleware
from advisor_middleware.cli import build_app

from .support.helpers import BASH, advice, advisor_pair, assistant, http_for, post, request_body, user
from .support.servers import uvicorn_server
from .support.upstream import ADVISOR_TOOL, Reply, Script, scripted_host, text, tool_use

pytestmark = pytest.mark.anyio

HISTORY = [
    user("Plan the migration."),
    assistant([text("Let me ask."), *advisor_pair("srvtoolu_1", advice("Do it in two steps.")), text("Two steps.")]),
    user("Go on."),
]
ENDPOINT_PATHS = [
    "/v1/messages/count_tokens",
    "/v1/messages/batches",
    "/v1/messages/batches/msgbatch_1",
    "/v1/messages/batches/msgbatch_1/results",
    "/v1/messages/batches/msgbatch_1/cancel",
]


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw: bytes


@dataclass
class Recorder:
    """What the host received, and the answer it gives: its own status, headers and bytes."""

    seen: list[Seen] = field(default_factory=list)

    async def answer(self, request: Request) -> Response:
        raw = await request.body()
        self.seen.append(Seen(request.method, request.url.path, request.url.query, dict(request.headers), raw))
        payload = json.dumps({"input_tokens": len(raw), "path": request.url.path}, indent=1).encode()
        return Response(payload, status_code=203, headers={"x-host": "answered", "request-id": "req_7"})

    @property
    def body(self) -> dict[str, Any]:
        (seen,) = self.seen
        parsed: dict[str, Any] = json.loads(seen.raw)
        return parsed


def starlette_host(recorder: Recorder) -> Starlette:
    return Starlette(routes=[Route(path, recorder.answer, methods=["GET", "POST"]) for path in ENDPOINT_PATHS])


def fastapi_host(recorder: Recorder) -> FastAPI:
    app = FastAPI()
    for path in ENDPOINT_PATHS:
        app.add_api_route(path, recorder.answer, methods=["GET", "POST"])
    return app


HOSTS: dict[str, Callable[[Recorder], Any]] = {"starlette": starlette_host, "fastapi": fastapi_host}


@pytest.fixture(params=sorted(HOSTS))
def recorder_app(request: pytest.FixtureRequest) -> Callable[..., tuple[Recorder, AdvisorMiddleware]]:
    def make(**options: Any) -> tuple[Recorder, AdvisorMiddleware]:
        recorder = Recorder()
        return recorder, AdvisorMiddleware(HOSTS[request.param](recorder), **options)

    return make


MakeApp = Callable[..., tuple[Recorder, AdvisorMiddleware]]


async def first_executor_leg(body: dict[str, Any]) -> dict[str, Any]:
    """The body of the first executor leg the middleware sends for ``body`` on /v1/messages."""
    script = Script().executor(Reply([text("ok")]))
    await post(AdvisorMiddleware(scripted_host(script)), json={"max_tokens": 1024, **body})
    (leg,) = script.of("executor")
    return leg.body


async def messages_rewrite(body: dict[str, Any]) -> dict[str, Any]:
    """What the host gets for ``body`` (no advisor tool) on /v1/messages."""
    script = Script().direct(Reply([text("ok")]))
    await post(AdvisorMiddleware(scripted_host(script)), json=body)
    (forwarded,) = script.of("direct")
    return forwarded.body


def assert_answer_is_the_hosts(response: Any, recorder: Recorder) -> None:
    (seen,) = recorder.seen
    assert response.status_code == 203
    assert response.headers["x-host"] == "answered"
    assert response.headers["request-id"] == "req_7"
    assert response.content == json.dumps({"input_tokens": len(seen.raw), "path": seen.path}, indent=1).encode()


def assert_framed(recorder: Recorder) -> None:
    (seen,) = recorder.seen
    assert seen.headers["content-length"] == str(len(seen.raw))


# --- count_tokens -------------------------------------------------------------------------------


async def test_count_tokens_with_the_tool_counts_the_first_executor_leg(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app()
    body = {"model": "exec", "system": "Be brief.", "messages": HISTORY, "tools": [BASH, ADVISOR_TOOL]}
    response = await post(app, json=body, path="/v1/messages/count_tokens")

    assert_answer_is_the_hosts(response, recorder)
    assert_framed(recorder)
    sent = recorder.body
    leg = await first_executor_leg(body)
    assert sent == {k: v for k, v in leg.items() if k not in ("stream", "max_tokens")}
    assert "stream" not in sent and "max_tokens" not in sent
    assert sent["tools"][0] == BASH
    assert sent["tools"][1]["name"] == "advisor" and "type" not in sent["tools"][1]
    assert b'"advisor_' not in recorder.seen[0].raw  # no advisor tool entry, no advisor block


async def test_count_tokens_with_advisor_history_only_counts_the_rewrite(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app()
    body = {"model": "exec", "messages": HISTORY, "tools": [BASH]}
    response = await post(app, json=body, path="/v1/messages/count_tokens?beta=true")

    assert_answer_is_the_hosts(response, recorder)
    assert_framed(recorder)
    assert recorder.seen[0].query == "beta=true"
    assert recorder.body == await messages_rewrite(body)
    assert b"advisor_tool_result" not in recorder.seen[0].raw


async def test_count_tokens_keeps_a_stream_field_the_client_sent(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app()
    body = {"model": "exec", "messages": [user("hi")], "tools": [ADVISOR_TOOL], "stream": False}
    await post(app, json=body, path="/v1/messages/count_tokens")
    assert recorder.body["stream"] is False
    assert recorder.body["tools"] == (await first_executor_leg(body))["tools"]


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/messages/count_tokens?beta=true"])
async def test_count_tokens_without_the_advisor_passes_byte_for_byte(recorder_app: MakeApp, path: str) -> None:
    recorder, app = recorder_app()
    # The needle's neighbour in prose costs a parse, not a rewrite.
    raw = b'{ "model":"exec",  "messages":[{"role":"user","content":"ask my \\"advisor\\" later"}] }'
    response = await post(app, raw, {"content-type": "application/json"}, path=path)
    assert_answer_is_the_hosts(response, recorder)
    assert recorder.seen[0].raw == raw


async def test_count_tokens_with_a_pending_call_counts_without_the_consult(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app()
    paused = [user("Plan it."), assistant([text("Let me ask."), *advisor_pair("srvtoolu_9", advice("x"))[:1]])]
    body = {"model": "exec", "messages": paused, "tools": [ADVISOR_TOOL]}
    response = await post(app, json=body, path="/v1/messages/count_tokens")
    assert response.status_code == 203
    sent = recorder.body
    # No tool_use is left without its result: the host would refuse to count it.
    blocks = [b for m in sent["messages"] for b in (m["content"] if isinstance(m["content"], list) else [])]
    assert not [b for b in blocks if b.get("type") in ("tool_use", "server_tool_use")]


async def test_count_tokens_with_a_native_executor_passes_through(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app(native_executor=lambda model: model.startswith("claude-"))
    raw = json.dumps({"model": "claude-x", "messages": HISTORY, "tools": [ADVISOR_TOOL]}).encode()
    await post(app, raw, path="/v1/messages/count_tokens")
    assert recorder.seen[0].raw == raw


async def test_count_tokens_with_a_broken_tool_is_the_same_400_as_messages(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app()
    body = {"model": "exec", "max_tokens": 5, "messages": [user("hi")], "tools": [BASH, {**ADVISOR_TOOL, "model": 3}]}
    counted = await post(app, json=body, path="/v1/messages/count_tokens")
    messaged = await post(AdvisorMiddleware(scripted_host(Script())), json=body)
    assert counted.status_code == messaged.status_code == 400
    assert counted.json() == messaged.json()
    assert counted.json()["error"]["message"].startswith("tools.1.model: ")
    assert recorder.seen == []


async def test_count_tokens_under_root_path_and_a_second_configured_path() -> None:
    recorder = Recorder()
    inner = Starlette(routes=[Route("/anthropic" + p, recorder.answer, methods=["POST"]) for p in ENDPOINT_PATHS])
    wrapped = AdvisorMiddleware(inner, paths={"/v1/messages", "/anthropic/v1/messages"})
    app = Starlette(routes=[Mount("/gw", app=wrapped)])
    body = {"model": "exec", "messages": [user("hi")], "tools": [ADVISOR_TOOL]}
    response = await post(app, json=body, path="/gw/anthropic/v1/messages/count_tokens?beta=true")

    assert response.status_code == 203
    (seen,) = recorder.seen
    assert (seen.path, seen.query) == ("/gw/anthropic/v1/messages/count_tokens", "beta=true")
    assert json.loads(seen.raw)["tools"] == (await first_executor_leg(body))["tools"]


async def test_count_tokens_through_serve_upstream() -> None:
    recorder = Recorder()
    async with uvicorn_server(starlette_host(recorder)) as url:
        app = build_app(None, upstream=url)
        try:
            body = {"model": "exec", "messages": HISTORY, "tools": [BASH, ADVISOR_TOOL]}
            async with http_for(app) as http:
                response = await http.post("/v1/messages/count_tokens?beta=true", json=body)
        finally:
            await app.app.aclose()
    assert_answer_is_the_hosts(response, recorder)
    assert_framed(recorder)
    leg = await first_executor_leg(body)
    assert recorder.body == {k: v for k, v in leg.items() if k not in ("stream", "max_tokens")}


# --- batches ------------------------------------------------------------------------------------


def batch(*params: dict[str, Any]) -> dict[str, Any]:
    return {"requests": [{"custom_id": f"req-{i}", "params": p} for i, p in enumerate(params)]}


PLAIN = {"model": "exec", "max_tokens": 64, "messages": [user("What is 2 + 2?")]}


async def test_a_batch_request_with_the_tool_is_refused_naming_its_position(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app()
    body = batch(PLAIN, PLAIN, PLAIN, request_body([user("Plan it.")]))
    response = await post(app, json=body, path="/v1/messages/batches")

    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith("requests.3.params.tools.1: ")
    assert recorder.seen == []


async def test_a_batch_with_the_tool_passes_for_a_native_executor(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app(native_executor=lambda model: model.startswith("claude-"))
    raw = json.dumps(batch(PLAIN, request_body([user("Plan it.")], model="claude-x"))).encode()
    response = await post(app, raw, path="/v1/messages/batches?beta=true")
    assert_answer_is_the_hosts(response, recorder)
    assert recorder.seen[0].raw == raw


async def test_a_batch_with_the_tool_on_a_request_not_native_is_still_refused(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app(native_executor=lambda model: model.startswith("claude-"))
    body = batch(request_body([user("a")], model="claude-x"), request_body([user("b")], model="exec"))
    response = await post(app, json=body, path="/v1/messages/batches")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("requests.1.params.tools.1: ")
    assert recorder.seen == []


async def test_advisor_history_in_a_batch_is_rendered(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app()
    with_history = {"model": "exec", "max_tokens": 64, "messages": HISTORY, "tools": [BASH]}
    body = batch(PLAIN, with_history)
    response = await post(app, json=body, path="/v1/messages/batches")

    assert_answer_is_the_hosts(response, recorder)
    assert_framed(recorder)
    sent = recorder.body
    assert sent["requests"][0] == body["requests"][0]
    assert sent["requests"][1]["custom_id"] == "req-1"
    assert sent["requests"][1]["params"] == await messages_rewrite(with_history)
    assert b"advisor_tool_result" not in recorder.seen[0].raw


async def test_a_batch_without_the_advisor_passes_byte_for_byte(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app()
    with_word = {**PLAIN, "messages": [user('my "advisor" said so'), assistant([tool_use("Bash")])]}
    raw = json.dumps(batch(PLAIN, with_word), indent=2).encode()
    response = await post(app, raw, path="/v1/messages/batches")
    assert_answer_is_the_hosts(response, recorder)
    assert recorder.seen[0].raw == raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"requests": [{"params": {"tools": [{"type": "advisor_20260301"', "request body is not JSON"),
        (b'{"requests": {"type": "advisor_20260301"}}', "requests: Input should be a valid list"),
        (b'{"note": "advisor_20260301"}', "requests: Input should be a valid list"),
        (b'{"requests": [{"params": {}}, "advisor_20260301"]}', "requests.1: Input should be a valid dictionary"),
        (b'{"requests": [{"params": ["advisor_20260301"]}]}', "requests.0.params: Input should be a valid dictionary"),
        (
            json.dumps(batch(PLAIN, PLAIN, {**PLAIN, "tools": [{**ADVISOR_TOOL, "model": None}]})).encode(),
            "requests.2.params.tools.0.model: ",
        ),
        (
            json.dumps(batch({**PLAIN, "messages": "advisor_20260301", "tools": [ADVISOR_TOOL]})).encode(),
            "requests.0.params.messages: Input should be a valid list",
        ),
    ],
)
async def test_malformed_batches_are_a_clear_400(recorder_app: MakeApp, raw: bytes, message: str) -> None:
    recorder, app = recorder_app()
    response = await post(app, raw, path="/v1/messages/batches")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message)
    assert recorder.seen == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches/msgbatch_1"),
        ("GET", "/v1/messages/batches/msgbatch_1/results"),
        ("POST", "/v1/messages/batches/msgbatch_1/cancel"),
    ],
)
async def test_other_batch_endpoints_pass_untouched(recorder_app: MakeApp, method: str, path: str) -> None:
    recorder, app = recorder_app()
    raw = json.dumps(batch(request_body([user("Plan it.")]))).encode()
    async with http_for(app) as http:
        response = await http.request(method, path, content=raw)
    assert_answer_is_the_hosts(response, recorder)
    (seen,) = recorder.seen
    assert (seen.method, seen.path, seen.raw) == (method, path, raw)


async def test_a_gzipped_count_tokens_body_is_decoded_rewritten_and_framed(recorder_app: MakeApp) -> None:
    recorder, app = recorder_app()
    body = {"model": "exec", "messages": HISTORY, "tools": [ADVISOR_TOOL]}
    packed = gzip.compress(json.dumps(body).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    response = await post(app, packed, headers, path="/v1/messages/count_tokens")
    assert response.status_code == 203
    assert_framed(recorder)
    assert "content-encoding" not in recorder.seen[0].headers
    assert recorder.body["tools"] == (await first_executor_leg(body))["tools"]
