"""Micro-benchmarks of the concurrency primitives the middleware's costs come down to, side by
side in one run (``python -m bench.micro``). docs/performance.md cites them where a design
choice rests on a primitive's price: a task group and its cancel against a bare asyncio task and
against a child that ends on its own, a cancel scope against ``fail_after``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

__all__ = ["CASES", "main", "measure"]


async def _anyio_watcher() -> None:
    # The request's watcher: a task group whose one child waits (on receive), cancelled at the end.
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep_forever)
        await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()


async def _anyio_watcher_ends() -> None:
    # The watcher since step 14: the child's wait is answered (the server's http.disconnect once
    # the response is out) and the task group exits without a cancel.
    answered = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(answered.wait)
        await anyio.lowlevel.checkpoint()
        answered.set()


async def _asyncio_watcher() -> None:
    task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def _anyio_task() -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.lowlevel.checkpoint)


async def _asyncio_task() -> None:
    await asyncio.get_running_loop().create_task(asyncio.sleep(0))


async def _cancel_scope() -> None:
    with anyio.CancelScope(deadline=anyio.current_time() + 300):
        await anyio.lowlevel.checkpoint()


async def _fail_after() -> None:
    with anyio.fail_after(300):
        await anyio.lowlevel.checkpoint()


CASES: list[tuple[str, Callable[[], Awaitable[None]]]] = [
    ("anyio task group, a waiting child, cancel()", _anyio_watcher),
    ("anyio task group, a waiting child whose wait is answered", _anyio_watcher_ends),
    ("asyncio task, waiting, Task.cancel()", _asyncio_watcher),
    ("anyio task group, a child that finishes", _anyio_task),
    ("asyncio task that finishes", _asyncio_task),
    ("anyio.CancelScope(deadline=...) around a checkpoint", _cancel_scope),
    ("anyio.fail_after(...) around a checkpoint", _fail_after),
]


async def measure(n: int) -> list[tuple[str, float]]:
    """CPU µs per call of each case, after a warm-up of ``n // 10`` calls."""
    out = []
    for name, case in CASES:
        for _ in range(max(1, n // 10)):
            await case()
        start = time.process_time()
        for _ in range(n):
            await case()
        out.append((name, (time.process_time() - start) / n * 1e6))
    return out


def main(n: int = 20_000) -> list[tuple[str, float]]:
    rows = anyio.run(measure, n, backend="asyncio")
    for name, us in rows:
        print(f"| {name} | {us:.1f} µs |")
    return rows


if __name__ == "__main__":
    main()
