"""A bench server in its own process: ``python -m bench.backend [--middleware] [options]``.

Serves ``ModelHost`` (optionally behind ``AdvisorMiddleware``) with uvicorn on 127.0.0.1, on a
port it picks, and prints that port once it accepts connections. A separate process keeps the
server's CPU out of the client's measurements, and the client's out of the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from .hosts import ModelHost

ROOT = Path(__file__).resolve().parent.parent


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Without it Linux adds ~40 ms of delayed ACK to small writes (accepted sockets inherit it).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve_app(app: Any) -> None:
    sock = _listening_socket()
    config = uvicorn.Config(app, lifespan="off", ws="none", log_config=None, log_level="error", access_log=False)
    config.backlog = 4096
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 (uvicorn.Server has no event to wait on)
        await asyncio.sleep(0.01)
    print(sock.getsockname()[1], flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backend")
    parser.add_argument("--middleware", action="store_true", help="serve AdvisorMiddleware(ModelHost)")
    parser.add_argument("--advisor-delay", type=float, default=0.0, help="seconds the advisor thinks")
    args = parser.parse_args()
    app: Any = ModelHost(advisor_delay=args.advisor_delay)
    if args.middleware:
        from advisor_middleware import AdvisorMiddleware

        app = AdvisorMiddleware(app)
    asyncio.run(serve_app(app))


@contextmanager
def serve_in_subprocess(*args: str, module: str = "bench.backend") -> Iterator[tuple[int, int]]:
    """Start ``python -m MODULE ARGS``; yield its port and pid; stop it on exit."""
    process = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"bench backend failed to start (exit {process.poll()})")
        yield int(line), process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    main()
