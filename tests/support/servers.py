"""Real HTTP servers on 127.0.0.1 for streaming and disconnect tests (docs/protocol.md §8).

``httpx.ASGITransport`` buffers the whole response and never delivers a mid-stream disconnect,
so timing and cancellation can only be tested over a socket. Both helpers run the server in the
test's own event loop, on a listening socket bound here to port 0 (the port is known before the
server starts, and nothing races for it), and yield the base URL. On exit the server shuts down
gracefully and its task is awaited: no task outlives the ``async with``.

``serving`` runs the ``advisor-middleware serve`` command itself, as a subprocess, and
``server_process`` any other server command, ``example_server`` an app (the examples) under
uvicorn, hypercorn or granian; ``threaded`` runs an
in-process server in a thread of its own, for tests that block while a subprocess calls it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

__all__ = [
    "SERVERS",
    "SERVER_COMMANDS",
    "example_server",
    "free_port",
    "hypercorn_server",
    "server_process",
    "serving",
    "threaded",
    "uvicorn_server",
]

_STARTUP_TIMEOUT = 10.0
_GRACE = 2.0
"""Seconds a server waits for open responses at shutdown before cancelling them: a failing test
may leave a slow leg behind, and that must not hang the suite."""


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Without it Linux adds ~40 ms of delayed ACK to small writes (accepted sockets inherit it).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def free_port() -> int:
    """A port nothing listens on right now, for servers started in a subprocess."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn (h11) in this event loop; yield ``http://127.0.0.1:PORT``."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="auto",
        ws="none",
        log_config=None,  # leave the test process's logging alone
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(_GRACE),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(_STARTUP_TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()  # raises why it stopped
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await task
        finally:
            sock.close()


@asynccontextmanager
async def hypercorn_server(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn (``hypercorn.asyncio.serve``) in this event loop; yield its URL.

    The socket is already listening, so the URL works at once: connections wait in the backlog
    until hypercorn (after its lifespan startup) accepts them.
    """
    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = HypercornConfig()
    # hypercorn closes the socket it serves on: give it its own descriptor of the same socket.
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.graceful_timeout = _GRACE
    config.loglevel = "WARNING"
    config.accesslog = None
    stop = asyncio.Event()
    task = asyncio.create_task(hypercorn_serve(app, config, shutdown_trigger=stop.wait))
    try:
        await asyncio.sleep(0)  # let it start; a failure shows up in the finally below
        if task.done():
            task.result()
            raise RuntimeError("hypercorn exited before it started")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        try:
            await task
        finally:
            sock.close()


SERVERS: dict[str, Callable[[Any], AbstractAsyncContextManager[str]]] = {
    "uvicorn": uvicorn_server,
    "hypercorn": hypercorn_server,
}


@contextmanager
def threaded(server: Callable[[Any], AbstractAsyncContextManager[str]], app: Any) -> Iterator[str]:
    """Run ``server(app)`` (e.g. :func:`uvicorn_server`) in its own thread and event loop, for
    tests whose own thread blocks (a subprocess under test calling back into this server)."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["stop"], state["loop"] = stop, asyncio.get_running_loop()
        async with server(app) as url:
            state["url"] = url
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            state["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="test-server", daemon=True)
    thread.start()
    ready.wait(_STARTUP_TIMEOUT)
    try:
        if "url" not in state:
            raise RuntimeError("the threaded server did not start") from state.get("error")
        yield state["url"]
    finally:
        if "stop" in state:
            state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(_STARTUP_TIMEOUT)
        if "error" in state:
            raise state["error"]


@contextmanager
def server_process(
    argv: list[str], url: str, *, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (a server listening at ``url``; output to ``log``) as a subprocess; yield the
    process once ``url`` answers HTTP, and stop it with SIGINT (Ctrl+C) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        # LiteLLM's proxy took more than 20 s to answer on a loaded machine (twice in local runs):
        # a loose bound, since a process that dies is caught at once by poll() below.
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/", timeout=1.0)
                break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{argv[:3]} did not come up (exit {proc.returncode}):\n{log.read_text()}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def serving(*args: str, log: Path, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``python -m advisor_middleware serve --port N ARGS`` (output to ``log``) as a subprocess;
    yield its URL and process once it answers HTTP, and stop it with SIGINT (Ctrl+C) on exit."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "advisor_middleware", "serve", "--port", str(port), *args]
    with server_process(argv, url, log=log) as proc:
        yield url, proc


ROOT = Path(__file__).resolve().parents[2]
SERVER_COMMANDS = {
    "uvicorn": [sys.executable, "-m", "uvicorn", "{app}", "--host", "127.0.0.1", "--port", "{port}"],
    "hypercorn": [sys.executable, "-m", "hypercorn", "{app}", "--bind", "127.0.0.1:{port}"],
    "granian": [
        str(Path(sys.executable).with_name("granian")),
        *("--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}", "{app}"),
    ],
}


@contextmanager
def example_server(server: str, app: str, *, log: Path) -> Iterator[str]:
    """Serve ``app`` (``module:attribute``, imported from the repository root, e.g. an example) with
    ``server`` (a key of ``SERVER_COMMANDS``) in a subprocess, the demo model unpaced; yield its URL.
    The server's log must show no traceback."""
    argv = SERVER_COMMANDS[server]
    assert Path(argv[0]).exists(), f"{argv[0]} missing: pip install -e '.[test]'"
    port = free_port()
    argv = [arg.format(app=app, port=port) for arg in argv]
    env = {**os.environ, "DEMO_DELAY": "0"}
    with server_process(argv, f"http://127.0.0.1:{port}", log=log, cwd=ROOT, env=env):
        yield f"http://127.0.0.1:{port}"
    text = log.read_text()
    assert "Traceback" not in text, text
