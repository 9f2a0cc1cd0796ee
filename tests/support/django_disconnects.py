"""Run by ``tests/test_django.py`` in a subprocess (Django's settings are process-wide): clients
of the example Django gateway leave in the middle of a streamed consult, in-process; prints what
was left behind as JSON. ``receive``: the client's leaving shows in ``receive`` (uvicorn, ASGI
2.3); ``send``: its ``send`` raises ``OSError`` (ASGI 2.4).

Django's ``ASGIHandler`` serves each request from two asyncio tasks of its own and, when its
caller is cancelled, leaves them running: whatever they do after the leg is over must reach
neither the client nor the event loop's task list for good."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import MutableMapping
from typing import Any

os.environ.setdefault("DEMO_DELAY", "0.01")

import anyio

from examples.django_gateway.asgi import application
from tests.support.helpers import http_scope

BODY = json.dumps(
    {
        "model": "demo-executor",
        "max_tokens": 1024,
        "stream": True,
        "messages": [{"role": "user", "content": "Plan a birthday party"}],
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "demo-advisor"}],
    }
).encode()
SCOPE = http_scope(
    [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
    asgi={"version": "3.0", "spec_version": "2.4"},
)


async def one(leave_after: int, how: str) -> tuple[int, int]:
    """One request, the client gone after ``leave_after`` events; (events before, sends after)."""
    events = 0
    returned = False
    late = 0
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": BODY, "more_body": False}
        while events < leave_after or how == "send":  # noqa: ASYNC110 (the condition is the client's, polled)
            await anyio.sleep(0.001)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal events, late
        if returned:
            late += 1
        if how == "send" and events >= leave_after:
            raise OSError("the client is gone")
        if message["type"] == "http.response.body":
            events += bytes(message.get("body", b"")).count(b"event: ")

    await application(dict(SCOPE), receive, send)
    returned = True
    # Nothing may reach the client now: wait longer than the leg would have needed to finish.
    await anyio.sleep(0.3)
    return events, late


async def main(rounds: int, how: str) -> None:
    unhandled: list[str] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: unhandled.append(context["message"]))
    await one(10**6, how)  # warm-up: a whole consult, nobody leaves
    await anyio.sleep(0.1)
    before = len(asyncio.all_tasks())
    late = 0
    for i in range(rounds):
        # The first executor leg, the consult, the final leg: each point a few times.
        _, after = await one((2, 6, 12)[i % 3], how)
        late += after
    # Django's tasks wind down on their own: give them a generous deadline to be gone.
    with anyio.move_on_after(30):
        while len(asyncio.all_tasks()) > before:  # noqa: ASYNC110 (polled: no event says so)
            await anyio.sleep(0.01)
    figures = {"rounds": rounds, "tasks_before": before, "tasks_after": len(asyncio.all_tasks()), "late": late}
    print(json.dumps({**figures, "unhandled": unhandled}))


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]), sys.argv[2])
