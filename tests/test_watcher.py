"""The request's watcher, the one reader of the client's ``receive``, once the response is out
(docs/performance.md, step 14): it ends on the server's own ``http.disconnect`` instead of being
cancelled, and a server that never sends one costs a short linger, never a hang or a ping after
the last body."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest

from advisor_middleware import AdvisorMiddleware, middleware
from bench.hosts import ModelHost, small_consult_body
from bench.inproc import request_scope

pytestmark = pytest.mark.anyio


class Client:
    """The server's side of one exchange. ``wakes``: a ``receive`` still waiting when the response
    is complete gets ``http.disconnect`` (uvicorn, hypercorn, granian, httpx's ASGITransport);
    otherwise it waits until it is cancelled."""

    def __init__(self, body: bytes, *, wakes: bool) -> None:
        self.body = body
        self.wakes = wakes
        self.body_sent = False
        self.complete = anyio.Event()
        self.messages: list[MutableMapping[str, Any]] = []
        self.returned: list[str] = []  # what each receive after the body ended with
        self.completed_at = 0.0

    async def receive(self) -> dict[str, Any]:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        try:
            if self.wakes:
                await self.complete.wait()
            else:
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.returned.append("cancelled")
            raise
        self.returned.append("disconnect")
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.completed_at = time.monotonic()
            self.complete.set()


@pytest.mark.parametrize("stream", [True, False])
async def test_the_watcher_ends_on_the_servers_disconnect(stream: bool) -> None:
    body = small_consult_body(stream)
    client = Client(body, wakes=True)
    with anyio.fail_after(5):
        await AdvisorMiddleware(ModelHost())(request_scope(body, stream=stream, beta=True), client.receive, client.send)
    returned_at = time.monotonic()
    assert client.complete.is_set()
    # The watcher's receive was answered, not cancelled, and the app returned at once.
    assert client.returned == ["disconnect"]
    assert returned_at - client.completed_at < middleware._LINGER / 2


@pytest.mark.parametrize("stream", [True, False])
async def test_a_silent_server_costs_the_linger_then_the_watcher_is_cancelled(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "_LINGER", 0.3)
    body = small_consult_body(stream)
    client = Client(body, wakes=False)
    # Pings due all the time: none may follow the last body while the watcher lingers.
    app = AdvisorMiddleware(ModelHost(), ping_interval=0.01)
    with anyio.fail_after(5):
        await app(request_scope(body, stream=stream, beta=True), client.receive, client.send)
    returned_at = time.monotonic()
    assert client.returned == ["cancelled"]
    assert 0.25 < returned_at - client.completed_at < 3.0
    last = client.messages[-1]
    assert last["type"] == "http.response.body" and not last.get("more_body", False)
    assert sum(1 for m in client.messages if not m.get("more_body", False) and m["type"] == "http.response.body") == 1


async def test_a_client_that_leaves_mid_consult_is_still_noticed_at_once() -> None:
    # The disconnect before the response is complete is the client leaving: the advisor leg in
    # flight (10 s) is cancelled, not waited for.
    host = ModelHost(advisor_delay=10.0)
    body = small_consult_body(True)
    client = Client(body, wakes=True)
    events = 0

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal events
        events += bytes(message.get("body", b"")).count(b"event: ")
        if events >= 3:  # the server_tool_use block is out: the client gives up waiting
            client.complete.set()

    with anyio.fail_after(2):
        await AdvisorMiddleware(host)(request_scope(body, stream=True, beta=True), client.receive, send)
    assert client.returned == ["disconnect"]
    assert host.calls == 2  # executor leg 1, then the advisor leg that was cancelled
