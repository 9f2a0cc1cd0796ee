"""LiteLLM's advisor loop against the bench's scripted HTTP backend, in its own process (which keeps
LiteLLM's import, threads and globals away from the rows that measure our middleware).

``python -m bench.litellm_probe URL N WARMUP`` prints one JSON object: median CPU and wall µs per
request of ``raw3``, the three leg requests LiteLLM's loop makes (chat completion for the executor,
Messages for the advisor, chat completion again) posted directly with ``httpx``, and of
``litellm.anthropic_messages`` with the advisor tool, JSON and streamed; or ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import httpx

from .hosts import ADVISOR_MODEL, ADVISOR_TOOL, EXEC_MODEL

BLOCK = 10
"""Requests per timed block (see ``measure_blocks``)."""

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


async def measure_blocks(sides: dict[str, Callable[[], Awaitable[None]]], n: int, warmup: int) -> dict[str, Any]:
    """Median CPU and wall µs per request of each side, in blocks of ``BLOCK`` requests, the sides
    alternating block by block: LiteLLM finishes each call in background tasks and threads
    (logging, cost tracking) after it returns, and per-request alternation would bill that work to
    the next sample (often ``raw3``, which is subtracted), making LiteLLM look cheaper than it is."""
    for _ in range(warmup):
        for call in sides.values():
            await call()
    samples: dict[str, tuple[list[int], list[int]]] = {name: ([], []) for name in sides}
    order = list(sides.items())
    for i in range(max(1, n // BLOCK)):
        for name, call in order if i % 2 == 0 else order[::-1]:
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            for _ in range(BLOCK):
                await call()
            w1, c1 = time.perf_counter_ns(), time.process_time_ns()
            samples[name][0].append((c1 - c0) // BLOCK)
            samples[name][1].append((w1 - w0) // BLOCK)
    return {
        name: {"cpu_us": statistics.median(cpu) / 1000, "wall_us": statistics.median(wall) / 1000}
        for name, (cpu, wall) in samples.items()
    }


async def _main(base: str, n: int, warmup: int) -> dict[str, Any]:
    os.environ.update(LITELLM_LOCAL_MODEL_COST_MAP="True", ANTHROPIC_API_BASE=base, ANTHROPIC_API_KEY="sk-ant-bench")
    try:
        import litellm  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        return {"error": f"not installed ({exc})"}
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

        async def raw3() -> None:
            await _raw3(client, base)

        t0 = time.perf_counter()
        await orchestrated()
        first_ms = (time.perf_counter() - t0) * 1000
        figures = await measure_blocks({"raw3": raw3, "json": orchestrated, "stream": orchestrated_stream}, n, warmup)
    return figures | {"version": metadata.version("litellm"), "first_ms": first_ms}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
