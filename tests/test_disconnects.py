"""The client going away at every point of a consult: every leg in flight ends at once (its host
told as a server tells it, or cancelled), no further leg starts, and nothing (task or memory) is
left behind.

The in-process cells call the ASGI app with a ``receive`` that delivers ``http.disconnect`` at a
chosen point (exact, and fast enough for a loop of 1,000); the socket cells do the same over
uvicorn. Disconnects during the first executor leg, the advisor leg and before a JSON answer over
uvicorn and hypercorn are in test_server.py; during the body upload in test_validation.py
(``test_client_gone_while_sending_the_body``); through an ``HTTPRouter`` in test_http_router.py.
Figures are printed (``pytest -s``) and written into docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from advisor_middleware import AdvisorMiddleware

from .support.helpers import ADVISOR_PARAMS, http_scope, wait_until
from .support.servers import uvicorn_server
from .support.upstream import HOSTS, Reply, Script, scripted_host, text, tool_use

pytestmark = pytest.mark.anyio

CANCEL_WITHIN = 30.0
"""A generous deadline for the leg in flight to end after the disconnect. A leg that is not stopped
runs for HANG seconds, far past it; the measured figure (well under a second) is printed."""
HANG = 600.0
REQUEST = ADVISOR_PARAMS


def asking() -> Reply:
    return Reply([text("Asking."), tool_use("advisor", id="toolu_D")], stop_reason="tool_use")


def hanging(*blocks: dict[str, Any]) -> Reply:
    """A leg that sends its first block's start and delta, then goes quiet for HANG seconds."""
    return Reply(list(blocks) or [text("Thinking...")], hang_after=3, hang=HANG)


# phase -> (script it, when has the client gone?, the role whose leg is in flight then)
Phase = tuple[Callable[[Script], object], Callable[[Script, "Client"], bool], str | None]
PHASES: dict[str, Phase] = {
    "before-the-body": (lambda s: None, lambda s, c: True, None),
    "first-executor-leg": (
        lambda s: s.executor(hanging()),
        lambda s, c: len(s.of("executor")) == 1 and c.events >= 3,
        "executor",
    ),
    "advisor-leg": (
        lambda s: s.executor(asking()).advisor(Reply([text("late")], delay=HANG)),
        lambda s, c: len(s.of("advisor")) == 1,
        "advisor",
    ),
    "later-executor-leg": (
        lambda s: s.executor(asking(), hanging()).advisor(Reply([text("Advice.")])),
        lambda s, c: len(s.of("executor")) == 2 and c.events >= 9,
        "executor",
    ),
    # The client stops reading: send() is stuck once 4 events went out, the executor still streaming.
    "while-writing": (
        lambda s: s.executor(Reply([text(f"part {i}") for i in range(200)])),
        lambda s, c: c.stuck,
        "executor",
    ),
}


class Watch:
    """ASGI middleware around the host: when each leg's request ended there, and how."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.ended: list[tuple[str, str, float]] = []
        """(role, "returned", "cancelled" or "raised <exception>", time.monotonic())"""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        role = dict(scope.get("headers") or []).get(b"x-advisor-leg", b"direct").decode()
        outcome = "cancelled"
        try:
            await self.app(scope, receive, send)
            outcome = "returned"
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            outcome = f"raised {type(exc).__name__}"
            raise
        finally:
            self.ended.append((role, outcome, time.monotonic()))

    def last(self, role: str) -> tuple[str, float] | None:
        """How and when the last leg of ``role`` ended there: "returned" (for a leg cut short:
        the host saw the disconnect and ended its response), "raised ..." (it let the gone
        client's error out) or "cancelled"."""
        return next(((outcome, at) for r, outcome, at in reversed(self.ended) if r == role), None)


class Client:
    """One ASGI client: sends the body (unless it leaves first), reads the response, and leaves
    (``http.disconnect``) once ``gone()`` is true."""

    def __init__(self, body: bytes, gone: Callable[[Client], bool], *, stuck_at: int | None = None) -> None:
        self.body = body
        self.gone = gone
        self.stuck_at = stuck_at
        self.stuck: bool = False
        self.events: int = 0
        """Events received so far (one send may carry several)."""
        self.left_at: float = 0.0
        self.reads: int = 0

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        if self.reads == 1 and not self.gone(self):
            return {"type": "http.request", "body": self.body, "more_body": False}
        while not self.gone(self):  # noqa: ASYNC110 (the condition is the test's, polled)
            await anyio.sleep(0.001)
        self.left_at = self.left_at or time.monotonic()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.events += bytes(message.get("body", b"")).count(b"event: ")
            if self.stuck_at is not None and self.events >= self.stuck_at:
                self.stuck = True
                await anyio.sleep_forever()


async def disconnect(phase: str, script: Script, app: Any, watch: Watch) -> tuple[float, str] | None:
    """Run one request that the client leaves at ``phase``; return the seconds from its leaving to
    the host's request for the leg in flight ending, and how it ended (None when no leg was in
    flight)."""
    prepare, gone, role = PHASES[phase]
    prepare(script)
    body = json.dumps({**REQUEST, "stream": True}).encode()
    client = Client(body, lambda c: gone(script, c), stuck_at=4 if phase == "while-writing" else None)
    scope = http_scope([(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))])
    with anyio.fail_after(CANCEL_WITHIN):  # a request that hangs on the leg would take HANG
        await app(scope, client.receive, client.send)
    if role is None:
        assert script.requests == []
        return None
    ended = [(r, outcome) for r, outcome, _ in watch.ended]
    legs = [r.role for r in script.requests]
    assert [r for r, _ in ended] == legs, ended
    assert ended[:-1] == [(r, "returned") for r in legs[:-1]], ended
    assert script.finished == legs[:-1], "every leg but the last ran to its end"
    if phase != "while-writing":
        # Every stream generator of the host that began has ended: the one in flight was waiting
        # inside (a hang or a delay) and saw its end, or, told of the disconnect before its
        # stream began, the host never started it. While writing, Starlette is blocked in
        # send() and leaves its generator to the GC; so it does when the OSError from send
        # (the client is gone) reaches it first (Starlette does not close the generator it was
        # iterating), whatever the server.
        polls = 0

        def streams_ended() -> bool:
            nonlocal polls
            polls += 1
            if polls % 10 == 0:
                gc.collect()  # every 50 ms: a collection costs more than the rest of a cell
            return script.cancelled.count(role) + script.finished.count(role) >= script.streamed.count(role)

        await wait_until(streams_ended, CANCEL_WITHIN, f"{role} stream ended")
    last = watch.last(role)
    assert last is not None
    outcome, at = last
    return at - client.left_at, outcome


@pytest.mark.parametrize("host", list(HOSTS))
@pytest.mark.parametrize("phase", list(PHASES))
async def test_the_leg_in_flight_ends(script: Script, phase: str, host: str) -> None:
    before = set(asyncio.all_tasks())
    watch = Watch(HOSTS[host](script))
    result = await disconnect(phase, script, AdvisorMiddleware(watch), watch)
    if result is not None:
        latency, outcome = result
        print(f"FIGURE disconnect {phase} ({host}): leg {outcome} {latency * 1000:.1f} ms after the disconnect")
        assert latency < CANCEL_WITHIN
    expected = {
        "before-the-body": [],
        "first-executor-leg": ["executor"],
        "advisor-leg": ["executor", "advisor"],
        "later-executor-leg": ["executor", "advisor", "executor"],
        "while-writing": ["executor"],
    }[phase]
    assert [r.role for r in script.requests] == expected, "no leg starts after the client left"
    await wait_until(lambda: set(asyncio.all_tasks()) <= before, CANCEL_WITHIN, "a task outlived the request")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def test_a_thousand_disconnects_leave_nothing_behind() -> None:
    phases = [p for p in PHASES if p != "before-the-body"] * 250
    script = Script()
    watch = Watch(scripted_host(script))
    app = AdvisorMiddleware(watch)
    latencies: list[float] = []

    async def one(phase: str) -> None:
        script.requests.clear()
        script.cancelled.clear()
        script.finished.clear()
        script.streamed.clear()
        watch.ended.clear()
        result = await disconnect(phase, script, app, watch)
        latencies.append(result[0] if result else 0.0)

    for phase in phases[:40]:  # warm-up: first-use allocations are not leaks
        await one(phase)
    gc.collect()
    tasks = len(asyncio.all_tasks())
    rss = rss_mb()
    started = time.monotonic()
    latencies.clear()
    for phase in phases:
        await one(phase)
    elapsed = time.monotonic() - started
    gc.collect()
    # The generators the GC found close in tasks of their own.
    await wait_until(lambda: len(asyncio.all_tasks()) == tasks, CANCEL_WITHIN, "tasks left behind")
    growth = rss_mb() - rss
    latencies.sort()
    print(
        f"FIGURE 1000 disconnects: {elapsed:.2f} s, leg ended after p50 {latencies[500] * 1000:.2f} ms, "
        f"max {latencies[-1] * 1000:.2f} ms; tasks {tasks} -> {len(asyncio.all_tasks())}, "
        f"RSS {rss:.1f} -> {rss + growth:.1f} MB ({growth:+.2f} MB)"
    )
    assert latencies[-1] < CANCEL_WITHIN
    assert len(asyncio.all_tasks()) == tasks, "tasks left behind"
    assert growth < 20, f"RSS grew {growth:.1f} MB over 1000 disconnects"


# --- over a socket --------------------------------------------------------------------------------


SOCKET_PHASES: dict[str, tuple[Callable[[Script], object], str]] = {
    # The executor's second leg has streamed a word and goes quiet.
    "later-executor-leg": (
        lambda s: s.executor(asking(), hanging(text("Second leg."))).advisor(Reply([text("Advice.")])),
        '"Second leg."',
    ),
    # The executor streams 2,000 blocks (an event a millisecond, ~6 s); the client leaves in the middle.
    "while-writing": (lambda s: s.executor(Reply([text(f"part {i}") for i in range(2000)], gap=0.001)), '"part 50"'),
}


@pytest.mark.parametrize("phase", list(SOCKET_PHASES))
async def test_over_a_socket(script: Script, phase: str) -> None:
    prepare, marker = SOCKET_PHASES[phase]
    prepare(script)
    watch = Watch(scripted_host(script))
    async with uvicorn_server(AdvisorMiddleware(watch)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
            async with http.stream("POST", "/v1/messages", json={**REQUEST, "stream": True}) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if marker in line:
                        break
                else:
                    pytest.fail(f"the stream ended before {marker}")
            closed = time.monotonic()
        legs = ["executor", "advisor", "executor"] if phase == "later-executor-leg" else ["executor"]
        await wait_until(lambda: len(watch.ended) == len(legs), CANCEL_WITHIN, "the executor leg ended")
        outcome, at = watch.ended[-1][1:]
        latency = at - closed
        print(f"FIGURE disconnect over uvicorn, {phase}: leg {outcome} {latency * 1000:.1f} ms after the close")
    assert latency < CANCEL_WITHIN
    assert [role for role, _, _ in watch.ended] == legs
    assert [outcome for _, outcome, _ in watch.ended[:-1]] == ["returned"] * (len(legs) - 1)
    assert script.finished == legs[:-1]
