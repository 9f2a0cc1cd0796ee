"""The bad-input corpus: every file under tests/corpus/ through ``AdvisorMiddleware``.

``tests/corpus/manifest.json`` names each case's file and how it is sent (method, path, headers,
scope type, middleware options) and what must happen:

- ``{"status": 4xx, "type": ..., "field": ...}``: we answer that status in Anthropic's error shape,
  the message naming the field, and the host sees nothing;
- ``"pass"``: the host gets the request untouched (the same bytes, method and path);
- ``"forward"``: the host gets it with the history rendered (no advisor on this turn);
- ``"orchestrate"``: the advisor loop runs (one consult) and answers 200.

Whatever the case: never a 5xx from us, never a traceback in the response, never a hang. Every
case runs in-process (a hand-written ASGI client, so lying headers reach the middleware as they
are); the HTTP POST cases run over uvicorn too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from advisor_middleware import AdvisorMiddleware

from .support.helpers import Slot, block_types, check_stream, consult, http_scope, read_body
from .support.servers import uvicorn_server
from .support.upstream import Script, scripted_host

pytestmark = pytest.mark.anyio

CORPUS = Path(__file__).parent / "corpus"
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())
HANG = 30.0
"""Seconds a case may take before it counts as a hang."""


@dataclass
class Seen:
    type: str
    method: str | None
    path: str | None
    body: bytes


@dataclass
class Host:
    """The gateway behind the middleware: answers direct requests itself (recording exactly what
    arrived) and legs with the scripted model."""

    script: Script
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.legs = scripted_host(self.script)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and any(k == b"x-advisor-leg" for k, _ in scope["headers"]):
            await self.legs(scope, receive, send)
            return
        body = await read_body(receive) if scope["type"] == "http" else b""
        self.seen.append(Seen(scope["type"], scope.get("method"), scope.get("path"), body))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"host"})


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def scope_of(case: dict[str, Any], body: bytes) -> dict[str, Any]:
    headers = {"content-type": "application/json", "content-length": str(len(body)), **case.get("headers", {})}
    path = case.get("path", "/v1/messages")
    return http_scope(
        [(k.encode(), v.encode()) for k, v in headers.items()],
        type=case.get("scope", "http"),
        method=case.get("method", "POST"),
        path=path,
        raw_path=path.encode(),
    )


async def run_in_process(app: Any, case: dict[str, Any], body: bytes) -> Answer | None:
    """One ASGI call: the body in 64 KiB chunks, then (once the response is done) a disconnect."""
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    sent: list[dict[str, Any]] = []
    done = anyio.Event()

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    with anyio.fail_after(HANG):
        await app(scope_of(case, body), receive, send)
    if not sent:
        return None
    start = sent[0]
    assert start["type"] == "http.response.start", sent[0]
    headers = {bytes(k).decode().lower(): bytes(v).decode() for k, v in start.get("headers", [])}
    return Answer(start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:]))


def check(name: str, case: dict[str, Any], body: bytes, answer: Answer | None, host: Host, script: Script) -> None:
    expect = case["expect"]
    where = f"{name}: {answer.status if answer else None} {answer.body[:300]!r}" if answer else name
    if answer is not None:
        assert answer.status < 500, where
        assert b"Traceback" not in answer.body and b'File "' not in answer.body, where
    if isinstance(expect, dict):
        assert answer is not None and answer.status == expect["status"], where
        assert answer.headers["content-type"] == "application/json", where
        error = json.loads(answer.body)
        assert set(error) == {"type", "error"} and error["type"] == "error", where
        assert error["error"]["type"] == expect["type"], where
        assert expect["field"] in error["error"]["message"], where
        assert host.seen == [] and script.requests == [], where
    elif expect in ("pass", "forward"):
        assert len(host.seen) == 1, where
        seen = host.seen[0]
        assert seen.type == case.get("scope", "http"), where
        if seen.type == "http":
            assert (seen.method, seen.path) == (case.get("method", "POST"), case.get("path", "/v1/messages")), where
        if expect == "pass" and seen.type == "http":
            assert seen.body == body, f"{where}: the host got other bytes"
        if expect == "forward":
            assert seen.body != body and json.loads(seen.body), where
        assert script.requests == [], where
        if seen.type == "http":
            assert answer is not None and (answer.status, answer.body) == (200, b"host"), where
    else:
        assert expect == "orchestrate", f"{name}: unknown expectation {expect!r}"
        assert answer is not None and answer.status == 200, where
        if answer.headers["content-type"].startswith("text/event-stream"):
            _, message = check_stream(answer.body)
            assert message is not None, where
            content = message.model_dump()["content"]
        else:
            content = json.loads(answer.body)["content"]
        assert "advisor_tool_result" in block_types(content), where
        assert "executor" in [r.role for r in script.requests], where
        assert host.seen == [], where


@pytest.mark.parametrize("name", sorted(MANIFEST))
async def test_case_in_process(name: str) -> None:
    case = MANIFEST[name]
    body = (CORPUS / case["file"]).read_bytes()
    script = Script()
    consult(script)
    host = Host(script)
    answer = await run_in_process(AdvisorMiddleware(host, **case.get("options", {})), case, body)
    check(name, case, body, answer, host, script)


def test_the_corpus_is_big_enough_and_every_file_is_a_case() -> None:
    assert len(MANIFEST) >= 60
    files = {p.name for p in CORPUS.iterdir()} - {"manifest.json"}
    assert files == {case["file"] for case in MANIFEST.values()}


# --- over uvicorn -------------------------------------------------------------------------------

OVER_HTTP = sorted(
    name
    for name, case in MANIFEST.items()
    if case.get("scope", "http") == "http"
    and case.get("method", "POST") == "POST"
    and "content-length" not in case.get("headers", {})
    and "path" not in case  # httpx would normalise /v1/messages/../messages
)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[tuple[str, Slot]]:
    slot = Slot()
    async with uvicorn_server(slot) as url:
        yield url, slot


@pytest.mark.parametrize("name", OVER_HTTP)
async def test_case_over_uvicorn(server: tuple[str, Slot], name: str) -> None:
    url, slot = server
    case = MANIFEST[name]
    body = (CORPUS / case["file"]).read_bytes()
    script = Script()
    consult(script)
    host = Host(script)
    slot.app = AdvisorMiddleware(host, **case.get("options", {}))
    headers = {"content-type": "application/json", **case.get("headers", {})}
    async with httpx.AsyncClient(base_url=url, timeout=HANG) as http:
        response = await http.request(
            case.get("method", "POST"), case.get("path", "/v1/messages"), content=body, headers=headers
        )
    answer = Answer(response.status_code, dict(response.headers), response.content)
    check(name, case, body, answer, host, script)
