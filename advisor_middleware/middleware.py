"""``AdvisorMiddleware``: the ASGI side (match, read, classify, respond)."""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections.abc import Sequence
from typing import Any, Unpack

import anyio
import pydantic_core
from anyio.abc import TaskGroup

from ._types import ASGIApp, Message, Receive, Scope, Send
from .accumulate import MessageAccumulator
from .classify import Plan, classify
from .config import AdvisorConfig, AdvisorOptions
from .endpoints import ENDPOINTS, endpoint_routes
from .errors import AdvisorRequestError, ClientGone, UpstreamError, error_body, send_json
from .orchestrator import Orchestration
from .routers.app import CLIENT, WIND_DOWN, AppRouter, Departure
from .routers.base import LEG_HEADER, MessagesRouter, forwarded_headers
from .sse import RawDelta, encode_event, encode_json
from .telemetry import start_opentelemetry

__all__ = ["LINGER", "AdvisorMiddleware"]

log = logging.getLogger("advisor_middleware")

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
LINGER = 0.1
"""Seconds the watcher waits, once the response is out, for the server's ``http.disconnect``."""


class AdvisorMiddleware:
    """Gives the wrapped app's ``/v1/messages`` route Anthropic's ``advisor_20260301`` tool.

    Requests that carry the advisor tool are answered by running the executor and advisor legs
    through ``router`` (default: :class:`AppRouter` around the wrapped app, so the host's own auth,
    budgets and logging apply to every leg). Every other request reaches the app untouched.
    ``count_tokens`` and ``batches`` under each path are handled too (:mod:`.endpoints`).

    Usage::

        app.add_middleware(AdvisorMiddleware)                     # Starlette / FastAPI
        application = AdvisorMiddleware(get_asgi_application())  # Django

    Options (keyword-only): the fields of :class:`AdvisorConfig`, plus ``router``.
    """

    def __init__(
        self, app: ASGIApp, *, router: MessagesRouter | None = None, **options: Unpack[AdvisorOptions]
    ) -> None:
        self.app = app
        self.config = AdvisorConfig.model_validate(options)
        if self.config.opentelemetry:
            start_opentelemetry()  # at start-up, so that a missing extra is said at once
        self.router: MessagesRouter = router if router is not None else AppRouter(app)
        # Each matched spelling -> the path as configured (legs go there, not to the caller's
        # spelling of it: a trailing slash the host would redirect or refuse) and the endpoint
        # under it, if any.
        self._routes: dict[str, tuple[str, str | None]] = {
            **endpoint_routes(self.config.paths),
            **{p.rstrip("/") or "/": (p, None) for p in self.config.paths},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._route(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        route, endpoint = found
        headers = scope.get("headers") or []
        try:
            chunks = await self._read_body(headers, receive)
            if chunks is None:
                return  # the client left while sending its body
            plan = self._plan(headers, chunks, endpoint)
        except AdvisorRequestError as exc:
            await send_json(send, exc.status, exc.body)
            return
        if isinstance(plan, list):
            await self.app(scope, _replay(plan, receive), send)
        elif plan.action == "rewrite":
            body = encode_json(plan.body)
            await self.app({**scope, "headers": _with_length(headers, len(body))}, _replay([body], receive), send)
        else:
            await self._respond(self._orchestration(plan, scope, route), receive, send)

    def _route(self, scope: Scope) -> tuple[str, str | None] | None:
        """The path an ``AppRouter``'s legs take if the request is one to handle, and the
        endpoint under it if any; else None."""
        if scope["type"] != "http" or scope.get("method") != "POST":
            return None
        if any(name == LEG_HEADER for name, _ in scope.get("headers") or ()):
            return None  # a leg we (or another instance) made: never handle it twice
        path: str = scope.get("path", "")
        root_path: str = scope.get("root_path", "")
        prefix = ""
        # As Starlette's routing does: strip root_path only at a "/" boundary (docs/protocol.md §8).
        if root_path and (path == root_path or path.startswith(root_path + "/")):
            path = path[len(root_path) :]
            prefix = root_path
        found = self._routes.get(path.rstrip("/") or "/")
        return None if found is None else (prefix + found[0], found[1])

    def _plan(self, headers: Any, chunks: list[bytes], endpoint: str | None) -> Plan | list[bytes]:
        """A plan to rewrite or orchestrate the request, or the chunks to hand to the app. The byte
        scan is a cheap necessary condition of ``involves_advisor``: most bodies are never parsed.
        An ``endpoint``'s body is rewritten by :mod:`.endpoints`."""
        encoding = _content_encoding(headers)
        identity = encoding in (b"", b"identity")
        if identity and not _mentions_advisor(chunks):
            return chunks
        raw = body = b"".join(chunks)  # a single chunk is not copied
        if not identity:
            body = _decode(raw, encoding, self.config.max_body_bytes)
            if not _has_needle(body):
                return [raw]
        try:
            data = pydantic_core.from_json(body)
        except ValueError as exc:
            # Replayed, a laxer parser could read these bytes (a lone surrogate escape, deep
            # nesting) and see the advisor tool raw. The parser's message gives a position only.
            raise AdvisorRequestError(f"request body is not JSON the advisor middleware can read: {exc}") from None
        if not isinstance(data, dict):
            return [raw]  # the host answers bad JSON its way
        if endpoint is not None:
            rewritten = ENDPOINTS[endpoint](data, self.config.runs_natively)
            return [raw] if rewritten is None else Plan("rewrite", rewritten)
        plan = classify(data)
        if plan.action == "pass" or (
            plan.action == "orchestrate" and self.config.runs_natively(str(data.get("model")))
        ):
            return [raw]
        return plan

    def _orchestration(self, plan: Plan, scope: Scope, route: str) -> Orchestration:
        assert plan.tool is not None
        return Orchestration(
            router=self.router,
            config=self.config,
            body=plan.body,
            tool_index=plan.tool_index,
            tool=plan.tool,
            headers=list(scope.get("headers") or []),
            scope=scope if scope.get("path") == route else {**scope, "path": route, "raw_path": route.encode()},
            streaming=bool(plan.body.get("stream")),
            history=plan.history,
        )

    async def _read_body(self, headers: Any, receive: Receive) -> list[bytes] | None:
        """The body's chunks (an empty body is ``[b""]``), or None if the client left first."""
        cap = self.config.max_body_bytes
        for name, value in headers:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise AdvisorRequestError("invalid content-length header") from None
                if declared > cap:
                    raise _too_large(cap)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > cap:
                    raise _too_large(cap)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks or [b""]

    async def _respond(self, orchestration: Orchestration, receive: Receive, send: Send) -> None:
        """Run the advisor loop in this task while a watcher task reads ``receive`` (:class:`Departure`)."""
        departure = Departure()
        token = CLIENT.set(departure)
        try:
            await self._run_watched(orchestration, receive, send, departure)
        finally:
            CLIENT.reset(token)

    async def _run_watched(
        self, orchestration: Orchestration, receive: Receive, send: Send, departure: Departure
    ) -> None:
        async with anyio.create_task_group() as tg:
            writer = None
            if orchestration.streaming:
                writer = _StreamWriter(send, self.config.ping_interval, tg, orchestration.first_leg_headers)
            watcher = _Watcher(receive, tg, writer, departure)
            tg.start_soon(watcher.run)
            try:
                if writer is None:
                    await self._write_json(orchestration, send)
                else:
                    await self._write_stream(orchestration, writer)
            except OSError:
                tg.cancel_scope.cancel()  # the client is gone (docs/protocol.md §8)
            else:
                watcher.response_sent()

    async def _write_json(self, orchestration: Orchestration, send: Send) -> None:
        acc = MessageAccumulator()

        async def feed(group: Sequence[dict[str, Any] | RawDelta]) -> None:
            acc.feed_all(group)  # RawDelta deltas are parsed at complete()

        try:
            await orchestration.run(feed)
            message = acc.complete()
        except OSError:
            raise  # the client is gone (ClientGone): nobody to answer
        except Exception as exc:
            await _send_failure(send, exc)
            return
        await send_json(send, 200, encode_json(message), forwarded_headers(orchestration.first_leg_headers))

    async def _write_stream(self, orchestration: Orchestration, writer: _StreamWriter) -> None:
        # http.response.start waits for the first event, so a failure of the first executor leg
        # keeps its own status and body; once started, the loop reports failures itself.
        try:
            await orchestration.run(writer.write)
        except OSError:
            raise
        except Exception as exc:
            if not writer.started:
                await _send_failure(writer.send, exc)
                return
            log.error("advisor loop failed after the response started", exc_info=exc)
        if writer.started:
            await writer.write([], more_body=False)


async def _send_failure(send: Send, exc: Exception) -> None:
    """Answer a loop failure before the response started: a leg's with its own status, else 500."""
    if isinstance(exc, UpstreamError):
        await send_json(send, exc.status, exc.body, exc.headers)
        return
    log.error("advisor loop failed", exc_info=exc)
    await send_json(send, 500, error_body("api_error", "internal error in the advisor middleware"))


class _Watcher:
    """The one reader of ``receive`` while the loop runs, and the ping clock. A disconnect ends
    every leg in flight (``receive`` is the only sure signal of it, docs/protocol.md §8)."""

    def __init__(self, receive: Receive, tg: TaskGroup, writer: _StreamWriter | None, departure: Departure) -> None:
        self.receive = receive
        self.tg = tg
        self.writer = writer
        self.departure = departure
        # The whole response is sent: a disconnect now is not the client leaving.
        self.answered = False

    async def run(self) -> None:
        while True:
            message = await self._next_message()
            if message is not None and message["type"] == "http.disconnect":
                if not self.answered:
                    self._client_left()
                return

    async def _next_message(self) -> Message | None:
        """The next message of ``receive``; None if a ping fell due first."""
        writer = self.writer
        if writer is None or self.answered:
            return await self.receive()
        with anyio.move_on_after(writer.next_check()):
            return await self.receive()
        if not self.answered:
            await writer.ping_if_quiet()
        return None

    def _client_left(self) -> None:
        if self.departure.leave():
            # An AppRouter leg was in flight: its host ends it as for any client that left, and
            # the loop stops on the ClientGone that comes out. A host that carries on is cancelled.
            self.tg.cancel_scope.deadline = anyio.current_time() + WIND_DOWN
        else:
            self.tg.cancel_scope.cancel()

    def response_sent(self) -> None:
        """The response is out: the server's ``http.disconnect`` ends the watcher (docs/protocol.md
        §8), which is cheaper than cancelling it; a silent server gets :data:`LINGER` seconds."""
        self.answered = True
        self.tg.cancel_scope.deadline = anyio.current_time() + LINGER


class _StreamWriter:
    """The one writer of a streaming response (pings: docs/protocol.md §7). Events and pings share
    ``send``, never two at once: a ping is skipped while an event is sent, an event waits for a ping."""

    __slots__ = ("_last_write", "_leg_headers", "_ping", "_sending", "_tg", "interval", "send", "started")

    def __init__(self, send: Send, interval: float, tg: TaskGroup, leg_headers: list[tuple[bytes, bytes]]) -> None:
        self.send = send
        self.interval = interval
        self.started = False  # http.response.start is sent
        self._leg_headers = leg_headers  # the first executor leg's answer headers, once it has them
        self._tg = tg
        self._last_write = 0.0  # time.monotonic() of the last body sent
        self._sending = False  # an event's body is being sent
        self._ping: anyio.Event | None = None  # set once the ping being sent is out

    async def write(self, group: Sequence[dict[str, Any] | RawDelta], *, more_body: bool = True) -> None:
        """Send one group of events (the loop's ``emit``) in one body."""
        # Most groups are one event: no list or join for those.
        body = _encoded(group[0]) if len(group) == 1 else b"".join([_encoded(event) for event in group])
        if self._ping is not None:
            await self._ping.wait()
        self._sending = True
        try:
            if not self.started:
                self.started = True
                headers = [*_SSE_HEADERS, *forwarded_headers(self._leg_headers)]
                await self.send({"type": "http.response.start", "status": 200, "headers": headers})
            await self.send({"type": "http.response.body", "body": body, "more_body": more_body})
        except OSError as exc:
            # The loop ends on a ClientGone quietly; any other failure would be reported.
            raise ClientGone("the client left during the response") from exc
        finally:
            self._sending = False
        self._last_write = time.monotonic()

    def next_check(self) -> float:
        """Seconds until a ping may be due."""
        if not self.started:
            return self.interval
        return max(0.0, self.interval - (time.monotonic() - self._last_write))

    async def ping_if_quiet(self) -> None:
        # No ping can follow the last body: the watcher learns the response is sent with no
        # checkpoint in between.
        if not self.started or self._sending or time.monotonic() - self._last_write < self.interval:
            return
        self._ping = ping = anyio.Event()
        try:
            await self.send({"type": "http.response.body", "body": _PING, "more_body": True})
        except OSError:  # the client is gone
            self._tg.cancel_scope.cancel()
            return
        finally:
            self._ping = None
            ping.set()
        self._last_write = time.monotonic()


def _encoded(event: dict[str, Any] | RawDelta) -> bytes:
    """One event as SSE bytes: a :class:`RawDelta` holds them already."""
    return event.sse if type(event) is RawDelta else encode_event(event)


def _too_large(cap: int) -> AdvisorRequestError:
    return AdvisorRequestError(f"request body exceeds the {cap} byte limit", status=413, error_type="request_too_large")


def _content_encoding(headers: Any) -> bytes:
    for name, value in headers:
        if name == b"content-encoding":
            return bytes(value).strip().lower()
    return b""


def _decode(raw: bytes, encoding: bytes, cap: int) -> bytes:
    """A ``content-encoding`` other than identity undone: gzip and deflate, capped at ``cap``."""
    if encoding not in (b"gzip", b"deflate"):
        raise AdvisorRequestError(f"unsupported content-encoding {encoding.decode('latin-1')!r}", status=415)
    wbits = 31 if encoding == b"gzip" else 15
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(raw, cap + 1)
    except zlib.error:
        raise AdvisorRequestError(f"request body is not valid {encoding.decode()} data") from None
    if len(out) > cap or decoder.unconsumed_tail:
        raise _too_large(cap)
    return out


# Every name the middleware acts on is a JSON string that starts with "advisor" (the tool type,
# the result block type, the name of a call or of a tool_addition's tool: docs/protocol.md §1, §2,
# §7), so prose that mentions an advisor costs no parse. A name spelled with \u escapes is missed:
# it reaches the host as sent, which answers as it would without us.
_NEEDLE = b'"advisor'

# sre finds "visor" in a long body faster than bytes.find finds the needle (whose quote is
# frequent in JSON); after this many other hits (supervisor), one bytes.find settles it.
_VISOR = re.compile(rb"visor")
_MISSES = 16


def _has_needle(data: bytes) -> bool:
    match = _VISOR.search(data)
    misses = 0
    while match is not None:
        at = match.start() - 3
        if at >= 0 and data.startswith(b'"ad', at):
            return True
        misses += 1
        if misses == _MISSES:
            # A needle before this hit would have been an earlier hit, so the search starts here.
            return data.find(_NEEDLE, max(at, 0)) >= 0
        match = _VISOR.search(data, match.end())
    return False


def _mentions_advisor(chunks: list[bytes]) -> bool:
    """Whether ``"advisor`` occurs in the body, chunk by chunk (and across two), never joined."""
    if len(chunks) == 1:
        return _has_needle(chunks[0])
    keep = len(_NEEDLE) - 1
    tail = b""
    for chunk in chunks:
        if _has_needle(chunk) or (tail and _has_needle(tail + chunk[:keep])):
            return True
        tail = (tail + chunk[-keep:])[-keep:]
    return False


def _replay(chunks: list[bytes], receive: Receive) -> Receive:
    """Hand the buffered body over (in the chunks it came in), then wait on the real
    ``receive``: answering at once with a disconnect makes Django cancel the view, and a second
    ``http.request`` after the last trips its assertion (docs/protocol.md §8)."""
    last = len(chunks) - 1
    messages = iter([{"type": "http.request", "body": c, "more_body": i < last} for i, c in enumerate(chunks)])

    async def replay() -> Message:
        return next(messages, None) or await receive()

    return replay


def _with_length(headers: Any, length: int) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers if k not in (b"content-length", b"content-encoding", b"transfer-encoding")]
    out.append((b"content-length", str(length).encode()))
    return out
