"""A server in a process of its own, which keeps its CPU out of the client's figures: ``python -m
bench.backend '[MIDDLEWARE, OPTIONS]'`` serves ``ModelHost(**OPTIONS)`` with uvicorn, prints its port."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import uvicorn

from .hosts import ROOT, ModelHost


async def serve_app(app: Any) -> None:
    """Serve ``app`` with uvicorn on 127.0.0.1, on a port it picks, and print that port."""
    options: dict[str, Any] = {"lifespan": "off", "ws": "none", "log_config": None, "log_level": "error"}
    server = uvicorn.Server(uvicorn.Config(app, port=0, backlog=4096, access_log=False, **options))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn.Server has no event to wait on)
        await asyncio.sleep(0.01)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)
    await task


@contextmanager
def serve_in_subprocess(*args: str, module: str = "bench.backend") -> Iterator[tuple[int, int]]:
    """Run ``python -m MODULE ARGS``, a server that prints its port; yield that port and its pid."""
    command = [sys.executable, "-m", module, *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT) as process:
        try:
            assert process.stdout is not None
            yield int(process.stdout.readline()), process.pid
        finally:
            process.terminate()


def serve_model(*, middleware: bool = False, **options: Any) -> AbstractContextManager[tuple[int, int]]:
    """``ModelHost(**options)``, behind the middleware if asked, served in a process of its own."""
    return serve_in_subprocess(json.dumps([middleware, options]))


if __name__ == "__main__":
    from advisor_middleware import AdvisorMiddleware

    middleware, options = json.loads(sys.argv[1])
    asyncio.run(serve_app(AdvisorMiddleware(ModelHost(**options)) if middleware else ModelHost(**options)))
