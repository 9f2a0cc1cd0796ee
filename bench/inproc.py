"""Side-by-side rows driven in-process: ``await app(scope, receive, send)``, no server.

Each row calls the same host twice, alone and behind ``AdvisorMiddleware``, alternating request by
request (the order flips every round, so drift hits both sides alike), and keeps the medians of
``time.process_time`` (this process's CPU) and ``time.perf_counter`` (wall).
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from advisor_middleware import AdvisorMiddleware

from .hosts import ASGIApp, EchoHost, Message, Receive, Scope, Send, read_body

CHUNK = 64 * 1024  # what uvicorn hands an app per http.request message for a large body
EXPECTED_BLOCKS = ["text", "server_tool_use", "advisor_tool_result", "text"]


class Recorder:
    """Wraps a host and keeps each request's scope and body (to replay the legs directly)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[tuple[Scope, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        self.requests.append((dict(scope), body))
        await self.app(scope, receiver([body]), send)


def receiver(chunks: Sequence[bytes], answered: anyio.Event | None = None) -> Receive:
    """A client's ``receive``: ``chunks`` as the body, then no disconnect while the answer goes.
    With ``answered``, a receive waiting once it is set gets ``http.disconnect``, as uvicorn's
    and httpx's ASGITransport do when the response is complete."""
    position = 0
    last = len(chunks) - 1

    async def receive() -> Message:
        nonlocal position
        if position <= last:
            i = position
            position += 1
            return {"type": "http.request", "body": chunks[i], "more_body": i < last}
        if answered is None:
            await anyio.sleep_forever()  # a live client: no disconnect while the response is going
        else:
            await answered.wait()
        return {"type": "http.disconnect"}

    return receive


async def exchange(app: ASGIApp, scope: Scope, chunks: Sequence[bytes]) -> tuple[int, bytes]:
    """One request: ``app`` gets a fresh copy of ``scope`` and ``chunks`` as the body; returns the
    status and the body the client received. The client's side behaves like uvicorn's: a
    ``receive`` still waiting when the response is complete gets ``http.disconnect``."""
    sent: list[Message] = []
    answered = anyio.Event()

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    await app(dict(scope), receiver(chunks, answered), send)
    status = next(int(m["status"]) for m in sent if m["type"] == "http.response.start")
    return status, b"".join(bytes(m.get("body", b"")) for m in sent if m["type"] == "http.response.body")


def request_scope(body: bytes, *, stream: bool, beta: bool, path: str = "/v1/messages") -> Scope:
    """The scope uvicorn gives an app for Claude Code's ``POST /v1/messages``."""
    headers = {
        "host": "127.0.0.1:8000",
        "user-agent": "claude-cli/2.1.0 (external, cli)",
        "accept": "text/event-stream" if stream else "application/json",
        "content-type": "application/json",
        "content-length": str(len(body)),
        "x-api-key": "sk-bench-0123456789",
        "anthropic-version": "2023-06-01",
    }
    if beta:
        headers["anthropic-beta"] = "claude-code-20250219,advisor-tool-2026-03-01"
    scope: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1"}
    scope |= {"method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b""}
    scope |= {"root_path": "", "client": ("127.0.0.1", 50123), "server": ("127.0.0.1", 8000), "state": {}}
    return scope | {"headers": [(k.encode(), v.encode()) for k, v in headers.items()]}


def split(body: bytes) -> list[bytes]:
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]


def check_consult(status: int, raw: bytes, stream: bool) -> None:
    if status != 200:
        raise RuntimeError(f"consult answered {status}: {raw[:300]!r}")
    if stream:
        events = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
        blocks = [e["content_block"] for e in events if e["type"] == "content_block_start"]
        if events[-1]["type"] != "message_stop":
            raise RuntimeError(f"stream did not end with message_stop: {events[-1]}")
    else:
        blocks = json.loads(raw)["content"]
    if [b["type"] for b in blocks] != EXPECTED_BLOCKS or blocks[2]["content"]["type"] != "advisor_result":
        raise RuntimeError(f"unexpected consult content: {blocks}")


Reference = tuple[str, Callable[[], object]] | None
"""What a row is compared with: its label and the operation (one parse or one scan of the body)."""
Request = tuple[Scope, list[bytes]]


@dataclass
class Scenario:
    """One row: the host answering ``alone`` (one request after the other) against the middleware
    answering ``through``, the client's request."""

    key: str
    label: str
    n: int
    host: ASGIApp
    alone: list[Request]
    through: Request
    reference: Reference = None

    def __post_init__(self) -> None:
        self.middleware = AdvisorMiddleware(self.host)

    async def run_alone(self) -> None:
        for scope, chunks in self.alone:
            await exchange(self.host, scope, chunks)

    async def run_through(self) -> None:
        await exchange(self.middleware, *self.through)


@dataclass
class Row:
    key: str
    label: str
    n: int
    base_cpu_us: float
    base_wall_us: float
    through_cpu_us: float
    through_wall_us: float
    reference: str = ""
    reference_us: float | None = None
    """CPU µs of the reference: its fastest run in the stretch the row reports."""

    @property
    def added_cpu_us(self) -> float:
        return self.through_cpu_us - self.base_cpu_us

    @property
    def added_wall_us(self) -> float:
        return self.through_wall_us - self.base_wall_us


async def record_legs(host: ASGIApp, body: bytes, *, stream: bool) -> list[tuple[Scope, bytes]]:
    """Run one consult through the middleware (checking what the client gets); return the three
    leg requests it made of ``host``."""
    recorder = Recorder(host)
    scope = request_scope(body, stream=stream, beta=True)
    check_consult(*await exchange(AdvisorMiddleware(recorder), scope, split(body)), stream)
    roles = [dict(s["headers"]).get(b"x-advisor-leg") for s, _ in recorder.requests]
    if roles != [b"executor", b"advisor", b"executor"]:
        raise RuntimeError(f"expected executor, advisor, executor legs; got {roles}")
    return recorder.requests


async def consult_scenario(
    key: str, label: str, host: ASGIApp, body: bytes, n: int, stream: bool = True, reference: Reference = None
) -> Scenario:
    """Through the middleware: one client request, three legs. Alone: the host answers the leg
    requests the middleware sent (recorded in a first, untimed run), one after the other."""
    legs = [(scope, [leg_body]) for scope, leg_body in await record_legs(host, body, stream=stream)]
    for leg in legs:
        if (status := (await exchange(host, *leg))[0]) != 200:
            raise RuntimeError(f"host alone answered a leg with {status}")
    request = request_scope(body, stream=stream, beta=True), split(body)
    return Scenario(key, label, n, host, legs, request, reference)


async def passthrough_scenario(key: str, label: str, body: bytes, n: int, reference: Reference) -> Scenario:
    """A request without the advisor to ``EchoHost``, alone and through the middleware: both must
    answer 200 and the same bytes, and the host must get the body unchanged."""
    host, request = EchoHost(), (request_scope(body, stream=False, beta=False), split(body))
    scenario = Scenario(key, label, n, host, [request], request, reference)
    answers = {await exchange(app, *request) for app in (host, scenario.middleware)}
    if len(answers) != 1 or answers.pop()[0] != 200 or host.last_body != body:
        raise RuntimeError("pass-through changed or failed the request")
    return scenario


STRETCHES = 5
"""A row's requests are taken in this many consecutive stretches; the row reports the quietest."""


async def measure(scenario: Scenario, warmup: int) -> Row:
    """Warm up, then alternate host-alone and through-middleware requests (and the reference, if
    any, once per pair). The machine's load moves within a run, so the requests come in
    ``STRETCHES`` consecutive stretches and the row gives the medians of the one where the host
    alone was fastest: both sides from the same stretch."""
    for _ in range(warmup):
        await scenario.run_alone()
        await scenario.run_through()
    gc.collect()
    stretches = STRETCHES if scenario.n >= 5 * STRETCHES else 1
    # CPU and wall ns of each side, and CPU ns of the reference
    samples: list[list[int]] = [[], [], [], [], []]
    sides = [(0, scenario.run_alone), (2, scenario.run_through)]
    for i in range(scenario.n):
        for at, call in sides if i % 2 == 0 else sides[::-1]:
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            await call()
            w1, c1 = time.perf_counter_ns(), time.process_time_ns()
            samples[at].append(c1 - c0)
            samples[at + 1].append(w1 - w0)
        if scenario.reference is not None:
            c0 = time.process_time_ns()
            scenario.reference[1]()
            samples[4].append(time.process_time_ns() - c0)

    def part(values: list[int], index: int) -> list[int]:
        size = len(values) // stretches
        return values[index * size : (index + 1) * size]

    quietest = min(range(stretches), key=lambda i: statistics.median(part(samples[0], i)))
    cpu, wall, through_cpu, through_wall = (statistics.median(part(v, quietest)) / 1000 for v in samples[:4])
    # The fastest, not the median: a reference slowed down by the machine would flatter us.
    fastest = min(part(samples[4], quietest)) / 1000 if samples[4] else None
    label = scenario.reference[0] if scenario.reference else ""
    return Row(scenario.key, scenario.label, scenario.n, cpu, wall, through_cpu, through_wall, label, fastest)
