"""Rows over sockets (uvicorn in a subprocess, a minimal HTTP/1.1 client here), the start-up probes,
and LiteLLM's loop (``python -m bench.net URL N WARMUP`` prints its figures as JSON)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from importlib import metadata
from importlib.util import find_spec
from typing import Any

import anyio
import httpx

from .backend import serve_model
from .hosts import ADVISOR_MODEL, ADVISOR_TOOL, EXEC_MODEL, ROOT, ModelHost, small_consult_body
from .inproc import Call, alternate, medians, record_legs

LEG_HEADERS = {"content-type": "application/json", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
CONSULT_HEADERS = LEG_HEADERS | {"anthropic-beta": "advisor-tool-2026-03-01"}


def litellm_installed() -> bool:
    return find_spec("litellm") is not None


async def _leg_bodies() -> list[bytes]:
    """The three leg bodies the middleware sends for the short streaming consult."""
    return [body for _, body in await record_legs(ModelHost(), small_consult_body(True), stream=True)]


async def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[float, bytes]:
    """``POST /v1/messages`` on a new connection, answered with a whole stream: the µs to its first
    byte and the raw response. Hand-written: ``httpx``'s pool costs more CPU than the server."""
    head = f"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    t0, first, chunks = time.perf_counter(), 0.0, []
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send((head + "connection: close\r\n\r\n").encode() + body)
        while True:
            try:
                chunks.append(await stream.receive(1 << 16))
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
            first = first or (time.perf_counter() - t0) * 1e6
    raw = b"".join(chunks)
    if not raw.startswith(b"HTTP/1.1 200 ") or b'{"type":"message_stop"}' not in raw[-100:]:
        raise RuntimeError(f"answered {raw[:200]!r}")
    return first, raw


async def _client(port: int, bodies: list[bytes], headers: dict[str, str]) -> tuple[float, int]:
    """``bodies`` posted in turn: the µs to the first answer's first byte, and the events received."""
    answers = [await post(port, body, headers) for body in bodies]
    return answers[0][0], sum(raw.count(b"\n\n") for _, raw in answers)


Client = Callable[[], Awaitable[tuple[float, int]]]


@contextmanager
def side_by_side(legs: list[bytes], **options: Any) -> Iterator[list[tuple[Client, int]]]:
    """``ModelHost(**options)`` alone and behind the middleware, each served by uvicorn in its own
    process: per side, one client's requests (``legs``, or the short streaming consult) and the pid."""
    with serve_model(**options) as alone, serve_model(middleware=True, **options) as through:
        requests = [(alone, legs, LEG_HEADERS), (through, [small_consult_body(True)], CONSULT_HEADERS)]
        yield [(partial(_client, port, bodies, headers), pid) for (port, pid), bodies, headers in requests]


async def measure_relay(ttfb_n: int, events: int, rounds: int) -> dict[str, float]:
    """Time to first byte: a streamed consult's against its first leg's. Events/s: a consult whose
    final leg streams ``events`` deltas against its three legs, the host paced."""
    legs = await _leg_bodies()
    with side_by_side(legs[:1]) as sides:
        ttfb = await alternate([call for call, _ in sides], ttfb_n, 10)
    with side_by_side(legs, final_deltas=events, paced=True) as sides:
        rates = await alternate([call for call, _ in sides], rounds, 1)
    out = {}
    for side, firsts, streams in zip(("alone", "through"), ttfb, rates, strict=True):
        out[f"{side}_ttfb_us"] = statistics.median(first for _, _, (first, _) in firsts)
        out[f"{side}_events_s"] = statistics.median(count * 1e6 / wall for _, wall, (_, count) in streams)
    return out


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), float("nan"))


async def swarm(pid: int, clients: int, one: Callable[[], Awaitable[object]]) -> dict[str, float]:
    """``clients`` calls of ``one`` at once: their latencies, and server ``pid``'s RSS before and at peak."""
    latencies: list[float] = []
    rss = [_rss_mb(pid)]

    async def client() -> None:
        t0 = time.perf_counter()
        with suppress(OSError, RuntimeError):
            await one()
            latencies.append(time.perf_counter() - t0)

    async def sample() -> None:
        while True:
            rss.append(_rss_mb(pid))
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as sampler:
        sampler.start_soon(sample)
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client)
        sampler.cancel_scope.cancel()
    ordered = sorted(latencies) or [float("nan")]
    p50, p99 = (ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 for p in (0.5, 0.99))
    figures = {"completed": len(latencies), "failed": clients - len(latencies), "p50_ms": p50, "p99_ms": p99}
    return figures | {"idle_mb": rss[0], "peak_mb": max(rss)}


async def measure_concurrency(clients: int, advisor_delay: float) -> list[dict[str, float]]:
    """``clients`` streaming consults at once, the advisor taking ``advisor_delay`` s, through the
    middleware; and as many clients each sending the three legs to the host alone."""
    with side_by_side(await _leg_bodies(), advisor_delay=advisor_delay) as sides:
        for call, _ in sides:
            await call()
        return [await swarm(pid, clients, call) for call, pid in sides]


def measure_litellm(base_url: str, n: int, warmup: int) -> dict[str, Any]:
    """LiteLLM's loop on the backend at ``base_url``, in its own process, which keeps LiteLLM's
    import, threads and globals away from our rows: its figures, or ``{"error": why not}``."""
    if not litellm_installed():
        return {"error": "not installed"}
    command = [sys.executable, "-m", "bench.net", base_url, str(n), str(warmup)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        return {"error": f"failed: {out.stderr.strip().splitlines()[-1:]}"}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "n": n}


LITELLM_BLOCK = 10
"""Requests per timed sample of LiteLLM's: it finishes each call in background tasks after it
returns, so timing calls one by one would bill that work to the next sample (often ``raw3``)."""
USER = [{"role": "user", "content": "Write a Go worker pool with graceful shutdown."}]
_QUESTION = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}
_FUNCTION = {"type": "function", "function": {"name": "advisor", "description": "Ask.", "parameters": _QUESTION}}


async def _raw3(client: httpx.AsyncClient, base: str) -> None:
    chat, request = f"{base}/v1/chat/completions", {"model": EXEC_MODEL, "max_tokens": 1024, "tools": [_FUNCTION]}
    first = await client.post(chat, json=request | {"messages": USER})
    call = first.json()["choices"][0]["message"]["tool_calls"][0]
    question = json.loads(call["function"]["arguments"])["question"]
    advice = await client.post(
        f"{base}/v1/messages",
        headers={"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"},
        json={"model": ADVISOR_MODEL, "max_tokens": 1024, "messages": [*USER, {"role": "user", "content": question}]},
    )
    answer = {"role": "tool", "tool_call_id": call["id"], "content": advice.json()["content"][0]["text"]}
    messages = [*USER, {"role": "assistant", "tool_calls": [call]}, answer]
    (await client.post(chat, json=request | {"messages": messages})).raise_for_status()


async def _litellm(base: str, n: int, warmup: int) -> dict[str, Any]:
    os.environ.update(LITELLM_LOCAL_MODEL_COST_MAP="True", ANTHROPIC_API_BASE=base, ANTHROPIC_API_KEY="sk-ant-bench")
    import litellm  # type: ignore[import-not-found, unused-ignore]

    kwargs: dict[str, Any] = {"model": f"hosted_vllm/{EXEC_MODEL}", "max_tokens": 1024, "messages": USER}
    kwargs |= {"api_base": f"{base}/v1", "api_key": "sk-bench", "tools": [ADVISOR_TOOL]}

    async def orchestrated() -> None:
        response = await litellm.anthropic_messages(**kwargs)
        if "Done" not in response["content"][0]["text"]:
            raise RuntimeError(f"unexpected LiteLLM answer: {response}")

    async def orchestrated_stream() -> None:
        async for _ in await litellm.anthropic_messages(stream=True, **kwargs):
            pass

    async with httpx.AsyncClient() as client:
        t0 = time.perf_counter()
        await orchestrated()
        first_ms = (time.perf_counter() - t0) * 1000
        calls: list[Call] = [partial(_raw3, client, base), orchestrated, orchestrated_stream]
        samples = await alternate(calls, max(1, n // LITELLM_BLOCK), warmup, LITELLM_BLOCK)
    figures: dict[str, Any] = {"version": metadata.version("litellm"), "first_ms": first_ms}
    for name, side in zip(("raw3", "json", "stream"), samples, strict=True):
        figures[name] = dict(zip(("cpu_us", "wall_us"), medians(side), strict=True))
    return figures


_IMPORT_PROBE = """
import sys, time
rss = lambda: next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
[__import__(name) for name in filter(None, sys.argv[2].split(","))]  # what the host process has loaded already
before, t = rss(), time.perf_counter()
__import__(sys.argv[1])
print(time.perf_counter() - t, rss() - before)
"""


def measure_startup(module: str, runs: int, preload: tuple[str, ...] = ()) -> tuple[float, float]:
    """``import MODULE`` in fresh interpreters that first import ``preload``: median ms and MB of
    RSS added, with bytecode cached as a deployed package runs (a first, untimed run writes it)."""
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [sys.executable, "-c", _IMPORT_PROBE, module, ",".join(preload)]
    results = []
    for attempt in range(runs + 1):
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=env).stdout
        if attempt:  # the first run wrote the bytecode
            results.append([float(x) for x in out.split()])
    return statistics.median(r[0] for r in results) * 1000, statistics.median(r[1] for r in results)


def measure_imports(runs: int) -> dict[str, tuple[float, float] | None]:
    """Ours bare and after FastAPI's import (what a gateway pays), and LiteLLM's (if installed)."""
    bare, fastapi = (measure_startup("advisor_middleware", runs, preload) for preload in ((), ("fastapi",)))
    litellm = measure_startup("litellm", min(runs, 3)) if litellm_installed() else None
    return {"bare": bare, "fastapi": fastapi, "litellm": litellm}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_litellm(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
