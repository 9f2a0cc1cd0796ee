"""Load and soak: ``python -m tests.support.soak [--total N] [--concurrency C]``, or ``tests/test_soak.py``.

Drives ``AdvisorMiddleware`` around a scripted model host, served by uvicorn (h11) on 127.0.0.1
in a process of its own, with ``total`` requests (default 20,000), ``concurrency`` at a time
(default 64): half streamed, half JSON, every one a consult (executor, advisor, executor), 10 %
with an injected fault (advisor or executor leg, first or later leg) and 5 % left by the client
mid-way (a disconnect). Every answer is checked against what its case must give (the stream
protocol with tests/support/helpers.py's checker, the Anthropic SDK's accumulator, the error shape, the
advisor error code), and the report gives: requests answered well-formed (must be 100 %),
outcomes by kind, p50/p99 latency and the latency added over one bare host round trip, the
server's RSS at start and end, and the legs still in flight in the host at the end (must be 0).

Bounded: it stops after ``total`` requests or ``--max-seconds`` (default 900), whichever first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.backend import serve_app, serve_in_subprocess
from bench.hosts import read_body

from .upstream import Reply, reply_events, sse, text, tool_use

ADVISOR_TOOL = {"type": "advisor_20260301", "name": "advisor", "model": "soak-advisor"}
ADVISOR_TIMEOUT = 0.5
SSE = [(b"content-type", b"text/event-stream")]
JSON = [(b"content-type", b"application/json")]

# What each injected fault does to the leg it hits, and what the client must then see:
# advisor faults -> this advisor_tool_result_error code; executor faults -> this status (JSON, or a
# stream that had not started) or an error event of this type (a stream that had started).
FAULTS: dict[str, tuple[str, int, str]] = {
    "429": ("too_many_requests", 429, "rate_limit_error"),
    "529": ("overloaded", 529, "overloaded_error"),
    "500": ("unavailable", 500, "api_error"),
    "error-event": ("overloaded", 529, "overloaded_error"),
    "no-message-delta": ("unavailable", 502, "api_error"),
    "malformed-sse": ("unavailable", 502, "api_error"),
    "slow": ("execution_time_exceeded", 0, ""),  # advisor only: longer than advisor_timeout
}
ERROR_TYPES = {"429": "rate_limit_error", "529": "overloaded_error", "500": "api_error"}


# --- the server ---------------------------------------------------------------------------------


def _events(blocks: list[dict[str, Any]], stop_reason: str) -> list[bytes]:
    return [sse(event) for event in reply_events(Reply(blocks, stop_reason), "soak")]


@dataclass
class FaultHost:
    """A model host with zero think time whose behaviour is chosen by the first user message,
    ``soak <case>`` (the advisor finds it in its transcript). Counts legs in flight."""

    started: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":  # the stats
            stats = {"in_flight": sum(self.started.values()) - sum(self.ended.values()), "rss_mb": rss_mb()}
            await send({"type": "http.response.start", "status": 200, "headers": JSON})
            await send({"type": "http.response.body", "body": json.dumps(stats).encode()})
            return
        role = dict(scope["headers"]).get(b"x-advisor-leg", b"direct").decode()
        self.started[role] += 1
        try:
            await self.answer(role, json.loads(await read_body(receive)), send)
        finally:
            self.ended[role] += 1

    async def answer(self, role: str, body: dict[str, Any], send: Any) -> None:
        if role == "advisor":
            transcript = "".join(block["text"] for block in body["messages"][0]["content"])
            case = transcript[transcript.index("soak ") + 5 :].split()[0]
            later = True
        else:
            case = body["messages"][0]["content"].split()[1]
            later = any(m["role"] == "user" and isinstance(m["content"], list) for m in body["messages"][1:])
        where, _, fault = case.partition(":")
        if where == "disconnect" and role == "executor" and not later:
            await asyncio.sleep(0.05)  # in flight when the client leaves
        hit = (role == "advisor" and where == "advisor") or (
            role == "executor" and where == ("exec-later" if later else "exec-first")
        )
        if role == "advisor":
            blocks, stop = [text("Advice: check the backups.")], "end_turn"
        elif later or role == "direct":
            blocks, stop = [text("Done.")], "end_turn"
        else:
            blocks = [text("Asking."), tool_use("advisor", id="toolu_s")]
            stop = "tool_use"
        events = _events(blocks, stop)
        if hit and fault in ERROR_TYPES:
            error = {"type": "error", "error": {"type": ERROR_TYPES[fault], "message": "injected"}}
            await send({"type": "http.response.start", "status": int(fault), "headers": JSON})
            await send({"type": "http.response.body", "body": json.dumps(error).encode()})
            return
        if hit and fault == "slow":
            await asyncio.sleep(ADVISOR_TIMEOUT * 2)
        elif hit and fault == "error-event":
            events = [*events[:3], sse({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})]
        elif hit and fault == "no-message-delta":
            events = events[:3]
        elif hit and fault == "malformed-sse":
            events = [*events[:2], b"event: content_block_delta\ndata: {not json\n\n"]
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def serve() -> None:
    from advisor_middleware import AdvisorMiddleware

    # The injected faults log warnings by the thousand; errors (our own failures) still show.
    logging.getLogger("advisor_middleware").setLevel(logging.ERROR)
    asyncio.run(serve_app(AdvisorMiddleware(FaultHost(), advisor_timeout=ADVISOR_TIMEOUT)))


# --- the client ---------------------------------------------------------------------------------


def cases(total: int, seed: int = 6) -> list[tuple[str, bool]]:
    """(case, streaming) for each request: 85 % clean, 10 % faults, 5 % disconnects."""
    rng = random.Random(seed)
    advisor = [f"advisor:{f}" for f in FAULTS]
    executor = [f"exec-{w}:{f}" for w in ("first", "later") for f in FAULTS if f != "slow"]
    out = []
    for n in range(total):
        roll = n % 20  # exact shares, in a shuffled order
        case = "ok" if roll < 17 else rng.choice(advisor + executor) if roll < 19 else "disconnect:"
        out.append((case, rng.random() < 0.5))
    rng.shuffle(out)
    return out


def expected(case: str, streaming: bool) -> str:
    """The outcome a case must have (the kind ``outcome()`` reports)."""
    where, _, fault = case.partition(":")
    if where == "advisor":
        return f"advisor_error:{FAULTS[fault][0]}"
    if where in ("exec-first", "exec-later"):
        _, status, error_type = FAULTS[fault]
        started = where == "exec-later" or fault in ("error-event", "no-message-delta", "malformed-sse")
        return f"stream_error:{error_type}" if streaming and started else f"status:{status}:{error_type}"
    return "ok"


def outcome(response: httpx.Response, streaming: bool) -> str:
    """What came back, checked for form: raises AssertionError if it is not well-formed."""
    from tests.support.helpers import check_stream

    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert response.headers["content-type"] == "application/json"
        return f"status:{response.status_code}:{body['error']['type']}"
    if streaming:
        events, message = check_stream(response.content)
        if message is None:
            return f"stream_error:{events[-1][1]['error']['type']}"
        content = message.model_dump(exclude_none=True)["content"]
    else:
        content = response.json()["content"]
    types = [b["type"] for b in content]
    assert types == ["text", "server_tool_use", "advisor_tool_result", "text"], types
    result = content[2]["content"]
    return "ok" if result["type"] == "advisor_result" else f"advisor_error:{result['error_code']}"


@dataclass
class Report:
    total: int
    concurrency: int
    answered: int = 0
    well_formed: int = 0
    disconnected: int = 0
    unfinished: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    """Clean consults under load."""
    quiet: list[float] = field(default_factory=list)
    """Clean consults one at a time, after the load."""
    direct: list[float] = field(default_factory=list)
    """Bare host round trips, one at a time, alternating with ``quiet``."""
    rss_start: float = 0.0
    rss_end: float = 0.0
    in_flight: int = -1
    wall: float = 0.0

    @property
    def well_formed_pct(self) -> float:
        return 100.0 * self.well_formed / max(self.answered, 1)

    def percentile(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    @property
    def rss_growth_pct(self) -> float:
        return 100 * (self.rss_end - self.rss_start) / self.rss_start if self.rss_start else float("nan")

    def lines(self) -> list[str]:
        p50, p99 = self.percentile(self.latencies, 0.5), self.percentile(self.latencies, 0.99)
        base = statistics.median(self.direct) if self.direct else float("nan")
        added = sorted(q - base for q in self.quiet)
        return [
            f"requests: {self.total} ({self.concurrency} concurrent) in {self.wall:.1f} s",
            f"answered well-formed: {self.well_formed}/{self.answered} ({self.well_formed_pct:.2f} %)",
            f"client disconnects: {self.disconnected}; not finished in time: {self.unfinished}",
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items())),
            f"clean consult under load: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
            f"added latency, one at a time ({len(added)} consults, each minus the median bare host round trip "
            f"of {base * 1000:.2f} ms): p50 {self.percentile(added, 0.5) * 1000:.2f} ms, "
            f"p99 {self.percentile(added, 0.99) * 1000:.2f} ms",
            f"server RSS: {self.rss_start:.1f} MB at start (after warm-up), {self.rss_end:.1f} MB at end "
            f"({self.rss_growth_pct:+.1f} %)",
            f"legs still in flight in the host at the end: {self.in_flight}",
            *(f"NOT WELL-FORMED: {b}" for b in self.bad[:10]),
        ]


async def one(client: httpx.AsyncClient, report: Report, case: str, streaming: bool) -> None:
    body = {
        "model": "soak-exec",
        "max_tokens": 1024,
        "stream": streaming,
        "messages": [{"role": "user", "content": f"soak {case} please"}],
        "tools": [ADVISOR_TOOL],
    }
    started = time.perf_counter()
    if case.startswith("disconnect"):
        # Leave while the first executor leg is in flight: close the connection mid-request.
        try:
            await asyncio.wait_for(client.post("/v1/messages", json=body), 0.02)
        except TimeoutError:
            report.disconnected += 1
            return
        report.bad.append(f"{case}: answered before the client left")
        return
    response = await client.post("/v1/messages", json=body)
    report.answered += 1
    want = expected(case, streaming)
    try:
        got = outcome(response, streaming)
    except (AssertionError, ValueError, KeyError) as exc:
        report.bad.append(f"{case} stream={streaming}: {type(exc).__name__} {exc!s:.200}")
        return
    report.kinds[got] += 1
    if got != want:
        report.bad.append(f"{case} stream={streaming}: {got}, expected {want}")
        return
    report.well_formed += 1
    if case == "ok":
        report.latencies.append(time.perf_counter() - started)


async def bare(client: httpx.AsyncClient, report: Report, streaming: bool) -> None:
    """One request straight to the host (the leg marker makes the middleware pass it through)."""
    message = {"role": "user", "content": "soak ok"}
    body = {"model": "soak-exec", "max_tokens": 1024, "stream": streaming, "messages": [message]}
    started = time.perf_counter()
    response = await client.post("/v1/messages", json=body, headers={"x-advisor-leg": "direct"})
    assert response.status_code == 200
    report.direct.append(time.perf_counter() - started)


async def drive(base_url: str, total: int, concurrency: int, max_seconds: float) -> Report:
    report = Report(total, concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:

        async def swarm(work: list[tuple[str, bool]], report: Report, deadline: float) -> None:
            queue = iter(work)

            async def worker() -> None:
                for case, streaming in queue:
                    if time.monotonic() > deadline:
                        report.unfinished += 1
                        continue
                    await one(client, report, case, streaming)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        # Warm-up (not counted): the allocator's and the caches' first growth is not a leak.
        await swarm(cases(min(total, 1000), seed=1), Report(0, 0), time.monotonic() + max_seconds)
        await asyncio.sleep(0.3)
        report.rss_start = (await client.get("/stats")).json()["rss_mb"]
        started = time.perf_counter()
        await swarm(cases(total), report, time.monotonic() + max_seconds)
        report.wall = time.perf_counter() - started
        await asyncio.sleep(0.3)  # let the server notice the last disconnects
        stats = (await client.get("/stats")).json()
        report.rss_end, report.in_flight = stats["rss_mb"], stats["in_flight"]
        # Added latency, one request at a time: a clean consult against one bare round trip.
        for n in range(max(20, min(200, total // 10))):
            streaming = n % 2 == 0
            await bare(client, report, streaming)
            quiet = Report(0, 0)
            began = time.perf_counter()
            await one(client, quiet, "ok", streaming)
            report.quiet.append(time.perf_counter() - began)
            report.bad += quiet.bad
    return report


def run(total: int = 20_000, concurrency: int = 64, max_seconds: float = 900.0) -> Report:
    """Start the server, drive it, stop it; the report."""
    with serve_in_subprocess("--serve", module="tests.support.soak") as (port, _):
        return asyncio.run(drive(f"http://127.0.0.1:{port}", total, concurrency, max_seconds))


def main(argv: list[str] | None = None) -> Report | None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.soak", description="Load and soak AdvisorMiddleware."
    )
    parser.add_argument("--total", type=int, default=20_000, help="requests to send (default 20000)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests at a time (default 64)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop sending after this long")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return None
    report = run(args.total, args.concurrency, args.max_seconds)
    print("\n".join(report.lines()))
    return report


if __name__ == "__main__":
    main()
