"""LiteLLM's advisor loop against the bench's scripted HTTP backend, in its own process.

``python -m bench.litellm_probe URL N WARMUP`` prints one JSON object: median CPU and wall per
request of (a) ``raw3``, the three leg requests LiteLLM's loop makes (OpenAI chat completion for
the executor, Anthropic Messages for the advisor, chat completion again), sent directly with
``httpx``, and (b) ``litellm.anthropic_messages`` with the advisor tool, non-streaming and
streaming (consumed to the end), alternating with (a) request by request. ``{"error": ...}``
if LiteLLM is not installed. Its own process keeps LiteLLM's import (logging, threads, globals)
away from the rows that measure our middleware.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .hosts import ADVISOR_MODEL, ADVISOR_TOOL, EXEC_MODEL

BLOCK = 10
"""Requests per timed block (see the measuring loop)."""

USER = [{"role": "user", "content": "Write a Go worker pool with graceful shutdown."}]
_FUNCTION = {
    "type": "function",
    "function": {
        "name": "advisor",
        "description": "Consult the advisor.",
        "parameters": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]},
    },
}


async def _raw3(client: httpx.AsyncClient, base: str) -> None:
    chat = f"{base}/v1/chat/completions"
    first = await client.post(
        chat, json={"model": EXEC_MODEL, "messages": USER, "max_tokens": 1024, "tools": [_FUNCTION]}
    )
    call = first.json()["choices"][0]["message"]["tool_calls"][0]
    question = json.loads(call["function"]["arguments"])["question"]
    advice = await client.post(
        f"{base}/v1/messages",
        headers={"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"},
        json={"model": ADVISOR_MODEL, "max_tokens": 1024, "messages": [*USER, {"role": "user", "content": question}]},
    )
    messages = [
        *USER,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": advice.json()["content"][0]["text"]},
    ]
    final = await client.post(
        chat, json={"model": EXEC_MODEL, "max_tokens": 1024, "tools": [_FUNCTION], "messages": messages}
    )
    final.raise_for_status()


async def _main(base: str, n: int, warmup: int) -> dict[str, Any]:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["ANTHROPIC_API_BASE"] = base
    os.environ["ANTHROPIC_API_KEY"] = "sk-ant-bench"
    try:
        import litellm  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        return {"error": f"not installed ({exc})"}
    from importlib import metadata

    kwargs: dict[str, Any] = {
        "model": f"hosted_vllm/{EXEC_MODEL}",
        "max_tokens": 1024,
        "api_base": f"{base}/v1",
        "api_key": "sk-bench",
        "messages": USER,
        "tools": [ADVISOR_TOOL],
    }

    async def orchestrated() -> None:
        response = await litellm.anthropic_messages(**kwargs)
        if "Done" not in response["content"][0]["text"]:
            raise RuntimeError(f"unexpected LiteLLM answer: {response}")

    async def orchestrated_stream() -> None:
        response = await litellm.anthropic_messages(stream=True, **kwargs)
        async for _ in response:
            pass

    async with httpx.AsyncClient() as client:

        async def raw3() -> None:
            await _raw3(client, base)

        t0 = time.perf_counter()
        await orchestrated()
        first_ms = (time.perf_counter() - t0) * 1000
        samples: dict[str, tuple[list[int], list[int]]] = {}
        sides: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("raw3", raw3),
            ("json", orchestrated),
            ("stream", orchestrated_stream),
        ]
        for _ in range(warmup):
            for _, call in sides:
                await call()
        # Blocks of BLOCK requests per side, the sides alternating block by block: LiteLLM
        # finishes each call in background tasks and threads (logging, cost tracking) after it
        # returns, and per-request alternation would bill that work to the next sample (often
        # raw3, which is subtracted): measured that way LiteLLM looked ~40 % cheaper.
        rounds = max(1, n // BLOCK)
        for i in range(rounds):
            for name, call in sides if i % 2 == 0 else sides[::-1]:
                cpu, wall = samples.setdefault(name, ([], []))
                c0, w0 = time.process_time_ns(), time.perf_counter_ns()
                for _ in range(BLOCK):
                    await call()
                w1, c1 = time.perf_counter_ns(), time.process_time_ns()
                cpu.append((c1 - c0) // BLOCK)
                wall.append((w1 - w0) // BLOCK)
    out: dict[str, Any] = {"version": metadata.version("litellm"), "first_ms": first_ms}
    for name, (cpu, wall) in samples.items():
        out[name] = {"cpu_us": statistics.median(cpu) / 1000, "wall_us": statistics.median(wall) / 1000}
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
