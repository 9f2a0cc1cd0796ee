"""The request's watcher, the one reader of the client's ``receive``. Once the response is out
it ends on the server's own ``http.disconnect`` instead of being
cancelled, and a server that never sends one costs a short linger, never a hang or a ping after
the last body. Before that, a disconnect is the client leaving: an ``AppRouter`` leg in flight is
told the way a server tells its app, and cancelled only if its host carries on."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest

from advisor_middleware import AdvisorMiddleware, middleware
from advisor_middleware.routers import app as app_router
from advisor_middleware.routers.app import WIND_DOWN
from bench.hosts import ModelHost, small_consult_body
from bench.inproc import request_scope

from .support.upstream import Reply, reply_events, sse, text

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
async def test_the_watcher_ends_on_the_servers_disconnect(stream: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # A linger far longer than the deadline: only the server's disconnect can end the watcher in time.
    monkeypatch.setattr(middleware, "LINGER", 600.0)
    body = small_consult_body(stream)
    client = Client(body, wakes=True)
    with anyio.fail_after(30):
        await AdvisorMiddleware(ModelHost())(request_scope(body, stream=stream, beta=True), client.receive, client.send)
    assert client.complete.is_set()
    # The watcher's receive was answered, not cancelled.
    assert client.returned == ["disconnect"]


@pytest.mark.parametrize("stream", [True, False])
async def test_a_silent_server_costs_the_linger_then_the_watcher_is_cancelled(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(middleware, "LINGER", 0.3)
    body = small_consult_body(stream)
    client = Client(body, wakes=False)
    # Pings due all the time: none may follow the last body while the watcher lingers.
    app = AdvisorMiddleware(ModelHost(), ping_interval=0.01)
    # The silent receive never returns: only the linger's end can finish the app within the deadline.
    with anyio.fail_after(30):
        await app(request_scope(body, stream=stream, beta=True), client.receive, client.send)
    returned_at = time.monotonic()
    assert client.returned == ["cancelled"]
    # Not cancelled before the linger is over (a lower bound: a slow machine only makes it longer).
    assert returned_at - client.completed_at > 0.25
    last = client.messages[-1]
    assert last["type"] == "http.response.body" and not last.get("more_body", False)
    assert sum(1 for m in client.messages if not m.get("more_body", False) and m["type"] == "http.response.body") == 1


async def test_a_client_that_leaves_mid_consult_is_still_noticed_at_once() -> None:
    # The disconnect before the response is complete is the client leaving: the advisor leg in
    # flight (600 s, far past the deadline) is cancelled, not waited for.
    host = ModelHost(advisor_delay=600.0)
    body = small_consult_body(True)
    client = Client(body, wakes=True)
    events = 0

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal events
        events += bytes(message.get("body", b"")).count(b"event: ")
        if events >= 3:  # the server_tool_use block is out: the client gives up waiting
            client.complete.set()

    with anyio.fail_after(30):
        await AdvisorMiddleware(host)(request_scope(body, stream=True, beta=True), client.receive, send)
    assert client.returned == ["disconnect"]
    assert host.calls == 2  # executor leg 1, then the advisor leg that was cancelled


class Listening:
    """A raw ASGI host whose executor leg starts streaming, then waits on ``receive`` the way a
    server's app waits for its client to leave; its advisor leg (if any) is never reached."""

    def __init__(self, *, listens: bool) -> None:
        self.listens = listens
        self.got: list[str] = []
        self.ended: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        start = reply_events(Reply([text("Thinking...")]), "m")[0]
        await send({"type": "http.response.body", "body": sse(start), "more_body": True})
        try:
            if self.listens:
                self.got.append((await receive())["type"])
            else:
                await anyio.sleep_forever()
        except BaseException:
            self.ended.append("cancelled")
            raise
        self.ended.append("returned")


@pytest.mark.parametrize("listens", [True, False], ids=["host-listens", "host-ignores"])
async def test_a_client_leaving_mid_leg_is_told_to_the_host_then_it_is_cancelled(
    listens: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a server does when its client leaves: the host's receive reports http.disconnect and
    # it ends the leg itself; a host that does not listen is cancelled after the wind-down.
    if listens:  # a wind-down far past the deadline: only the host's own return ends it in time
        monkeypatch.setattr(middleware, "WIND_DOWN", 600.0)
        monkeypatch.setattr(app_router, "WIND_DOWN", 600.0)
    host = Listening(listens=listens)
    body = small_consult_body(True)
    client = Client(body, wakes=True)

    async def send(message: MutableMapping[str, Any]) -> None:
        if b"message_start" in bytes(message.get("body", b"")):
            client.complete.set()  # the first event is out: the client leaves

    started = time.monotonic()
    # A host that ignores the client sleeps for ever: only the wind-down's end cancels it in time.
    with anyio.fail_after(30):
        await AdvisorMiddleware(host)(request_scope(body, stream=True, beta=True), client.receive, send)
    took = time.monotonic() - started
    if listens:
        assert host.got == ["http.disconnect"] and host.ended == ["returned"]
    else:
        assert host.got == [] and host.ended == ["cancelled"]
        # Not cancelled before the wind-down is over (a lower bound: load only makes it longer).
        assert took > WIND_DOWN * 0.9
