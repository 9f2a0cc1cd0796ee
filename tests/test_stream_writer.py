"""The streaming writer: events and keep-alive pings share one ASGI ``send``, one call at a time,
and a client gone during a ping ends the response quietly; the events of one host send go out in
one send, and nothing waits to fill a group."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio
import pytest

from advisor_middleware import AdvisorMiddleware, AppRouter, Leg
from bench.hosts import ModelHost, small_consult_body
from bench.inproc import receiver, request_scope

from .support.helpers import ADVISOR_PARAMS, ONE_CONSULT, block_types, check_stream, consult, http_scope, post
from .support.upstream import HOSTS, Reply, Script, scripted_host, text, tool_use

pytestmark = pytest.mark.anyio

BODY = small_consult_body(True)


async def test_pings_and_events_never_send_at_once() -> None:
    # Every send takes a while (a slow client), pings are due all the time, the advisor thinks.
    app = AdvisorMiddleware(ModelHost(advisor_delay=0.3), ping_interval=0.01)
    in_flight = 0
    most = 0
    bodies: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await anyio.sleep(0.005)
        in_flight -= 1
        if message["type"] == "http.response.body":
            bodies.append(message["body"])

    with anyio.fail_after(30):
        await app(request_scope(BODY, stream=True, beta=True), receiver([BODY]), send)

    assert most == 1
    # One send may carry several events; each event starts with its "event:" line.
    names = [line for b in bodies for line in b.split(b"\n") if line.startswith(b"event: ")]
    assert names.count(b"event: ping") >= 3
    events = [n for n in names if n != b"event: ping"]
    assert events[0] == b"event: message_start" and events[-1] == b"event: message_stop"
    assert bodies[-1] == b""


async def test_a_client_gone_during_a_ping_ends_the_response_quietly() -> None:
    host = ModelHost(advisor_delay=600.0)
    app = AdvisorMiddleware(host, ping_interval=0.02)
    sent: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"].startswith(b"event: ping"):
            raise OSError("the client is gone")
        sent.append(message.get("body", b""))

    with anyio.fail_after(30):  # the advisor leg (600 s) is cancelled, not awaited
        await app(request_scope(BODY, stream=True, beta=True), receiver([BODY]), send)

    assert host.calls == 2  # executor leg 1, then the advisor leg that was cancelled
    assert not any(b.startswith(b"event: message_stop") for b in sent)


class StreamOnly:
    """A third-party router with the protocol's ``stream`` only (no ``batches`` or ``push``)."""

    def __init__(self, app: Any) -> None:
        self.inner = AppRouter(app)

    def stream(self, leg: Leg) -> AsyncIterator[dict[str, Any]]:
        return self.inner.stream(leg)


async def relayed(app: Any) -> tuple[list[bytes], list[dict[str, Any]]]:
    bodies: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            bodies.append(message["body"])

    with anyio.fail_after(30):
        await app(request_scope(BODY, stream=True, beta=True), receiver([BODY]), send)
    events = [json.loads(line[6:]) for b in bodies for line in b.split(b"\n") if line.startswith(b"data: ")]
    return bodies, events


class OneSendPerLeg:
    """Wraps a host so that each leg's answer reaches the middleware in one ``send``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        chunks: list[bytes] = []

        async def collect(message: MutableMapping[str, Any]) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": False})

        await self.app(scope, receive, collect)


async def test_events_a_host_sends_together_go_out_in_one_send() -> None:
    host = ModelHost(final_deltas=50)
    together, together_events = await relayed(AdvisorMiddleware(OneSendPerLeg(host)))
    apart, apart_events = await relayed(AdvisorMiddleware(host))
    single, single_events = await relayed(AdvisorMiddleware(host, router=StreamOnly(host)))
    # The same stream, event for event, however the host's answer is cut.
    assert together_events == apart_events == single_events
    assert len(apart_events) > 60
    # Leg 1 (text + the call), the advisor's result, leg 2 with the message end: a few sends.
    assert len(together) <= 6, [b[:60] for b in together]
    # One send per host send: at least the 50 final deltas one by one.
    assert len(apart) > 50
    # A stream-only router: one group per upstream event, never fewer sends than that.
    assert len(single) > 50


@pytest.mark.parametrize("gap", [0.0, 0.005])
async def test_a_starlette_host_is_relayed_as_it_sends_and_never_held_back(script: Script, gap: float) -> None:
    # Starlette sends each chunk its generator yields on its own, here one event each: with the
    # events all ready at once (gap 0) or coming one by one, each goes out as the host sends it,
    # nothing waits to fill a group.
    many = Reply([text(f"part {i}") for i in range(20)], gap=gap)
    script.executor(Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"), many)
    script.advisor(Reply([text("Advice.")]))
    body = json.dumps({**ADVISOR_PARAMS, "stream": True}).encode()
    bodies: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            bodies.append(message["body"])

    with anyio.fail_after(30):
        await AdvisorMiddleware(scripted_host(script))(http_scope([]), receiver([body]), send)
    _, message = check_stream(b"".join(bodies))
    assert message is not None and block_types(message.content)[:3] == ONE_CONSULT[:3]
    assert len(block_types(message.content)) == 23
    # The 60 events of the last leg's 20 blocks: at least one send each.
    assert len(bodies) > 60


@pytest.mark.parametrize("host", list(HOSTS))
async def test_a_client_gone_during_an_event_ends_the_response_quietly(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An ASGI 2.4 server raises OSError from send once its client is gone. Mid-stream (the final
    # leg's blocks), that ends the request: nothing more is sent (no error event for a client
    # that is not there), no failure is logged, and the host's leg is stopped, not run to its end.
    script = Script()
    script.executor(
        Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"),
        Reply([text(f"part {i}. ") for i in range(60)]),
    ).advisor(Reply([text("Advice.")]))
    app = AdvisorMiddleware(HOSTS[host](script))
    body = json.dumps({**ADVISOR_PARAMS, "stream": True}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    bodies = 0

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal bodies
        if message["type"] != "http.response.body":
            return
        bodies += 1
        if bodies > 20:
            raise OSError("the client is gone")

    with caplog.at_level("DEBUG", logger="advisor_middleware"), anyio.fail_after(30):
        await app(http_scope(headers), receiver([body]), send)

    assert bodies == 21  # the failed send was the last one tried
    # Nothing but the account of the legs and the request (docs/observability.md), which says so.
    ours = [r for r in caplog.records if r.name.startswith("advisor_middleware")]
    assert [r.getMessage() for r in ours if not hasattr(r, "request_id")] == []
    assert [getattr(r, "outcome", None) for r in ours if hasattr(r, "consults")] == ["client_gone"]
    assert [r.role for r in script.requests] == ["executor", "advisor", "executor"]
    assert script.finished.count("executor") == 1  # the final leg did not run to its end


class BodiesAs:
    """Wraps a host so that every body it sends is another bytes-like type (ASGI says bytes;
    some apps send a bytearray or a memoryview, which servers accept)."""

    def __init__(self, app: Any, kind: type) -> None:
        self.app = app
        self.kind = kind

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def wrapped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": self.kind(message.get("body", b""))}
            await send(message)

        await self.app(scope, receive, wrapped)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
async def test_a_host_that_sends_other_bytes_like_bodies_is_relayed_the_same(kind: type) -> None:
    answers = []
    for wrap in (False, True):
        script = Script()
        consult(script)
        host = scripted_host(script)
        response = await post(
            AdvisorMiddleware(BodiesAs(host, kind) if wrap else host), json=ADVISOR_PARAMS | {"stream": True}
        )
        # The host draws a fresh message id per leg: everything else must be the same bytes.
        answers.append((response.status_code, re.sub(rb'"msg_[0-9a-f]+"', b'"msg_"', response.content)))
    assert answers[0][0] == 200
    assert answers[1] == answers[0]
    _, message = check_stream(answers[1][1])
    assert message is not None and block_types(message.content) == ONE_CONSULT
