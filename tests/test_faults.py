"""The fault matrix: every way a leg can fail, on the advisor leg, the first executor leg and a
later executor leg, streamed and JSON, through ``AdvisorMiddleware`` on a real uvicorn server.

Expected (Anthropic's contract, docs/reliability.md): an advisor fault becomes an
``advisor_tool_result_error`` with the right code and the executor carries on; an executor fault
before the response started is the upstream's status and Anthropic-shaped body; after it started,
``event: error`` ends the stream cleanly. Every streamed answer passes ``check_stream``.

The same cells in-process through the SDK (fewer faults, no sockets) are in test_loop.py
(``test_advisor_failure_becomes_an_error_result``, ``test_executor_failure_*``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from advisor_middleware import AdvisorMiddleware, HTTPRouter, Leg
from advisor_middleware.routers import AppRouter

from .support.helpers import ADVISOR_PARAMS, ONE_CONSULT, Slot, block_types, check_stream, logged_fields
from .support.servers import free_port, uvicorn_server
from .support.upstream import (
    ErrorEvent,
    Fail,
    Reply,
    Script,
    Turn,
    reply_events,
    reply_message,
    scripted_host,
    sse,
    text,
    tool_use,
)

pytestmark = pytest.mark.anyio

REQUEST = ADVISOR_PARAMS
SSE = {"content-type": "text/event-stream"}
EXEC = "exec-said-4d1f"
ADVISOR = "advisor-said-9b2e"
HOST = "host-said-c7a0"
MARKERS = (EXEC, ADVISOR, HOST)
"""Words in what the scripted executor, advisor and host say, in every cell: none may reach a
log record at INFO or above (``nothing_said_is_logged``)."""
ASKING = f"Asking ({EXEC})."
CARRYING_ON = f"Carrying on ({EXEC})."
ADVICE = f"Advice ({ADVISOR})."
HOST_SAYS = f"scripted failure ({HOST})"
READ_TIMEOUT = 0.3
"""The HTTPRouter's read timeout in the ``timeout`` cells; the leg answers after 3 s."""


@dataclass(frozen=True)
class Fault:
    turn: Turn | None
    """What the scripted host answers the failing leg with (None: the leg never reaches it)."""
    code: str
    """The advisor leg's ``error_code``."""
    status: int
    """The executor leg's status, before the response started (and always in JSON mode)."""
    error_type: str
    via: str = ""
    """``refused``, ``reset``, ``reset-mid``, ``timeout`` or ``http``: the failing leg goes through
    an ``HTTPRouter`` to a closed port, a server that resets the connection, or the scripted host
    on uvicorn (with a short read timeout for ``timeout``)."""
    mid: bool = False
    """On the first executor leg the fault comes after ``message_start``: the stream has started."""


def _raw(status: int, body: bytes, headers: dict[str, str] | None = None) -> Fail:
    return Fail(status, raw=body, headers=headers or {})


JSON = {"content-type": "application/json"}


def _message(**fields: Any) -> Fail:
    """A 200 JSON Message (the host ignored ``stream: true``) with these fields overridden."""
    message = reply_message(Reply([text("Fine.")]), "exec")
    return _raw(200, json.dumps({**message, **fields}).encode(), JSON)


def _unreadable(turn: Turn, via: str = "") -> Fault:
    """A leg answer that is no Messages answer: a 502 (executor), ``unavailable`` (advisor)."""
    return Fault(turn, "unavailable", 502, "api_error", via=via)


def _start_event(said: str) -> bytes:
    """A ``message_start`` event whose message has ``said`` in it."""
    return sse(reply_events(Reply([text(said)]), said)[0])


FAULTS: dict[str, Fault] = {
    "429": Fault(
        Fail(429, "rate_limit_error", HOST_SAYS, headers={"retry-after": "7"}),
        "too_many_requests",
        429,
        "rate_limit_error",
    ),
    "529": Fault(Fail(529, "overloaded_error", HOST_SAYS), "overloaded", 529, "overloaded_error"),
    "500": Fault(Fail(500, "api_error", HOST_SAYS), "unavailable", 500, "api_error"),
    "500-html": Fault(
        _raw(500, f"<html>Internal Server Error ({HOST})</html>".encode()), "unavailable", 500, "api_error"
    ),
    "404": Fault(
        Fail(404, "not_found_error", f"model: adv-model not found ({HOST})"), "model_not_found", 404, "not_found_error"
    ),
    "401": Fault(Fail(401, "authentication_error", HOST_SAYS), "unavailable", 401, "authentication_error"),
    "403": Fault(Fail(403, "permission_error", HOST_SAYS), "unavailable", 403, "permission_error"),
    "timeout": Fault(
        Reply([text(f"late {EXEC}")], delay=3.0), "execution_time_exceeded", 504, "timeout_error", via="timeout"
    ),
    "refused": Fault(None, "unavailable", 502, "api_error", via="refused"),
    "reset": Fault(None, "unavailable", 502, "api_error", via="reset"),
    "reset-mid-stream": Fault(None, "unavailable", 502, "api_error", via="reset-mid", mid=True),
    "malformed-sse": Fault(
        _raw(200, b"event: message_start\ndata: {not json\n\n", SSE), "unavailable", 502, "api_error"
    ),
    # Data that is not JSON, holding what the model said: a cut-off event, a lone surrogate.
    "cut-off-json": _unreadable(_raw(200, _start_event(EXEC)[:-22] + b"\n\n", SSE)),
    "lone-surrogate": _unreadable(
        _raw(200, _start_event(EXEC).replace(EXEC.encode(), b"%s \\ud800" % EXEC.encode()), SSE)
    ),
    "error-event-not-json": Fault(
        _raw(200, f"event: error\ndata: {HOST} is overloaded\n\n".encode(), SSE), "unavailable", 500, "api_error"
    ),
    "sse-not-an-object": Fault(
        _raw(200, b"event: message_start\ndata: [1,2]\n\n", SSE), "unavailable", 502, "api_error"
    ),
    "error-event-first": Fault(
        ErrorEvent(Reply([text(f"x {EXEC}")]), after=0, message=HOST_SAYS), "overloaded", 529, "overloaded_error"
    ),
    "error-event-mid-stream": Fault(
        ErrorEvent(Reply([text(f"partial {EXEC}")]), after=3, message=HOST_SAYS),
        "overloaded",
        529,
        "overloaded_error",
        mid=True,
    ),
    "no-message-delta": Fault(Reply([text(f"cut {EXEC}")], drop_after=3), "unavailable", 502, "api_error", mid=True),
    "empty-200-sse": Fault(_raw(200, b"", SSE), "unavailable", 502, "api_error"),
    "empty-200-json": Fault(_raw(200, b""), "unavailable", 502, "api_error"),
    "200-not-a-message": Fault(
        _raw(200, b'{"ok":true}', {"content-type": "application/json"}), "unavailable", 502, "api_error"
    ),
    # Statuses that are no error: relayed, they could not carry the error body.
    "204": _unreadable(_raw(204, b"")),
    "304": _unreadable(_raw(304, b"")),
    "307": _unreadable(_raw(307, b"", {"location": "/elsewhere"})),
    "204-http": _unreadable(_raw(204, b""), via="http"),
    # A JSON Message of the wrong shape.
    "message-content-ints": _unreadable(_message(content=[1])),
    "message-content-string": _unreadable(_message(content="abc")),
    "message-content-nulls": _unreadable(_message(content=[None])),
    "message-usage-int": _unreadable(_message(usage=5)),
    "message-text-int": _unreadable(_message(content=[{"type": "text", "text": 5}])),
    "message-content-ints-http": _unreadable(_message(content=[1]), via="http"),
}


@pytest.fixture(autouse=True)
def nothing_said_is_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test here: no log record at INFO or above (its message, fields, traceback or stack) holds
    what a scripted model or the host said (docs/reliability.md, security model)."""
    caplog.set_level(logging.INFO)  # the root logger: every logger, the servers' included
    yield
    formatter = logging.Formatter()
    for record in caplog.get_records("call"):
        logged = formatter.format(record) + logged_fields(record)
        for marker in MARKERS:
            assert marker not in logged, f"{record.name} logged {marker!r}:\n{logged}"


@asynccontextmanager
async def resetting_server(prefix: bytes = b"") -> AsyncIterator[str]:
    """A server that reads the request, writes ``prefix``, then resets the connection (RST)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if prefix:
            writer.write(prefix)
            await writer.drain()
            await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STARTED_THEN_RESET = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + _chunk(b"".join(sse(e) for e in reply_events(Reply([text(f"partial {EXEC}")]), "exec")[:3]))
)


class Switch:
    """Every leg goes to the host in-process, except the ``nth`` leg of ``role``: to ``fault``."""

    def __init__(self, host: Any, role: str, nth: int, fault: HTTPRouter) -> None:
        self.default = AppRouter(host)
        self.role, self.nth, self.fault = role, nth, fault
        self.seen: Counter[str] = Counter()

    def stream(self, leg: Leg) -> AsyncIterator[dict[str, Any]]:
        self.seen[leg.role] += 1
        if leg.role == self.role and self.seen[leg.role] == self.nth:
            return self.fault.stream(leg)
        return self.default.stream(leg)


@dataclass
class Servers:
    gateway: str
    upstream: str
    slots: tuple[Slot, Slot]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[Servers]:
    slots = (Slot(), Slot())
    async with uvicorn_server(slots[0]) as gateway_url, uvicorn_server(slots[1]) as upstream_url:
        yield Servers(gateway_url, upstream_url, slots)


@asynccontextmanager
async def gateway(
    servers: Servers, script: Script, fault: Fault, role: str, nth: int
) -> AsyncIterator[httpx.AsyncClient]:
    """The middleware around the scripted host on uvicorn, the failing leg routed as ``fault.via`` says."""
    host = scripted_host(script)
    servers.slots[1].app = host
    async with _fault_url(fault, servers.upstream) as url:
        router = None
        if url is not None:
            timeout = httpx.Timeout(5.0, read=READ_TIMEOUT) if fault.via == "timeout" else 5.0
            router = Switch(host, role, nth, HTTPRouter(url, timeout=timeout))
        servers.slots[0].app = AdvisorMiddleware(host, router=router)
        async with httpx.AsyncClient(base_url=servers.gateway, timeout=10.0) as client:
            yield client
        if router is not None:
            await router.fault.aclose()


@asynccontextmanager
async def _fault_url(fault: Fault, upstream: str) -> AsyncIterator[str | None]:
    if fault.via == "refused":
        yield f"http://127.0.0.1:{free_port()}"
    elif fault.via in ("reset", "reset-mid"):
        async with resetting_server(STARTED_THEN_RESET if fault.via == "reset-mid" else b"") as url:
            yield url
    elif fault.via in ("timeout", "http"):
        yield upstream
    else:
        yield None


def asking() -> Reply:
    return Reply([text(ASKING), tool_use("advisor", id="toolu_F")], stop_reason="tool_use")


async def answer(client: httpx.AsyncClient, streaming: bool) -> httpx.Response:
    return await client.post("/v1/messages", json={**REQUEST, "stream": streaming})


def final_message(response: httpx.Response, streaming: bool) -> dict[str, Any]:
    """The whole message, from the JSON body or the checked stream (accepted by the SDK)."""
    assert response.status_code == 200, response.text
    if not streaming:
        assert response.headers["content-type"] == "application/json"
        message: dict[str, Any] = response.json()
        return message
    assert response.headers["content-type"].startswith("text/event-stream")
    _, message_model = check_stream(response.content)
    assert message_model is not None, "the stream ended with an error event"
    return message_model.model_dump(exclude_none=True)


STREAMING = pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])


@STREAMING
@pytest.mark.parametrize("fault", [*FAULTS, "advisor_timeout"])
async def test_advisor_leg_fault_becomes_an_error_result(
    servers: Servers, script: Script, fault: str, streaming: bool
) -> None:
    cell = FAULTS.get(fault) or Fault(Reply([text(f"too late {ADVISOR}")], delay=3.0), "execution_time_exceeded", 0, "")
    script.executor(asking(), Reply([text(CARRYING_ON)]))
    if cell.turn is not None and cell.via in ("", "timeout", "http"):
        script.advisor(cell.turn)
    if fault == "advisor_timeout":
        # The middleware's own advisor_timeout, with the default in-process router.
        servers.slots[0].app = AdvisorMiddleware(scripted_host(script), advisor_timeout=0.3)
        async with httpx.AsyncClient(base_url=servers.gateway, timeout=10.0) as client:
            response = await answer(client, streaming)
    else:
        async with gateway(servers, script, cell, "advisor", 1) as client:
            response = await answer(client, streaming)

    message = final_message(response, streaming)
    assert block_types(message["content"]) == ONE_CONSULT
    assert message["content"][2]["content"] == {"type": "advisor_tool_result_error", "error_code": cell.code}
    assert message["content"][3] == {"type": "text", "text": CARRYING_ON}
    assert message["stop_reason"] == "end_turn"
    legs = script.of("executor")
    assert len(legs) == 2, "the executor carried on after the failed consult"
    assert legs[1].body["messages"][-1]["content"][0]["is_error"] is True
    assert cell.code in legs[1].body["messages"][-1]["content"][0]["content"]


def assert_error_response(response: httpx.Response, fault: Fault) -> None:
    """Before the response started: the upstream's status and an Anthropic-shaped body."""
    assert response.status_code == fault.status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == fault.error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    if isinstance(fault.turn, Fail) and fault.turn.raw is None:
        assert body == {"type": "error", "error": {"type": fault.error_type, "message": fault.turn.message}}
        for name, value in fault.turn.headers.items():
            assert response.headers[name] == value


def assert_error_event(response: httpx.Response, fault: Fault, blocks: list[str]) -> None:
    """After the response started: these blocks, all closed, then one error event ends the stream."""
    assert response.status_code == 200, response.text
    events, message = check_stream(response.content)
    assert message is None
    name, error = events[-1]
    assert name == "error" and error["error"]["type"] == fault.error_type
    assert [e["content_block"]["type"] for n, e in events if n == "content_block_start"] == blocks
    assert "message_delta" not in [n for n, _ in events]


@STREAMING
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_first_executor_leg_fault(servers: Servers, script: Script, fault: str, streaming: bool) -> None:
    cell = FAULTS[fault]
    if cell.turn is not None:
        script.executor(cell.turn)
    async with gateway(servers, script, cell, "executor", 1) as client:
        response = await answer(client, streaming)
    if streaming and cell.mid:
        assert_error_event(response, cell, ["text"])
    else:
        assert_error_response(response, cell)
    assert script.of("advisor") == []


@STREAMING
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_later_executor_leg_fault(servers: Servers, script: Script, fault: str, streaming: bool) -> None:
    cell = FAULTS[fault]
    script.executor(asking()).advisor(Reply([text(ADVICE)]))
    if cell.turn is not None:
        script.executor(cell.turn)
    async with gateway(servers, script, cell, "executor", 2) as client:
        response = await answer(client, streaming)
    if streaming:
        blocks = ["text", "server_tool_use", "advisor_tool_result"]
        assert_error_event(response, cell, [*blocks, "text"] if cell.mid else blocks)
    else:
        assert_error_response(response, cell)
    assert [r.role for r in script.requests][:2] == ["executor", "advisor"]


def test_the_matrix_covers_every_kind_of_fault() -> None:
    # advisor leg {429, 529, 500, 404, 401/403, timeout, refused/reset, malformed SSE, an error
    # event mid-stream, a stream that ends early, an empty 200}; executor leg the same.
    wanted = {"429", "529", "500", "404", "401", "403", "timeout", "refused", "reset", "malformed-sse"}
    wanted |= {"error-event-mid-stream", "no-message-delta", "empty-200-sse"}
    assert wanted <= set(FAULTS)


@STREAMING
@pytest.mark.parametrize("role", ["advisor", "executor"])
async def test_a_stream_cut_between_message_delta_and_message_stop_lost_nothing(
    servers: Servers, script: Script, role: str, streaming: bool
) -> None:
    # The leg told how it ended (message_delta, with the usage); only message_stop is missing.
    # Nothing is lost, so it counts as complete: the advice is used, the answer is whole.
    cut = 5  # message_start, block start, delta, stop, message_delta
    script.executor(asking(), Reply([text(CARRYING_ON)], drop_after=cut if role == "executor" else None))
    script.advisor(Reply([text(ADVICE)], drop_after=cut if role == "advisor" else None))
    servers.slots[0].app = AdvisorMiddleware(scripted_host(script))
    async with httpx.AsyncClient(base_url=servers.gateway, timeout=10.0) as client:
        message = final_message(await answer(client, streaming), streaming)
    assert block_types(message["content"]) == ONE_CONSULT
    assert message["content"][2]["content"] == {"type": "advisor_result", "text": ADVICE}
    assert message["content"][3] == {"type": "text", "text": CARRYING_ON}
    assert message["stop_reason"] == "end_turn"


@STREAMING
@pytest.mark.parametrize("via", ["app", "http"])
async def test_advice_with_bytes_that_are_not_utf8_is_read_as_a_client_would(
    servers: Servers, script: Script, via: str, streaming: bool
) -> None:
    # An SSE client decodes the stream with replacement (WHATWG); the relay parses each event's
    # data as the bytes it came as, and must read the same text,
    # not fail the consult: the byte becomes U+FFFD.
    raw = b"".join(sse(event) for event in reply_events(Reply([text("Advice AB.")]), "adv"))
    script.executor(asking(), Reply([text(CARRYING_ON)]))
    script.advisor(Fail(200, raw=raw.replace(b"AB", b"A\xffB"), headers=SSE))
    host = scripted_host(script)
    servers.slots[1].app = host
    router = Switch(host, "advisor", 1, HTTPRouter(servers.upstream)) if via == "http" else None
    servers.slots[0].app = AdvisorMiddleware(host, router=router)
    async with httpx.AsyncClient(base_url=servers.gateway, timeout=10.0) as client:
        message = final_message(await answer(client, streaming), streaming)
    if router is not None:
        await router.fault.aclose()
        assert router.seen["advisor"] == 1
    assert block_types(message["content"]) == ONE_CONSULT
    assert message["content"][2]["content"] == {"type": "advisor_result", "text": "Advice A\ufffdB."}


def _untyped(reply: Reply, model: str) -> bytes:
    """``reply`` as SSE whose data objects carry no ``type``: only the ``event:`` line names them."""
    events = reply_events(reply, model)
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps({k: v for k, v in e.items() if k != 'type'})}\n\n".encode()
        for e in events
    )


@STREAMING
async def test_events_typed_only_by_their_event_line_are_read(
    servers: Servers, script: Script, streaming: bool
) -> None:
    # The SSE event name stands in for a missing "type" field (both legs, through AppRouter);
    # what the client gets has the type again and passes the SDK.
    script.executor(Fail(200, raw=_untyped(asking(), "exec"), headers=SSE), Reply([text(CARRYING_ON)]))
    script.advisor(Fail(200, raw=_untyped(Reply([text(ADVICE)]), "adv"), headers=SSE))
    servers.slots[0].app = AdvisorMiddleware(scripted_host(script))
    async with httpx.AsyncClient(base_url=servers.gateway, timeout=10.0) as client:
        message = final_message(await answer(client, streaming), streaming)
    assert block_types(message["content"]) == ONE_CONSULT
    assert message["content"][0] == {"type": "text", "text": ASKING}
    assert message["content"][2]["content"] == {"type": "advisor_result", "text": ADVICE}


@STREAMING
async def test_a_malformed_event_is_named_without_what_the_host_wrote(
    servers: Servers, script: Script, streaming: bool
) -> None:
    # A type of the host's own, with an index we cannot read: the error names the event by
    # Anthropic's types only, since the host's strings may hold what the model said and the
    # failure is logged (nothing_said_is_logged checks it).
    odd = {"type": f"{EXEC} says", "index": [1]}
    events = reply_events(Reply([text(f"partial {EXEC}")]), "exec")
    script.executor(_raw(200, b"".join(sse(e) for e in [*events[:3], odd, *events[3:]]), SSE))
    servers.slots[0].app = AdvisorMiddleware(scripted_host(script))
    async with httpx.AsyncClient(base_url=servers.gateway, timeout=10.0) as client:
        response = await answer(client, streaming)
    malformed = Fault(None, "unavailable", 502, "api_error")
    if streaming:
        assert_error_event(response, malformed, ["text"])
    else:
        assert_error_response(response, malformed)
        assert EXEC not in response.text
