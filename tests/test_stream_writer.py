"""The streaming writer: events and keep-alive pings share one ASGI ``send``, one call at a time,
and a client gone during a ping ends the response quietly (docs/performance.md, step 1); events
ready together go out in one send, and nothing waits to fill a group (step 7)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio
import pytest

from advisor_middleware import AdvisorMiddleware, AppRouter, Leg
from bench.hosts import ModelHost, small_consult_body
from bench.inproc import receiver, request_scope

from .helpers import ADVISOR_PARAMS, ONE_CONSULT, block_types, check_stream, http_scope
from .upstream import Reply, Script, scripted_host, text, tool_use

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

    with anyio.fail_after(5):
        await app(request_scope(BODY, stream=True, beta=True), receiver([BODY]), send)

    assert most == 1
    # One send may carry several events; each event starts with its "event:" line.
    names = [line for b in bodies for line in b.split(b"\n") if line.startswith(b"event: ")]
    assert names.count(b"event: ping") >= 3
    events = [n for n in names if n != b"event: ping"]
    assert events[0] == b"event: message_start" and events[-1] == b"event: message_stop"
    assert bodies[-1] == b""


async def test_a_client_gone_during_a_ping_ends_the_response_quietly() -> None:
    host = ModelHost(advisor_delay=10.0)
    app = AdvisorMiddleware(host, ping_interval=0.02)
    sent: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"].startswith(b"event: ping"):
            raise OSError("the client is gone")
        sent.append(message.get("body", b""))

    with anyio.fail_after(2):  # the advisor leg (10 s) is cancelled, not awaited
        await app(request_scope(BODY, stream=True, beta=True), receiver([BODY]), send)

    assert host.calls == 2  # executor leg 1, then the advisor leg that was cancelled
    assert not any(b.startswith(b"event: message_stop") for b in sent)


class StreamOnly:
    """A third-party router with the protocol's ``stream`` only (no ``batches``)."""

    def __init__(self, app: Any) -> None:
        self.inner = AppRouter(app)

    def stream(self, leg: Leg) -> AsyncIterator[dict[str, Any]]:
        return self.inner.stream(leg)


async def relayed(app: Any) -> tuple[list[bytes], list[dict[str, Any]]]:
    bodies: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            bodies.append(message["body"])

    with anyio.fail_after(5):
        await app(request_scope(BODY, stream=True, beta=True), receiver([BODY]), send)
    events = [json.loads(line[6:]) for b in bodies for line in b.split(b"\n") if line.startswith(b"data: ")]
    return bodies, events


async def test_events_ready_together_go_out_in_one_send() -> None:
    # The scripted host sends its whole answer without waiting: each leg's events are one group.
    host = ModelHost(final_deltas=50)
    grouped, grouped_events = await relayed(AdvisorMiddleware(host))
    single, single_events = await relayed(AdvisorMiddleware(host, router=StreamOnly(host)))
    assert grouped_events == single_events  # the same stream, event for event
    assert len(single_events) > 60
    # A stream-only router: a send per upstream event (an advisor call or a consult result is
    # two client events in one send), so at least the 50 final deltas one by one.
    assert len(single) > 50
    # Leg 1 (text + the call), the advisor's result, leg 2 with the message end: a few sends.
    assert len(grouped) <= 8, [b[:60] for b in grouped]


@pytest.mark.parametrize("gap", [0.0, 0.005])
async def test_a_starlette_host_is_relayed_in_groups_and_never_held_back(script: Script, gap: float) -> None:
    # gap 0: the host's events are all ready at once, and go out in a few sends. gap > 0: each
    # event arrives on its own, and goes out on its own; nothing waits to fill a group.
    many = Reply([text(f"part {i}") for i in range(20)], gap=gap)
    script.executor(Reply([text("Asking."), tool_use("advisor", id="toolu_1")], stop_reason="tool_use"), many)
    script.advisor(Reply([text("Advice.")]))
    body = json.dumps({**ADVISOR_PARAMS, "stream": True}).encode()
    bodies: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            bodies.append(message["body"])

    with anyio.fail_after(10):
        await AdvisorMiddleware(scripted_host(script))(http_scope([]), receiver([body]), send)
    events, message = check_stream(b"".join(bodies))
    assert message is not None and block_types(message.content)[:3] == ONE_CONSULT[:3]
    assert len(block_types(message.content)) == 23
    if gap:
        # The 60 events of the last leg's 20 blocks: at least one send each.
        assert len(bodies) > 60
    else:
        assert len(bodies) < len(events) / 4, f"{len(bodies)} sends for {len(events)} events"
