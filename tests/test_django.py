"""The Django 5.2 gateway of ``examples/django_gateway`` (``get_asgi_application()`` wrapped in
``asgi.py``), served by uvicorn and by hypercorn in a subprocess on 127.0.0.1.

A subprocess because Django's settings are process-wide and configured once. Django's quirks are
all on the path: header names keep their case (``Content-Type``), ``JsonResponse`` has no
``content-length``, streaming is an async ``StreamingHttpResponse``, and Django asserts on a second
``http.request`` after the body (so every replayed body must be handed over exactly once).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from .support.helpers import ONE_CONSULT, block_types, call, check_stream
from .support.servers import example_server

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
APP = "examples.django_gateway.asgi:application"
ADVICE_START = "1. Restate the goal in one line before acting"


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn"])
def django_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("django") / "server.log"
    with example_server(request.param, APP, log=log) as url:
        yield url
    assert "AssertionError" not in log.read_text()  # Django's check on a second http.request


def request(executor: str = "demo-executor", advisor: str = "demo-advisor", **extra: Any) -> dict[str, Any]:
    return {
        "model": executor,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Plan a birthday party"}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": advisor}],
        **extra,
    }


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize(
    ("executor", "advisor"),
    [("demo-executor", "demo-advisor"), ("demo-executor-json", "demo-advisor-json")],
    ids=["legs-streamed", "legs-answered-with-json"],
)
async def test_consult_round_trip(django_url: str, streaming: bool, executor: str, advisor: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=django_url, api_key="sk-test", max_retries=0) as sdk:
        message = await call(sdk, streaming, **request(executor, advisor))
    assert block_types(message.content) == ONE_CONSULT
    result = message.content[2]
    assert result.type == "advisor_tool_result" and result.content.type == "advisor_result"
    assert result.content.text.startswith(ADVICE_START)
    final = message.content[3]
    assert final.type == "text" and "The advisor's advice was: “1. Restate the goal" in final.text
    iterations = [(i.type, getattr(i, "model", None)) for i in message.usage.iterations or []]
    assert iterations == [("message", None), ("advisor_message", advisor), ("message", None)]


async def test_a_second_turn_with_the_advice_in_history(django_url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=django_url, api_key="sk-test", max_retries=0) as sdk:
        first = await call(sdk, True, **request())
        history = [
            {"role": "user", "content": "Plan a birthday party"},
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
            {"role": "user", "content": "Now plan the cake"},
        ]
        second = await call(sdk, True, **request(messages=history))
        # The same history without the advisor tool: rewritten for the model, then replayed.
        plain = await call(sdk, False, **{**request(messages=history), "tools": []})
    assert block_types(second.content) == ONE_CONSULT
    assert second.content[2].content.text.startswith("1. Restate the goal in one line before acting: “Now plan")  # type: ignore[union-attr]
    assert block_types(plain.content) == ["text"]
    assert plain.content[0].text.startswith("You asked: “Now plan the cake”")  # type: ignore[union-attr]


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_a_request_without_the_advisor_is_djangos_own_answer(django_url: str, streaming: bool) -> None:
    body = {
        "model": "demo-executor",
        "max_tokens": 5,
        "stream": streaming,
        "messages": [{"role": "user", "content": "x"}],
    }
    async with httpx.AsyncClient(base_url=django_url) as http:
        response = await http.post("/v1/messages", json=body)
    assert response.status_code == 200
    # Django's shapes, untouched: no content-length on either, its own content types.
    assert "content-length" not in response.headers
    assert response.headers["content-type"] == ("text/event-stream" if streaming else "application/json")
    if streaming:
        assert response.text.startswith("event: message_start\n")
    else:
        assert response.json()["content"][0]["text"].startswith("You asked: “x”")


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_a_trailing_slash_from_the_caller_sends_legs_to_the_route_django_serves(
    django_url: str, streaming: bool
) -> None:
    # Django's route is v1/messages: /v1/messages/ is a 404 page there. Legs go to the route.
    async with httpx.AsyncClient(base_url=django_url) as http:
        response = await http.post("/v1/messages/", json={**request(), "stream": streaming})
    assert response.status_code == 200, response.text[:300]
    if streaming:
        _, message = check_stream(response.content)
        assert message is not None
        types = block_types(message.content)
    else:
        types = block_types(response.json()["content"])
    assert types == ONE_CONSULT


async def test_django_routing_and_errors_pass_through(django_url: str) -> None:
    async with httpx.AsyncClient(base_url=django_url) as http:
        missing = await http.post("/v1/other", json=request())
        wrong_method = await http.get("/v1/messages")
        invalid = await http.post("/v1/messages", json=request(max_tokens=5, tools=[{"type": "advisor_20260301"}]))
    assert missing.status_code == 404
    assert wrong_method.status_code == 405
    assert invalid.status_code == 400  # the middleware's validation, before Django
    assert invalid.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("how", ["receive", "send"])
def test_clients_leaving_mid_consult_leave_nothing_running(how: str) -> None:
    # Django serves a request from two asyncio tasks of its own and leaves them running when its
    # caller is cancelled: after each leg they must stop reaching the client and end. Whether the
    # client's leaving shows in receive (uvicorn) or in send (ASGI 2.4), the leg in flight is told
    # the way a server tells Django, which winds its tasks down itself: nothing for asyncio to
    # report ("Task exception was never retrieved").
    script = ROOT / "tests" / "support" / "django_disconnects.py"
    done = subprocess.run(
        [sys.executable, str(script), "9", how], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["rounds"] == 9
    assert figures["late"] == 0, "a send reached the client after its request had returned"
    assert figures["tasks_after"] <= figures["tasks_before"], "Django's tasks outlived the request"
    assert figures["unhandled"] == [], done.stderr[-2000:]
