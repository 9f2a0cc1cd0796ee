"""Rows over real sockets: the server (uvicorn, h11, one process) in a subprocess, the client
(a minimal HTTP/1.1 client) here, both on 127.0.0.1. Also the start-up probes, LiteLLM's included."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from importlib.util import find_spec
from typing import Any

import anyio

from .backend import ROOT, serve_in_subprocess
from .hosts import FINAL_DELTAS_HEADER, PACED_HEADER, ModelHost, small_consult_body
from .inproc import record_legs

_LEG_HEADERS = {"content-type": "application/json", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
_CONSULT_HEADERS = _LEG_HEADERS | {"anthropic-beta": "advisor-tool-2026-03-01"}


def litellm_installed() -> bool:
    return find_spec("litellm") is not None


async def _leg_bodies() -> list[bytes]:
    """The three leg bodies the middleware sends for the short streaming consult."""
    legs = await record_legs(ModelHost(), small_consult_body(True), stream=True)
    return [body for _, body in legs]


async def _post(port: int, body: bytes, headers: dict[str, str]) -> tuple[float, bytes]:
    """``POST /v1/messages`` on a new connection (``connection: close``) and read the whole answer;
    returns (seconds to the first response byte, the raw response). A hand-written HTTP/1.1
    client: ``httpx``'s connection pool costs more CPU than the server at a thousand connections."""
    head = f"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + "connection: close\r\n\r\n").encode() + body
    t0 = time.perf_counter()
    first = 0.0
    chunks = []
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        while True:
            try:
                chunk = await stream.receive(1 << 16)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
            if not first:
                first = time.perf_counter() - t0
            chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"answered {raw[:200]!r}")
    return first, raw


@dataclass
class Relay:
    ttfb_n: int
    events: int
    rounds: int
    alone_ttfb_us: float = 0.0
    through_ttfb_us: float = 0.0
    alone_events_s: float = 0.0
    through_events_s: float = 0.0


async def measure_relay(ttfb_n: int, events: int, rounds: int) -> Relay:
    """Two uvicorn servers of the same ``ModelHost``, one behind the middleware. Time to first
    byte: a streamed consult's vs its first leg's sent directly. Events/s: a consult whose last leg
    streams ``events`` text deltas vs the same three legs sent directly, the host yielding to the
    event loop after each event, as a host reading each event off the network does."""
    legs, consult = await _leg_bodies(), small_consult_body(True)
    paced = {FINAL_DELTAS_HEADER.decode(): str(events), PACED_HEADER.decode(): "1"}
    relay = Relay(ttfb_n, events, rounds)
    with serve_in_subprocess() as (alone, _), serve_in_subprocess("--middleware") as (through, _):
        alone_first, through_first = partial(_first, alone, legs[0], _LEG_HEADERS), partial(_first, through, consult)
        relay.alone_ttfb_us, relay.through_ttfb_us = await _alternate(alone_first, through_first, ttfb_n, 10)
        alone_rate = partial(_rate, alone, legs, _LEG_HEADERS | paced)
        through_rate = partial(_rate, through, [consult], _CONSULT_HEADERS | paced)
        relay.alone_events_s, relay.through_events_s = await _alternate(alone_rate, through_rate, rounds, 1)
    return relay


async def _first(port: int, body: bytes, headers: dict[str, str] = _CONSULT_HEADERS) -> float:
    """µs to the first byte of the answer."""
    return (await _post(port, body, headers))[0] * 1e6


async def _rate(port: int, bodies: list[bytes], headers: dict[str, str]) -> float:
    """Events per second over ``bodies`` posted one after the other."""
    t0, count = time.perf_counter(), 0
    for body in bodies:
        count += (await _post(port, body, headers))[1].count(b"\n\n")
    return count / (time.perf_counter() - t0)


async def _alternate(
    a: Callable[[], Awaitable[float]], b: Callable[[], Awaitable[float]], n: int, warmup: int
) -> tuple[float, float]:
    """The medians of ``n`` calls each of ``a`` and ``b``, taking turns (a b b a a b ...)."""
    for _ in range(warmup):
        await a()
        await b()
    out: tuple[list[float], list[float]] = ([], [])
    for i in range(n):
        for side, call in ((0, a), (1, b)) if i % 2 == 0 else ((1, b), (0, a)):
            out[side].append(await call())
    return statistics.median(out[0]), statistics.median(out[1])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), float("nan"))


class Swarm:
    """Many concurrent clients of the server ``pid``: their latencies, and the server's resident
    memory before they start and at its peak (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.latencies: list[float] = []
        self.failed = 0
        self.idle_rss_mb = self.peak_rss_mb = _rss_mb(pid)
        self.done = anyio.Event()

    async def run(self, clients: int, one: Callable[[], Awaitable[None]]) -> Swarm:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sample)
            async with anyio.create_task_group() as clients_tg:
                for _ in range(clients):
                    clients_tg.start_soon(self._client, one)
            self.done.set()
        return self

    async def _sample(self) -> None:
        while not self.done.is_set():
            self.peak_rss_mb = max(self.peak_rss_mb, _rss_mb(self.pid))
            await anyio.sleep(0.01)

    async def _client(self, one: Callable[[], Awaitable[None]]) -> None:
        t0 = time.perf_counter()
        try:
            await one()
        except (OSError, RuntimeError):
            self.failed += 1
            return
        self.latencies.append(time.perf_counter() - t0)

    def percentile_s(self, fraction: float) -> float:
        ordered = sorted(self.latencies) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure_concurrency(clients: int, advisor_delay: float) -> tuple[Swarm, Swarm]:
    """``clients`` streaming consults at once against uvicorn + middleware, the advisor taking
    ``advisor_delay`` s; side by side with the same number of clients each sending the three
    legs directly to the host alone (the advisor leg waits just as long)."""
    legs = await _leg_bodies()
    consult = small_consult_body(True)
    delay = str(advisor_delay)
    with (
        serve_in_subprocess("--advisor-delay", delay) as (alone, alone_pid),
        serve_in_subprocess("--middleware", "--advisor-delay", delay) as (through, through_pid),
    ):

        async def alone_one() -> None:
            for body in legs:
                await _post(alone, body, _LEG_HEADERS)

        async def through_one() -> None:
            raw = (await _post(through, consult, _CONSULT_HEADERS))[1]
            if b'{"type":"message_stop"}' not in raw[-100:]:
                raise RuntimeError("incomplete stream")

        await alone_one()
        await through_one()
        return await Swarm(alone_pid).run(clients, alone_one), await Swarm(through_pid).run(clients, through_one)


def measure_litellm(base_url: str, n: int, warmup: int) -> dict[str, Any]:
    """LiteLLM's loop on the backend at ``base_url``, in a process of its own (``bench.litellm_probe``):
    its figures, or ``{"error": why not}``."""
    if not litellm_installed():
        return {"error": "not installed"}
    command = [sys.executable, "-m", "bench.litellm_probe", base_url, str(n), str(warmup)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    try:
        data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"failed: {out.stderr.strip().splitlines()[-1:]}"}
    return data | {"n": n}


@dataclass
class Startup:
    import_ms: float
    rss_added_mb: float
    runs: int


_IMPORT_PROBE = """
import sys, time
def rss():
    return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
for name in filter(None, sys.argv[2].split(",")):  # what the host process has loaded already
    __import__(name)
before, t = rss(), time.perf_counter()
__import__(sys.argv[1])
print(time.perf_counter() - t, rss() - before)
"""


def measure_startup(module: str, runs: int, preload: tuple[str, ...] = ()) -> Startup:
    """``import MODULE`` in fresh interpreters that first import ``preload`` (a host's own
    modules, untimed): time and resident memory added.

    Timed with bytecode cached, as a deployed package runs: an installed wheel carries its
    ``.pyc`` files, and an editable checkout writes them on its first import. Under
    ``PYTHONDONTWRITEBYTECODE`` every timed import would compile the sources again, so the
    variable is dropped and a first, untimed run writes the cache."""
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [sys.executable, "-c", _IMPORT_PROBE, module, ",".join(preload)]
    results = []
    for attempt in range(runs + 1):
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=env).stdout
        if attempt:  # the first run wrote the bytecode
            results.append([float(x) for x in out.strip().splitlines()[-1].split()])
    return Startup(statistics.median(r[0] for r in results) * 1000, statistics.median(r[1] for r in results), runs)
