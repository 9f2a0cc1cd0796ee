"""Starlette and FastAPI hosts: typed wiring, GZip on either side, lifespan, and the FastAPI gateway
of ``examples/fastapi_app.py``, whose route dependency checks each key's models, served by uvicorn
and by granian (subprocesses) for the auth-inheritance round trips.

Mounts and ``root_path`` are in ``test_passthrough.py``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.beta import BetaMessage
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from mypy import api as mypy_api
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware

from advisor_middleware import AdvisorMiddleware, HTTPRouter
from examples.fastapi_app import create_app

from .support.helpers import ONE_CONSULT, answer_content, block_types, call, http_for, sdk_for
from .support.servers import example_server, uvicorn_server
from .support.upstream import ADVISOR_TOOL, Reply, Script, scripted_host, text, tool_use

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
PARAMS: dict[str, Any] = {
    "model": "exec",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Plan the migration."}],
    "tools": [ADVISOR_TOOL],
}


# --- typing: this module is checked by mypy --strict (pyproject), the lines below included -----


def wire_typed_options() -> list[Any]:
    fastapi_app = FastAPI()
    fastapi_app.add_middleware(
        AdvisorMiddleware,
        ping_interval=0.5,
        paths={"/v1/messages", "/anthropic/v1/messages"},
        max_consults=2,
        native_executor=lambda model: model.startswith("claude-"),
    )
    starlette_app = Starlette()
    starlette_app.add_middleware(AdvisorMiddleware, router=HTTPRouter("http://127.0.0.1:4000"), advisor_timeout=60)
    wrapped = AdvisorMiddleware(FastAPI(), max_body_bytes=1 << 20)  # a bare FastAPI app, wrapped
    transport = httpx.ASGITransport(app=AdvisorMiddleware(starlette_app))
    return [fastapi_app, starlette_app, wrapped, transport]


def test_typed_wiring_builds() -> None:
    fastapi_app, starlette_app, wrapped, _ = wire_typed_options()
    assert isinstance(wrapped, AdvisorMiddleware)
    # add_middleware is lazy: building the stack validates the options.
    for app in (fastapi_app, starlette_app):
        app.build_middleware_stack()


def test_mypy_rejects_wrong_add_middleware_options(tmp_path: Path) -> None:
    snippet = tmp_path / "wiring.py"
    snippet.write_text(
        "from fastapi import FastAPI\n"
        "from advisor_middleware import AdvisorMiddleware\n"
        "app = FastAPI()\n"
        "app.add_middleware(AdvisorMiddleware, ping_interval=2.0, paths={'/v1/messages'})\n"
        "app.add_middleware(AdvisorMiddleware, ping_interval='2s')\n"
        "app.add_middleware(AdvisorMiddleware, ping_intervall=2.0)\n"
    )
    # The project's config and cache (warm after `mypy` ran): the check takes well under a second.
    out, err, status = mypy_api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache"), str(snippet)]
    )
    errors = [line.split(": error: ")[0].rsplit(":", 1)[1] for line in out.splitlines() if ": error: " in line]
    assert status == 1, out + err
    assert errors == ["5", "6"], out  # line 4 is fine; the wrong type and the typo are caught
    assert '"ping_interval" to "add_middleware" of "Starlette" has incompatible type "str"' in out
    assert 'Unexpected keyword argument "ping_intervall"' in out


# --- GZip -----------------------------------------------------------------------------------


def gzip_outside(script: Script) -> Starlette:
    app = scripted_host(script)
    app.add_middleware(AdvisorMiddleware)
    app.add_middleware(GZipMiddleware, minimum_size=10)  # added last: outermost
    return app


def gzip_inside(script: Script) -> Starlette:
    app = scripted_host(script)
    app.add_middleware(GZipMiddleware, minimum_size=10)
    app.add_middleware(AdvisorMiddleware)
    return app


def consult_in_json(script: Script) -> None:
    """A consult whose every leg the host answers with one JSON Message (GZip compresses those)."""
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use", json_only=True),
        Reply([text("Done.")], json_only=True),
    ).advisor(Reply([text("Advice.")], json_only=True))


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_gzip_outside_compresses_our_json_and_leaves_sse_alone(script: Script, streaming: bool) -> None:
    consult_in_json(script)
    async with http_for(gzip_outside(script)) as http:
        response = await http.post("/v1/messages", json={**PARAMS, "stream": streaming})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == (None if streaming else "gzip")
    consult_in_json(script)
    async with sdk_for(gzip_outside(script)) as sdk:
        message = await call(sdk, streaming, **PARAMS)
    assert block_types(message.content) == ONE_CONSULT


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_gzip_inside_never_compresses_a_leg(script: Script, streaming: bool) -> None:
    # The host answers legs with JSON, which its GZip would compress for a leg that asked for it.
    consult_in_json(script)
    async with sdk_for(gzip_inside(script)) as sdk:
        message = await call(sdk, streaming, **PARAMS)
    assert block_types(message.content) == ONE_CONSULT
    assert message.content[2].content.text == "Advice."  # type: ignore[union-attr]
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    assert all("accept-encoding" not in r.headers for r in script.requests)


async def test_gzip_inside_compresses_a_pass_through_answer_which_reaches_the_client_as_is(script: Script) -> None:
    script.direct(Reply([text("plain " * 50)]))
    body = {"model": "exec", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    async with http_for(gzip_inside(script)) as http, http.stream("POST", "/v1/messages", json=body) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw))["content"] == [text("plain " * 50)]
    assert script.requests[0].headers["accept-encoding"] == "gzip, deflate"


async def test_a_leg_answered_compressed_anyway_is_never_parsed(script: Script) -> None:
    # A host that compresses whatever was asked: the leg's answer cannot be read, and is not.
    async def always_gzip(scope: Any, receive: Any, send: Any) -> None:
        async def compressed(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"content-encoding", b"gzip")]}
            elif message["type"] == "http.response.body":
                message = {**message, "body": gzip.compress(message.get("body", b""))}
            await send(message)

        await host(scope, receive, compressed)

    host = scripted_host(script)
    script.executor(Reply([text("hidden")], json_only=True))
    async with http_for(AdvisorMiddleware(always_gzip)) as http:
        response = await http.post("/v1/messages", json=PARAMS)
    assert response.status_code == 502
    assert "content-encoding 'gzip'" in response.json()["error"]["message"]


# --- the FastAPI gateway of examples/fastapi_app.py ------------------------------------------

EXAMPLE_REQUEST: dict[str, Any] = {
    "model": "demo-executor",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Plan a birthday party"}],
    "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "demo-advisor"}],
}
ADVICE_START = "1. Restate the goal in one line before acting"


@pytest.fixture(scope="module", params=["uvicorn", "granian"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``uvicorn examples.fastapi_app:app`` (or granian) in a subprocess, as a user runs it."""
    log = tmp_path_factory.mktemp("fastapi") / "server.log"
    with example_server(request.param, "examples.fastapi_app:app", log=log) as url:
        yield url


async def spend(url: str, key: str) -> list[tuple[str, str, bool]]:
    """The gateway's log of every request made with ``key``: (model, leg, allowed)."""
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/v1/spend", headers={"x-api-key": key})
    assert response.status_code == 200
    return [(r["model"], r["leg"], r["allowed"]) for r in response.json()["requests"]]


async def consult_as(url: str, key: str, streaming: bool) -> tuple[BetaMessage, dict[str, list[Any]]]:
    """One consult request with ``key``; the message, and what it added to each key's spend log."""
    before = {k: await spend(url, k) for k in ("sk-full", "sk-executor-only")}
    async with anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0) as sdk:
        message = await call(sdk, streaming, **EXAMPLE_REQUEST)
    added = {k: (await spend(url, k))[len(logged) :] for k, logged in before.items()}
    return message, added


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_a_key_allowed_the_advisor_model_gets_the_advice(gateway: str, streaming: bool) -> None:
    message, spent = await consult_as(gateway, "sk-full", streaming)
    assert block_types(message.content) == ONE_CONSULT
    result = message.content[2]
    assert result.type == "advisor_tool_result" and result.content.type == "advisor_result"
    assert result.content.text.startswith(ADVICE_START)
    assert [i.model for i in message.usage.iterations or [] if i.type == "advisor_message"] == ["demo-advisor"]
    assert spent == {
        "sk-full": [
            ("demo-executor", "executor", True),
            ("demo-advisor", "advisor", True),
            ("demo-executor", "executor", True),
        ],
        "sk-executor-only": [],
    }


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_a_key_not_allowed_the_advisor_model_gets_an_error_result_and_the_executor_goes_on(
    gateway: str, streaming: bool
) -> None:
    message, spent = await consult_as(gateway, "sk-executor-only", streaming)
    assert block_types(message.content) == ONE_CONSULT
    result = message.content[2]
    assert result.type == "advisor_tool_result" and result.content.type == "advisor_tool_result_error"
    assert result.content.error_code == "unavailable"
    final = message.content[3]
    assert final.type == "text" and final.text.startswith("You asked: “Plan a birthday party”")
    assert ADVICE_START not in json.dumps(message.model_dump())
    assert message.stop_reason == "end_turn"
    assert [i.type for i in message.usage.iterations or []] == ["message", "message"]  # no advice, no price
    # The advisor leg was made, under the caller's key, and refused by the route's dependency.
    assert spent == {
        "sk-full": [],
        "sk-executor-only": [
            ("demo-executor", "executor", True),
            ("demo-advisor", "advisor", False),
            ("demo-executor", "executor", True),
        ],
    }


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_an_unknown_key_gets_the_hosts_401(gateway: str, streaming: bool) -> None:
    async with anthropic.AsyncAnthropic(base_url=gateway, api_key="sk-nobody", max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as info:
            await call(sdk, streaming, **EXAMPLE_REQUEST)
    error = {"type": "authentication_error", "message": "invalid x-api-key"}
    assert info.value.body == {"type": "error", "error": error}


async def test_fastapi_lifespan_runs_under_the_middleware_and_its_state_reaches_every_leg() -> None:
    app = create_app(delay=0)
    async with LifespanManager(app) as manager:
        async with sdk_for(manager.app) as sdk:
            message = await call(sdk.with_options(api_key="sk-full"), False, **EXAMPLE_REQUEST)
        async with http_for(manager.app) as http:
            response = await http.get("/v1/spend", headers={"x-api-key": "sk-full"})
    assert block_types(message.content) == ONE_CONSULT
    # The spend log lives in the lifespan state: every leg wrote to it.
    assert [r["leg"] for r in response.json()["requests"]] == ["executor", "advisor", "executor"]


# --- the caller's spelling of the path --------------------------------------------------------


def starlette_host(script: Script) -> Starlette:
    app = scripted_host(script)  # one route, /v1/messages; Starlette redirects /v1/messages/ (307)
    app.add_middleware(AdvisorMiddleware)
    return app


def fastapi_host(script: Script) -> FastAPI:
    app = FastAPI(routes=scripted_host(script).routes)  # redirect_slashes, as Starlette
    app.add_middleware(AdvisorMiddleware)
    return app


def fastapi_mounted(script: Script) -> FastAPI:
    outer = FastAPI()
    outer.mount("/api", fastapi_host(script))  # legs go to /api/v1/messages, under root_path
    return outer


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize(
    ("build", "path"),
    [
        pytest.param(starlette_host, "/v1/messages/", id="starlette"),
        pytest.param(fastapi_host, "/v1/messages/", id="fastapi"),
        pytest.param(fastapi_mounted, "/api/v1/messages/", id="fastapi-mounted"),
    ],
)
async def test_a_trailing_slash_from_the_caller_sends_legs_to_the_route_the_host_serves(
    script: Script, build: Any, path: str, streaming: bool
) -> None:
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text("Done.")]),
    ).advisor(Reply([text("Advice.")]))
    async with uvicorn_server(build(script)) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(path, json={**PARAMS, "stream": streaming})
    assert response.status_code == 200, response.text
    assert block_types(answer_content(response, streaming)) == ONE_CONSULT
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
