"""``LiteLLMRouter``: legs through a ``litellm.Router`` held in-process.

The app is what a team with a ``litellm.Router`` in its own service writes: a Starlette route
that answers ``/v1/messages`` with ``router.aanthropic_messages``. ``AdvisorMiddleware`` wraps it
with ``router=LiteLLMRouter(router)``, so both legs go through the same Router, to scripted
backends on 127.0.0.1: the executor ``hosted_vllm/exec-m`` (Anthropic→OpenAI translation) and the
advisor ``anthropic/adv-m`` or ``hosted_vllm/adv-oai-m``. LiteLLM 1.110.2 is a test dependency:
without it these tests fail, they are never skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anthropic
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from advisor_middleware import AdvisorMiddleware, Leg, LiteLLMRouter, UpstreamError

from .support.helpers import ADVISOR_PARAMS, ONE_CONSULT, block_types, call, post
from .support.openai_backend import ChatScript, openai_host
from .support.servers import uvicorn_server
from .support.upstream import Fail, Reply, Script, scripted_host, text, tool_use

if TYPE_CHECKING:
    from .support.litellm_support import InterceptorSpy

pytestmark = [
    pytest.mark.anyio,
    # LiteLLM 1.110 uses Pydantic APIs deprecated since 2.0/2.11; not ours to fix.
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:litellm\..*"),
]

ADVICE = "Use a queue."


@dataclass
class Served:
    url: str
    chat: ChatScript
    anthropic_host: Script
    router: Any

    def sdk(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(api_key="unused", base_url=self.url, max_retries=0, timeout=20.0)


def router_app(router: Any) -> Starlette:
    """The host: ``/v1/messages`` answered by the Router itself."""

    async def messages(request: Request) -> Response:
        body = await request.json()
        result = await router.aanthropic_messages(**body)
        if body.get("stream"):
            return StreamingResponse(result, media_type="text/event-stream")
        return JSONResponse({k: v for k, v in result.items() if not k.startswith("_")})

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[Served]:
    from litellm.router import Router

    chat, script = ChatScript(), Script()
    async with uvicorn_server(openai_host(chat)) as openai_url, uvicorn_server(scripted_host(script)) as anthropic_url:
        router = Router(
            model_list=[
                {
                    "model_name": "exec",
                    "litellm_params": {"model": "hosted_vllm/exec-m", "api_base": openai_url + "/v1", "api_key": "k1"},
                },
                {
                    "model_name": "adv",
                    "litellm_params": {"model": "anthropic/adv-m", "api_base": anthropic_url, "api_key": "k2"},
                },
                {
                    "model_name": "adv-oai",
                    "litellm_params": {
                        "model": "hosted_vllm/adv-oai-m",
                        "api_base": openai_url + "/v1",
                        "api_key": "k3",
                    },
                },
            ],
            num_retries=0,
        )
        app = AdvisorMiddleware(router_app(router), router=LiteLLMRouter(router))
        async with uvicorn_server(app) as url:
            yield Served(url, chat, script, router)


@pytest.fixture
def backends(served: Served) -> Served:
    for script in (served.chat, served.anthropic_host):
        script.turns.clear()
        script.requests.clear()
    return served


@pytest.fixture
def interceptor(monkeypatch: pytest.MonkeyPatch) -> InterceptorSpy:
    from .support.litellm_support import spy_on_interceptor

    return spy_on_interceptor(monkeypatch)


def request(advisor: str = "adv") -> dict[str, Any]:
    return {
        "model": "exec",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Design the worker pool."}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": advisor}],
    }


def consult(backends: Served, advice: Reply | Fail, advisor: str = "adv") -> None:
    """The executor asks once, then answers; the advisor deployment answers ``advice``."""
    backends.chat.model(
        "exec-m",
        Reply([text("Asking."), tool_use("advisor", id="call_1")], stop_reason="tool_use"),
        Reply([text("Queue it is.")]),
    )
    if advisor == "adv":
        backends.anthropic_host.direct(advice)
    else:
        backends.chat.model("adv-oai-m", advice)


@pytest.mark.parametrize("advisor", ["adv", "adv-oai"])
@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
async def test_consult_through_a_litellm_router(
    backends: Served, interceptor: InterceptorSpy, streaming: bool, advisor: str
) -> None:
    consult(backends, Reply([text(ADVICE)], input_tokens=200, output_tokens=7), advisor)
    async with backends.sdk() as client:
        message = await call(client, streaming, **request(advisor))

    assert block_types(message.content) == ONE_CONSULT
    assert message.content[2].model_dump(exclude_none=True)["content"] == {"type": "advisor_result", "text": ADVICE}
    assert message.content[3].model_dump()["text"] == "Queue it is."
    iterations = message.usage.model_dump()["iterations"]
    assert [(i["type"], i.get("model"), i["output_tokens"]) for i in iterations] == [
        ("message", None, 5),
        ("advisor_message", advisor, 7),
        ("message", None, 5),
    ]
    legs = backends.chat.of("exec-m")
    assert len(legs) == 2
    for leg in legs:
        assert b"advisor_20260301" not in leg.raw
        assert leg.body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "advisor",
                    "description": leg.body["tools"][0]["function"]["description"],
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ]
    assert legs[1].body["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": ADVICE}
    advisor_legs = backends.anthropic_host.requests if advisor == "adv" else backends.chat.of("adv-oai-m")
    assert len(advisor_legs) == 1 and b"advisor_20260301" not in advisor_legs[0].raw
    assert "tools" not in advisor_legs[0].body
    assert len(interceptor.verdicts) == 3 and not any(interceptor.verdicts) and interceptor.handled == []


async def test_urls_and_keys_in_the_body_never_choose_where_a_leg_goes(backends: Served) -> None:
    # LiteLLM takes api_base, base_url and api_key as keyword arguments: a leg that passed the
    # body's fields as they came would send the deployment's key to the caller's host.
    consult(backends, Reply([text(ADVICE)]))
    decoy = ChatScript()
    async with uvicorn_server(openai_host(decoy)) as decoy_url:
        chosen = {"api_base": decoy_url + "/v1", "base_url": decoy_url + "/v1", "api_key": "sk-caller"}
        async with backends.sdk() as client:
            message = await call(client, False, **request(), extra_body=chosen)
    assert decoy.requests == []
    assert block_types(message.content) == ONE_CONSULT
    assert [leg.headers["authorization"] for leg in backends.chat.of("exec-m")] == ["Bearer k1", "Bearer k1"]


async def test_requests_without_the_advisor_reach_the_app(backends: Served) -> None:
    backends.chat.model("exec-m", Reply([text("Hello.")]))
    async with backends.sdk() as client:
        message = await call(client, True, **{**request(), "tools": []})
    assert block_types(message.content) == ["text"]
    assert len(backends.chat.requests) == 1


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (Fail(529, "overloaded_error", "Overloaded"), "overloaded"),
        (Fail(429, "rate_limit_error", "Slow down"), "too_many_requests"),
    ],
)
async def test_advisor_failure_becomes_an_error_result(backends: Served, failure: Fail, code: str) -> None:
    consult(backends, failure)
    async with backends.sdk() as client:
        message = await call(client, True, **request())
    assert block_types(message.content) == ONE_CONSULT
    assert message.content[2].model_dump()["content"] == {"type": "advisor_tool_result_error", "error_code": code}


async def test_unknown_advisor_model_group_becomes_an_error_result(backends: Served) -> None:
    consult(backends, Reply([text(ADVICE)]))
    async with backends.sdk() as client:
        message = await call(client, False, **request("no-such-group"))
    assert message.content[2].model_dump()["content"]["type"] == "advisor_tool_result_error"
    assert backends.anthropic_host.requests == []


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "stream"])
async def test_executor_failure_keeps_its_status(backends: Served, streaming: bool) -> None:
    backends.chat.model("exec-m", Fail(429, "rate_limit_error", "Slow down", headers={"retry-after": "7"}))
    async with backends.sdk() as client:
        with pytest.raises(anthropic.RateLimitError) as raised:
            await call(client, streaming, **request())
    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "7"
    assert "Slow down" in str(raised.value.body)


async def test_litellm_exceptions_map_to_upstream_errors(served: Served) -> None:
    """Straight from the Router: LiteLLM's exception classes, their status kept."""
    router = LiteLLMRouter(served.router)
    leg = Leg("advisor", {**request(), "model": "no-such-group", "tools": [], "stream": True})
    with pytest.raises(UpstreamError) as raised:
        async for _ in router.stream(leg):
            pass
    assert raised.value.status == 400
    assert raised.value.error["type"] == "invalid_request_error"
    assert "no-such-group" in raised.value.error["message"]
    assert type(raised.value.__cause__).__module__ == "litellm.exceptions"


# --- the protocol around LiteLLM's answers, with stand-in routers (no LiteLLM needed) -----------


class StandIn:
    """``aanthropic_messages`` answering with ``answer`` (or raising it), recording its kwargs."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.kwargs: dict[str, Any] = {}
        self.closed = False

    async def aanthropic_messages(self, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        if isinstance(self.answer, BaseException):
            raise self.answer
        if isinstance(self.answer, list):
            return self._stream(self.answer)
        return self.answer

    async def _stream(self, items: list[Any]) -> AsyncIterator[Any]:
        try:
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.closed = True


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "Hi."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 2},
    "_hidden_params": {"model_id": "x"},
}
SSE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"m","content":[],"stop_reason":null,"usage":{"input_tokens":3,"output_tokens":0}}}'
    b'\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
)
FIRST = SSE[: SSE.index(b"\n\n") + 2]
"""The first whole event of ``SSE``."""


async def events_of(router: LiteLLMRouter, leg: Leg | None = None) -> list[dict[str, Any]]:
    return [e async for e in router.stream(leg or Leg("executor", {"model": "m", "stream": True}))]


async def test_sse_bytes_in_any_chunking() -> None:
    split = [SSE[i : i + 7] for i in range(0, len(SSE), 7)]
    events = await events_of(LiteLLMRouter(StandIn(split)))
    assert [e["type"] for e in events] == ["message_start", "message_stop"]


async def test_event_dicts_and_call_kwargs() -> None:
    stand_in = StandIn([{"type": "message_start", "message": {}}, {"type": "message_stop"}])
    router = LiteLLMRouter(stand_in, call_kwargs=lambda leg: {"metadata": {"leg": leg.role}, "stream": False})
    events = await events_of(router, Leg("advisor", {"model": "m", "max_tokens": 5, "stream": True}))
    assert [e["type"] for e in events] == ["message_start", "message_stop"]
    assert stand_in.kwargs == {"model": "m", "max_tokens": 5, "stream": True, "metadata": {"leg": "advisor"}}


async def test_a_whole_message_is_replayed_as_events() -> None:
    events = await events_of(LiteLLMRouter(StandIn(dict(MESSAGE))))
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert "_hidden_params" not in events[0]["message"]


async def test_error_event_raises_with_its_status() -> None:
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'
    with pytest.raises(UpstreamError) as raised:
        await events_of(LiteLLMRouter(StandIn([FIRST, error])))
    assert raised.value.status == 529


class StatusError(Exception):
    """Shaped like LiteLLM's exceptions: ``status_code``, ``message``, the provider's headers."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.litellm_response_headers = headers or {}


@pytest.mark.parametrize("midstream", [False, True])
async def test_exceptions_with_a_status_become_upstream_errors(midstream: bool) -> None:
    exc = StatusError(429, "litellm.RateLimitError: slow down", {"retry-after": "7"})
    with pytest.raises(UpstreamError) as raised:
        await events_of(LiteLLMRouter(StandIn([FIRST, exc] if midstream else exc)))
    assert raised.value.status == 429
    assert raised.value.error == {"type": "rate_limit_error", "message": "litellm.RateLimitError: slow down"}
    assert raised.value.headers == [(b"retry-after", b"7")]
    assert raised.value.__cause__ is exc


async def test_exceptions_without_a_status_propagate() -> None:
    with pytest.raises(KeyError):
        await events_of(LiteLLMRouter(StandIn(KeyError("bug"))))


async def test_closing_early_closes_litellms_stream() -> None:
    stand_in = StandIn([SSE, SSE])
    stream = LiteLLMRouter(stand_in).stream(Leg("executor", {"model": "m", "stream": True}))
    assert (await anext(stream))["type"] == "message_start"
    await stream.aclose()  # type: ignore[attr-defined]
    assert stand_in.closed


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("fields", [{"content": [1]}, {"content": "abc"}, {"content": [None]}, {"usage": 5}])
async def test_a_whole_message_of_the_wrong_shape_is_a_502(fields: dict[str, Any], streaming: bool) -> None:
    # The same check as for the other routers: the executor's answer is unusable, not a bug of ours.
    router = LiteLLMRouter(StandIn({**MESSAGE, **fields}))
    app = AdvisorMiddleware(scripted_host(Script()), router=router)
    response = await post(app, json={**ADVISOR_PARAMS, "stream": streaming})
    assert response.status_code == 502, response.text
    assert response.json()["error"]["type"] == "api_error"
