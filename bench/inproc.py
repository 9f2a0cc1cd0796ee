"""The bench's one measuring loop (``alternate``), and the rows driven in-process:
``await app(scope, receive, send)``, the same host alone and behind ``AdvisorMiddleware``."""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import anyio

from advisor_middleware import AdvisorMiddleware
from tests.support.helpers import ONE_CONSULT, block_types, check_stream, http_scope, replaying

from .hosts import ASGIApp, EchoHost, read_body

CHUNK = 64 * 1024  # what uvicorn hands an app per http.request message for a large body
STRETCHES = 5  # a row's requests come in this many stretches; it reports the quietest


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


Sample = tuple[float, float, Any]
Call = Callable[[], Awaitable[Any]]


async def alternate(calls: Sequence[Call], n: int, warmup: int, block: int = 1) -> list[list[Sample]]:
    """Per call, ``n`` times after ``warmup``: CPU and wall µs (per call, over ``block`` calls) and what
    it returned. The calls take turns, in an order that flips (a b c, c b a), so drift hits them alike."""
    for _ in range(warmup):
        for call in calls:
            await call()
    gc.collect()
    samples: list[list[Sample]] = [[] for _ in calls]
    for i in range(n):
        for k in range(len(calls)) if i % 2 == 0 else reversed(range(len(calls))):
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            for _ in range(block):
                result = await calls[k]()
            w1, c1 = time.perf_counter_ns(), time.process_time_ns()
            samples[k].append(((c1 - c0) / block / 1000, (w1 - w0) / block / 1000, result))
    return samples


def medians(samples: Sequence[Sample]) -> tuple[float, float]:
    """The median CPU and wall µs of ``alternate``'s samples of one call."""
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def receiver(chunks: Sequence[bytes], answered: anyio.Event | None = None) -> Callable[[], Awaitable[Any]]:
    """A client's ``receive``: ``chunks`` as the body, then nothing while the answer goes; once
    ``answered`` is set (if given), ``http.disconnect``, as uvicorn's does after the response."""
    queue = deque({"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks))

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.popleft()
        await (anyio.sleep_forever() if answered is None else answered.wait())
        return {"type": "http.disconnect"}

    return receive


async def exchange(app: ASGIApp, scope: dict[str, Any], chunks: Sequence[bytes]) -> tuple[int, bytes]:
    """One request to ``app`` (a copy of ``scope``, ``chunks`` as the body): status and body."""
    sent: list[dict[str, Any]] = []
    answered = anyio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    await app(dict(scope), receiver(chunks, answered), send)
    status = next(int(m["status"]) for m in sent if m["type"] == "http.response.start")
    return status, b"".join(bytes(m.get("body", b"")) for m in sent if m["type"] == "http.response.body")


def request_scope(body: bytes, *, stream: bool, beta: bool) -> dict[str, Any]:
    """The scope uvicorn gives an app for Claude Code's ``POST /v1/messages``."""
    headers = {"host": "127.0.0.1:8000", "user-agent": "claude-cli/2.1.0 (external, cli)"}
    headers |= {"accept": "text/event-stream" if stream else "application/json", "content-type": "application/json"}
    headers |= {"content-length": str(len(body)), "x-api-key": "sk-bench-0123456789", "anthropic-version": "2023-06-01"}
    if beta:
        headers["anthropic-beta"] = "claude-code-20250219,advisor-tool-2026-03-01"
    return http_scope([(k.encode(), v.encode()) for k, v in headers.items()], server=("127.0.0.1", 8000))


def split(body: bytes) -> list[bytes]:
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]


Request = tuple[dict[str, Any], list[bytes]]
Reference = tuple[str, Callable[[], object]] | None
"""What a row is compared with: a label and an operation (one parse or one scan of the body)."""


class Scenario(NamedTuple):
    """One row: ``host`` answering the requests ``alone`` against ``middleware`` answering ``through``."""

    key: str
    label: str
    n: int
    host: ASGIApp
    alone: list[Request]
    middleware: ASGIApp
    through: Request
    reference: Reference


async def _run(app: ASGIApp, requests: list[Request]) -> None:
    for request in requests:
        await exchange(app, *request)


class Row(NamedTuple):
    """A row's medians in µs, and its reference's fastest CPU µs (``None`` without one)."""

    key: str
    label: str
    n: int
    alone_cpu: float
    alone_wall: float
    through_cpu: float
    through_wall: float
    reference: str
    reference_us: float | None


class Recorder:
    """Wraps a host and keeps each request's scope and body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.requests = app, list[tuple[dict[str, Any], bytes]]()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = await read_body(receive)
        self.requests.append((dict(scope), body))
        await self.app(scope, replaying(body, receive), send)


async def record_legs(host: ASGIApp, body: bytes, *, stream: bool) -> list[tuple[dict[str, Any], bytes]]:
    """The leg requests the middleware makes of ``host`` for a consult (checked by the SDK's accumulator)."""
    recorder = Recorder(host)
    scope = request_scope(body, stream=stream, beta=True)
    status, raw = await exchange(AdvisorMiddleware(recorder), scope, split(body))
    assert status == 200, raw[:300]
    message = check_stream(raw)[1] if stream else None
    assert block_types(message.content if message else json.loads(raw)["content"]) == ONE_CONSULT, raw[:300]
    roles = [dict(scope["headers"]).get(b"x-advisor-leg") for scope, _ in recorder.requests]
    assert roles == [b"executor", b"advisor", b"executor"], roles
    return recorder.requests


async def consult_scenario(
    key: str, label: str, host: ASGIApp, body: bytes, n: int, stream: bool = True, reference: Reference = None
) -> Scenario:
    """The client's consult through the middleware against the host answering the legs it sent."""
    legs = [(scope, [leg_body]) for scope, leg_body in await record_legs(host, body, stream=stream)]
    assert [(await exchange(host, *leg))[0] for leg in legs] == [200] * 3, "the host alone failed a leg"
    request = request_scope(body, stream=stream, beta=True), split(body)
    return Scenario(key, label, n, host, legs, AdvisorMiddleware(host), request, reference)


async def passthrough_scenario(key: str, label: str, body: bytes, n: int, reference: Reference) -> Scenario:
    """A request without the advisor to ``EchoHost``, alone and through the middleware (unchanged)."""
    host, request = EchoHost(), (request_scope(body, stream=False, beta=False), split(body))
    middleware = AdvisorMiddleware(host)
    answers = {await exchange(app, *request) for app in (host, middleware)}
    assert len(answers) == 1 and answers.pop()[0] == 200 and host.last_body == body, "pass-through changed the request"
    return Scenario(key, label, n, host, [request], middleware, request, reference)


async def measure(scenario: Scenario, warmup: int) -> Row:
    """Host alone, through the middleware and the reference in turns. The machine's load moves, so
    the row gives medians from the stretch where the host alone was fastest, and the reference's
    fastest run (one slowed down by the machine would flatter us)."""
    s = scenario
    progress(f"  {s.label} (N={s.n}) ...")

    async def reference() -> None:
        if s.reference:
            s.reference[1]()

    calls: list[Call] = [partial(_run, s.host, s.alone), partial(_run, s.middleware, [s.through]), reference]
    samples = await alternate(calls, s.n, warmup)
    count = STRETCHES if s.n >= 5 * STRETCHES else 1
    size = s.n // count
    stretches = [[side[i * size : (i + 1) * size] for side in samples] for i in range(count)]
    alone, through, references = min(stretches, key=lambda part: statistics.median(c for c, _, _ in part[0]))
    label, fastest = (s.reference[0], min(c for c, _, _ in references)) if s.reference else ("", None)
    return Row(s.key, s.label, s.n, *medians(alone), *medians(through), label, fastest)
